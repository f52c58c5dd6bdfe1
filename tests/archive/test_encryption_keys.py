"""Keys of encrypted archives through the real CLI: key files and commands, permissions, exit codes, rekey."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from innostream.keys import KeyUnusable, load_key, load_key_command, load_key_file, parse_key

from tests.archive.builders import make_archive, run_cli, sample_files, tree
from tests.archive.test_encryption import KEY, OTHER, write_encrypted


def _files() -> dict[str, bytes]:
    """Sample files without tablespaces (verify would validate their made-up pages)."""
    return {k.replace(".ibd", ".bin").replace("ibdata1", "data.bin"): v for k, v in sample_files().items()}


def _key_file(tmp_path: Path, content: bytes, name: str = "k", mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    path.chmod(mode)
    return path


def _error_line(stderr: bytes) -> str:
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("form", [
    KEY, KEY + b"\n", KEY.hex().encode(), KEY.hex().encode() + b"\n", KEY.hex().upper().encode() + b"\r\n",
    base64.b64encode(KEY), base64.b64encode(KEY) + b"\n",
])
def test_key_forms(tmp_path: Path, form: bytes):
    assert load_key_file(str(_key_file(tmp_path, form))) == KEY
    assert parse_key(form, "test") == KEY


@pytest.mark.parametrize("form", [b"", b"\n", KEY[:31], KEY + b"xx", KEY.hex().encode()[:63], b"g" * 64,
                                  base64.b64encode(KEY[:31]), b"passphrase\n", KEY + b"\n\n"])
def test_not_a_key_is_refused_in_one_line(tmp_path: Path, form: bytes):
    with pytest.raises(KeyUnusable, match=r"holds \d+ bytes that are not a key: expected 32 raw bytes, 64 hex"):
        load_key_file(str(_key_file(tmp_path, form)))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_a_key_file_open_to_group_or_others_is_refused(tmp_path: Path, mode: int):
    path = _key_file(tmp_path, KEY, mode=mode)
    with pytest.raises(KeyUnusable, match=f"accessible by group or others \\(mode {mode:04o}\\).*chmod 600 {path}"):
        load_key_file(str(path))
    assert load_key_file(str(_key_file(tmp_path, KEY, "ok", 0o400))) == KEY


def test_key_file_missing_or_a_directory(tmp_path: Path):
    with pytest.raises(KeyUnusable, match=r"cannot open the key file .*No such file"):
        load_key_file(str(tmp_path / "none"))
    (tmp_path / "d").mkdir(mode=0o700)
    with pytest.raises(KeyUnusable, match="not a regular file"):
        load_key_file(str(tmp_path / "d"))


def test_key_command(tmp_path: Path):
    assert load_key_command(f"printf %s {KEY.hex()}") == KEY
    assert load_key_command(f"echo {base64.b64encode(KEY).decode()}") == KEY  # a shell: builtins, pipes
    assert load_key_command(f"echo {KEY.hex()} | tr a-f A-F") == KEY
    with pytest.raises(KeyUnusable, match="the key command exited with status 3; no key"):
        load_key_command("echo oops >&2; exit 3")
    with pytest.raises(KeyUnusable, match="the key command printed nothing; no key"):
        load_key_command("true")
    with pytest.raises(KeyUnusable, match="key command's output holds 6 bytes that are not a key"):
        load_key_command("echo hello")
    with pytest.raises(KeyUnusable, match="did not finish within 1 s"):
        load_key_command("sleep 5", timeout=1)
    with pytest.raises(KeyUnusable, match="not both"):
        load_key("f", "c")
    assert KeyUnusable("x").exit_code == 2


# -- the CLI --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("enc")
    path = d / "a.isa"
    path.write_bytes(write_encrypted(_files()))
    return path, _key_file(d, KEY.hex().encode() + b"\n", "key"), _key_file(d, OTHER, "other")


def test_cli_extract_list_verify_with_the_key(archive, tmp_path: Path):
    path, key, _ = archive
    r = run_cli(["extract", "--decrypt-key-file", str(key), "-C", str(tmp_path / "t"), str(path)])
    assert r.returncode == 0, r.stderr
    assert tree(tmp_path / "t") == _files()
    r = run_cli(["list", "--decrypt-key-command", f"cat {key}", str(path)])
    assert r.returncode == 0, r.stderr
    assert {line.split()[-1] for line in r.stdout.decode().splitlines()} == set(_files())
    r = run_cli(["verify", "--decrypt-key-file", str(key)], stdin=path.read_bytes())
    assert r.returncode == 0, r.stderr
    assert b"NOT authenticated" not in r.stderr


def test_cli_verify_without_key_says_contents_were_not_authenticated(archive):
    path, _, _ = archive
    r = run_cli(["verify", str(path)])
    assert r.returncode == 0, r.stderr
    assert b"contents NOT authenticated" in r.stderr
    bad = bytearray(path.read_bytes())
    bad[-10] ^= 1
    r = run_cli(["verify", "-"], stdin=bytes(bad))
    assert r.returncode == 3
    assert "payload checksum mismatch" in _error_line(r.stderr)


def test_cli_missing_wrong_key_and_tampering_exit_3_in_one_line(archive, tmp_path: Path):
    path, key, other = archive
    r = run_cli(["extract", "-C", str(tmp_path / "a"), str(path)])
    assert r.returncode == 3
    assert "is encrypted (key id" in _error_line(r.stderr)
    assert "--decrypt-key-file" in _error_line(r.stderr)
    r = run_cli(["list", str(path)])
    assert r.returncode == 3
    r = run_cli(["extract", "--decrypt-key-file", str(other), "-C", str(tmp_path / "b"), str(path)])
    assert r.returncode == 3
    assert _error_line(r.stderr).startswith("innostream: error: wrong key: the archive was encrypted for key id")
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists()
    from tests.archive.builders import split_frames
    from tests.archive.test_encryption import rechecksum

    head, frames = split_frames(path.read_bytes())
    bad = bytearray(frames[4])
    bad[-1] ^= 1
    r = run_cli(["extract", "--decrypt-key-file", str(key), "-C", str(tmp_path / "c"), "-"],
                stdin=rechecksum(head, [*frames[:4], bytes(bad), *frames[5:]]))
    assert r.returncode == 3
    assert "frame 4 does not authenticate" in _error_line(r.stderr)
    assert "xtrabackup_checkpoints" not in tree(tmp_path / "c")


def test_cli_key_problems_exit_2(archive, tmp_path: Path):
    path, key, _ = archive
    loose = _key_file(tmp_path, KEY, "loose", 0o644)
    r = run_cli(["extract", "--decrypt-key-file", str(loose), "-C", str(tmp_path / "t"), str(path)])
    assert r.returncode == 2
    assert f"chmod 600 {loose}" in _error_line(r.stderr)
    r = run_cli(["extract", "--decrypt-key-command", "exit 1", "-C", str(tmp_path / "t"), str(path)])
    assert r.returncode == 2
    assert "the key command exited with status 1" in _error_line(r.stderr)
    r = run_cli(["verify", "--decrypt-key-file", str(key), "--decrypt-key-command", "true", str(path)])
    assert r.returncode == 2
    assert not (tmp_path / "t").exists()


def test_cli_key_for_plain_archive_exit_3(tmp_path: Path, archive):
    _, key, _ = archive
    r = run_cli(["extract", "--decrypt-key-file", str(key), "-C", str(tmp_path / "t"), "-"],
                stdin=make_archive(sample_files()))
    assert r.returncode == 3
    assert "not encrypted, but a key was given" in _error_line(r.stderr)


def test_cli_backup_refuses_encryption_without_an_archive_or_with_xbstream(archive, tmp_path: Path):
    """Refused before any server is contacted (there is none here)."""
    _, key, _ = archive
    r = run_cli(["backup", "--stream", "--format", "xbstream", "--encrypt-key-file", str(key), "-S", "/nonexistent"])
    assert r.returncode == 2
    assert b"xbstream has no authenticated encryption" in r.stderr
    r = run_cli(["backup", "--target-dir", str(tmp_path / "t"), "--encrypt-key-file", str(key)])
    assert r.returncode == 2
    assert b"use them with --stream" in r.stderr
    loose = _key_file(tmp_path, KEY, "loose", 0o604)
    r = run_cli(["backup", "--stream", "--encrypt-key-file", str(loose), "-S", "/nonexistent"])
    assert r.returncode == 2
    assert "accessible by group or others" in _error_line(r.stderr)


def test_cli_rekey(tmp_path: Path, archive):
    _, key, other = archive
    path = tmp_path / "a.isa"
    path.write_bytes(write_encrypted(sample_files()))
    size = path.stat().st_size
    r = run_cli(["rekey", str(path), "--decrypt-key-file", str(other), "--encrypt-key-file", str(key)])
    assert r.returncode == 3
    assert "wrong key" in _error_line(r.stderr)
    r = run_cli(["rekey", str(path), "--decrypt-key-file", str(key), "--encrypt-key-command", f"cat {other}"])
    assert r.returncode == 0, r.stderr
    assert b"the old key no longer opens it" in r.stderr
    assert path.stat().st_size == size
    r = run_cli(["extract", "--decrypt-key-file", str(other), "-C", str(tmp_path / "t"), str(path)])
    assert r.returncode == 0, r.stderr
    assert tree(tmp_path / "t") == sample_files()
    r = run_cli(["extract", "--decrypt-key-file", str(key), "-C", str(tmp_path / "u"), str(path)])
    assert r.returncode == 3
    assert "wrong key" in _error_line(r.stderr)
    r = run_cli(["rekey", "-", "--decrypt-key-file", str(key), "--encrypt-key-file", str(other)])
    assert r.returncode == 2
    assert b"a stream on stdin cannot be rekeyed" in r.stderr
    plain = tmp_path / "p.isa"
    plain.write_bytes(make_archive({"a": b"x"}))
    r = run_cli(["rekey", str(plain), "--decrypt-key-file", str(key), "--encrypt-key-file", str(other)])
    assert r.returncode == 3
    assert "not encrypted" in _error_line(r.stderr)

