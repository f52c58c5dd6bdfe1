"""Encrypted archives (docs/FORMAT.md §9): round trip, every class of tampering, wrong and missing keys, rekey."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import pytest
from innostream.archive import ArchiveWriter, NullSink, PlainCodec, ZstdCodec, read_archive
from innostream.archive.crypt import AeadCodec, KeyRequired, WrongKey, new_codec, slot_offset
from innostream.archive.rekey import rekey_file
from innostream.extract import extract, verify
from innostream.formats import archive as fa
from innostream.formats import archive_crypt as fc
from innostream.formats.errors import FormatError, Truncated

from tests.archive.builders import make_archive, sample_files, split_frames, tree

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))


def write_encrypted(files: dict[str, bytes], key: bytes = KEY, *, compress: bool = True,
                    codec: AeadCodec | None = None, index: bool = False) -> bytes:
    out = io.BytesIO()
    codec = codec or new_codec(ZstdCodec(1) if compress else PlainCodec(), key)
    w = ArchiveWriter(out, meta={"flavor": "mariadb"}, codec=codec, index=index)
    for name, data in files.items():
        fid = w.begin_file(name)
        for off in range(0, len(data), 50_000):
            w.write(fid, off, data[off : off + 50_000])
        w.end_file(fid, len(data))
    w.close({"to_lsn": 42})
    return out.getvalue()


def rechecksum(head: bytes, frames: list[bytes]) -> bytes:
    """The archive with every frame header checksum and payload checksum recomputed: what an attacker can do,
    since neither is keyed (the stream header's too)."""
    out = [head]
    for fr in frames:
        h = fa.unpack_frame_header(fr[: fa.FRAME_HEADER_SIZE])
        payload = fr[fa.FRAME_HEADER_SIZE :]
        out.append(fa.build_frame_header(h.type, h.flags, h.file_id, h.seq, h.offset, h.raw_len, payload) + payload)
    return b"".join(out)


def renumber(head: bytes, frames: list[bytes]) -> bytes:
    """Frames renumbered 0.. with fresh checksums (an attacker hiding a drop, a reorder or a duplicate)."""
    out = []
    for seq, fr in enumerate(frames):
        h = fa.unpack_frame_header(fr[: fa.FRAME_HEADER_SIZE])
        payload = fr[fa.FRAME_HEADER_SIZE :]
        out.append(fa.build_frame_header(h.type, h.flags, h.file_id, seq, h.offset, h.raw_len, payload) + payload)
    return head + b"".join(out)


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return sample_files()


@pytest.fixture(scope="module")
def blob(files: dict[str, bytes]) -> bytes:
    return write_encrypted(files)


# -- round trip ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [True, False])
def test_round_trip_is_byte_identical(files, tmp_path: Path, compress: bool):
    data = write_encrypted(files, compress=compress)
    summary = extract(io.BytesIO(data), tmp_path / "t", key=KEY)
    assert tree(tmp_path / "t") == files
    assert summary.authenticated is True
    assert summary.meta == {"flavor": "mariadb"}
    assert summary.trailer["to_lsn"] == 42
    plain = make_archive(files, compress=compress)
    extract(io.BytesIO(plain), tmp_path / "p")
    assert tree(tmp_path / "p") == tree(tmp_path / "t")


def test_names_metadata_and_contents_are_not_in_the_clear(files, blob: bytes):
    head, frames = split_frames(blob)
    for name, data in files.items():
        assert name.encode() not in blob
        if len(data) > 64 and data[:64].count(0) < 8:
            assert data[:64] not in blob
    assert b"flavor" not in head
    assert b"to_lsn" not in blob
    hdr = fa.parse_stream_header(head[:32], head[32:])
    assert hdr.required_features == fa.FEATURE_ZSTD | fa.FEATURE_AEAD
    assert all(fa.unpack_frame_header(f[:56]).flags & fa.FLAG_AEAD for f in frames)


def test_fresh_data_key_and_archive_id_per_archive(files):
    a, b = write_encrypted({"x": b"same"}), write_encrypted({"x": b"same"})
    ha, hb = split_frames(a)[0], split_frames(b)[0]
    assert ha[32 + 8 : 32 + 24] != hb[32 + 8 : 32 + 24]  # archive id
    assert split_frames(a)[1][1] != split_frames(b)[1][1]  # same plaintext, different ciphertext


# -- keys ---------------------------------------------------------------------------------------------------------
def test_missing_key_is_refused_and_no_target_is_made(blob: bytes, tmp_path: Path):
    with pytest.raises(KeyRequired, match=r"encrypted \(key id [0-9a-f]{32}\) and no key was given"):
        extract(io.BytesIO(blob), tmp_path / "t")
    assert not (tmp_path / "t").exists()
    with pytest.raises(KeyRequired):
        read_archive(io.BytesIO(blob), NullSink(), verify_data=False)  # list


def test_wrong_key_names_both_key_ids(blob: bytes, tmp_path: Path):
    with pytest.raises(WrongKey, match=f"key id {fc.key_id(KEY).hex()}, this key's id is {fc.key_id(OTHER).hex()}"):
        extract(io.BytesIO(blob), tmp_path / "t", key=OTHER)
    assert not (tmp_path / "t").exists()


def test_a_key_for_a_plain_archive_or_an_xbstream_is_refused(files, tmp_path: Path):
    with pytest.raises(fc.AuthenticationFailed, match="not encrypted, but a key was given"):
        extract(io.BytesIO(make_archive(files)), tmp_path / "t", key=KEY)
    from innostream.archive.xbstream import XbstreamWriter

    out = io.BytesIO()
    w = XbstreamWriter(out)
    w.add_bytes("a", b"x")
    w.close()
    with pytest.raises(fc.AuthenticationFailed, match="xbstream, which has no authenticated encryption"):
        extract(io.BytesIO(out.getvalue()), tmp_path / "x", key=KEY)
    assert not (tmp_path / "t").exists()
    assert not (tmp_path / "x").exists()


def test_verify_without_key_checks_structure_only(blob: bytes):
    summary = verify(io.BytesIO(blob))
    assert summary.authenticated is False
    assert any("not authenticated" in w for w in summary.warnings)
    assert verify(io.BytesIO(blob), key=KEY).authenticated is True
    bad = bytearray(blob)
    bad[len(blob) // 2] ^= 1  # structure: a payload checksum
    with pytest.raises(FormatError):
        verify(io.BytesIO(bytes(bad)))


# -- tampering ----------------------------------------------------------------------------------------------------
def _regions(blob: bytes) -> list[int]:
    """Byte positions to flip: every byte of the stream header and of every frame header, and payload bytes at the
    start, middle and end of every payload."""
    head, frames = split_frames(blob)
    spots = list(range(len(head)))
    pos = len(head)
    for fr in frames:
        spots += range(pos, pos + fa.FRAME_HEADER_SIZE)
        n = len(fr) - fa.FRAME_HEADER_SIZE
        spots += {pos + fa.FRAME_HEADER_SIZE + k for k in (0, n // 2, n - 1) if n}
        pos += len(fr)
    return spots


def test_a_flipped_bit_anywhere_is_detected(blob: bytes):
    spots = _regions(blob)
    assert len(spots) > 500
    for i in spots:
        bad = bytearray(blob)
        bad[i] ^= 1 << (i % 8)
        with pytest.raises(FormatError):
            read_archive(io.BytesIO(bytes(bad)), NullSink(), key=KEY)


def test_a_changed_payload_with_recomputed_checksums_does_not_authenticate(blob: bytes):
    head, frames = split_frames(blob)
    for i, fr in enumerate(frames):
        bad = bytearray(fr)
        bad[-1] ^= 0x40  # the GCM tag or ciphertext; the xxh3 checksums are then recomputed
        forged = rechecksum(head, [*frames[:i], bytes(bad), *frames[i + 1 :]])
        with pytest.raises(fc.AuthenticationFailed, match=f"frame {i} does not authenticate"):
            read_archive(io.BytesIO(forged), NullSink(), key=KEY)


@pytest.mark.parametrize("field", ["type", "file_id", "offset", "raw_len", "flags"])
def test_a_changed_header_field_with_recomputed_checksums_does_not_authenticate(blob: bytes, field: str):
    head, frames = split_frames(blob)
    i = next(k for k, f in enumerate(frames)
             if f[4] == fa.FRAME_DATA and fa.unpack_frame_header(f[:56]).offset and f[8] == 2)
    h = fa.unpack_frame_header(frames[i][:56])
    change = {"type": {"type": fa.FRAME_DATA | 0x80}, "file_id": {"file_id": h.file_id},
              "offset": {"offset": h.offset + 4096}, "raw_len": {"raw_len": h.raw_len - 1},
              "flags": {"flags": h.flags ^ fa.FLAG_ZSTD}}[field]
    h2 = h._replace(**change)
    payload = frames[i][56:]
    fr = fa.build_frame_header(h2.type, h2.flags, h2.file_id, h2.seq, h2.offset, h2.raw_len, payload) + payload
    if field == "file_id":  # move the frame to the file that precedes it, keeping its place in the stream
        other = next(fa.unpack_frame_header(f[:56]).file_id for f in frames[:i] if f[4] == fa.FRAME_FILE_BEGIN
                     and fa.unpack_frame_header(f[:56]).file_id != h.file_id)
        fr = fa.build_frame_header(h.type, h.flags, other, h.seq, h.offset, h.raw_len, payload) + payload
    with pytest.raises(FormatError):
        read_archive(io.BytesIO(rechecksum(head, [*frames[:i], fr, *frames[i + 1 :]])), NullSink(), key=KEY)


def test_dropped_reordered_duplicated_frames_are_detected_even_renumbered(blob: bytes):
    head, frames = split_frames(blob)
    cases = {
        "drop": frames[:3] + frames[4:],
        "swap": [*frames[:2], frames[3], frames[2], *frames[4:]],
        "dup": [*frames[:3], frames[2], *frames[3:]],
    }
    for name, fs in cases.items():
        with pytest.raises(FormatError, match=r"missing|out of order|duplicated"):  # plain renumbering kept
            read_archive(io.BytesIO(head + b"".join(fs)), NullSink(), key=KEY)
        # renumbered: the structure may still catch it (overlapping data); if not, the nonce does
        with pytest.raises(fc.AuthenticationFailed if name == "drop" else FormatError):
            read_archive(io.BytesIO(renumber(head, fs)), NullSink(), key=KEY)
    # a reorder the structure cannot see (two frames of different files swapped): only the nonce tells
    two = write_encrypted({"a": b"a" * 100, "b": b"b" * 100})
    head2, f2 = split_frames(two)
    kinds = [(f[4], f[8]) for f in f2]
    assert kinds[:6] == [(1, 1), (2, 1), (3, 1), (1, 2), (2, 2), (3, 2)]
    with pytest.raises(fc.AuthenticationFailed, match="frame 1 does not authenticate"):
        read_archive(io.BytesIO(renumber(head2, [f2[0], f2[3], f2[1], f2[2], *f2[4:]])), NullSink(), key=KEY)


def test_a_frame_spliced_from_another_archive_with_the_same_key_does_not_authenticate(files, blob: bytes):
    other = write_encrypted(files)  # same user key, its own data key and archive id
    head, frames = split_frames(blob)
    _, theirs = split_frames(other)
    for i in range(len(frames)):
        if len(theirs[i]) == len(frames[i]):
            spliced = head + b"".join([*frames[:i], theirs[i], *frames[i + 1 :]])
            with pytest.raises(fc.AuthenticationFailed):
                read_archive(io.BytesIO(spliced), NullSink(), key=KEY)
    # and the whole stream header of the other archive on these frames: its data key opens none of them
    other_head, _ = split_frames(other)
    with pytest.raises(fc.AuthenticationFailed, match="frame 0 does not authenticate"):
        read_archive(io.BytesIO(other_head + b"".join(frames)), NullSink(), key=KEY)


def test_a_cut_stream_is_truncated_at_every_frame_boundary(blob: bytes):
    head, frames = split_frames(blob)
    for n in range(len(frames)):
        with pytest.raises(Truncated):
            read_archive(io.BytesIO(head + b"".join(frames[:n])), NullSink(), key=KEY)
    with pytest.raises(Truncated):
        read_archive(io.BytesIO(blob[:-1]), NullSink(), key=KEY)


def test_nothing_of_the_tampered_member_stays_in_the_target(files, tmp_path: Path):
    big = {"db1/a.ibd": os.urandom(3 << 20), "db1/b.ibd": os.urandom(3 << 20),
           "xtrabackup_checkpoints": files["xtrabackup_checkpoints"]}
    blob = write_encrypted(big, compress=False)
    head, frames = split_frames(blob)
    # the last DATA frame of db1/b.ibd: its earlier frames authenticate and are written first
    i = max(k for k, f in enumerate(frames) if f[4] == fa.FRAME_DATA and fa.unpack_frame_header(f[:56]).file_id == 2)
    bad = bytearray(frames[i])
    bad[100] ^= 1
    forged = rechecksum(head, [*frames[:i], bytes(bad), *frames[i + 1 :]])
    with pytest.raises(fc.AuthenticationFailed):
        extract(io.BytesIO(forged), tmp_path / "t", key=KEY, parallel=1)
    left = tree(tmp_path / "t")
    assert "db1/b.ibd" not in left  # begun, not authenticated to its end: removed
    assert "xtrabackup_checkpoints" not in left  # the commit point never appears
    assert left.get("db1/a.ibd", big["db1/a.ibd"]) == big["db1/a.ibd"]  # complete and authentic, or not there


# -- rekey --------------------------------------------------------------------------------------------------------
def test_rekey_rewrites_only_the_key_slots(files, blob: bytes, tmp_path: Path):
    path = tmp_path / "a.isa"
    path.write_bytes(blob)
    old_id, new_id = rekey_file(str(path), KEY, OTHER)
    assert (old_id, new_id) == (fc.key_id(KEY).hex(), fc.key_id(OTHER).hex())
    after = path.read_bytes()
    assert len(after) == len(blob)
    lo, hi = slot_offset(0), slot_offset(2)
    assert after[:lo] == blob[:lo]
    assert after[hi:] == blob[hi:]
    assert after[lo : lo + fc.KEY_SLOT_SIZE] == fc.EMPTY_SLOT  # the old key's slot cleared
    extract(io.BytesIO(after), tmp_path / "t", key=OTHER)
    assert tree(tmp_path / "t") == files
    with pytest.raises(WrongKey):
        read_archive(io.BytesIO(after), NullSink(), key=KEY)
    rekey_file(str(path), OTHER, KEY)  # and back, into slot 0
    assert read_archive(io.BytesIO(path.read_bytes()), NullSink(), key=KEY).authenticated


def test_a_crash_between_the_two_slot_writes_leaves_both_keys_working(blob: bytes):
    """The state after the first synced write of rekey (new slot written, old one not yet cleared)."""
    from innostream.archive.crypt import rekey_header

    hdr, _ = split_frames(blob)
    header = fa.parse_stream_header(hdr[:32], hdr[32:])
    new_index, slot, old_index = rekey_header(header, hdr[:32], KEY, OTHER)
    assert (new_index, old_index) == (1, 0)
    mid = bytearray(blob)
    mid[slot_offset(1) : slot_offset(2)] = slot
    for key in (KEY, OTHER):
        assert read_archive(io.BytesIO(bytes(mid)), NullSink(), key=key).authenticated
    torn = bytearray(mid)
    torn[slot_offset(1) + 40] ^= 1  # a torn new slot: its own checksum says so; the old slot still opens it
    with pytest.raises(FormatError, match="key slot 1 checksum mismatch"):
        read_archive(io.BytesIO(bytes(torn)), NullSink(), key=KEY)


def test_the_key_slot_tag_binds_the_archive(blob: bytes, files):
    """A key slot copied from another archive (same key) unwraps to that archive's data key: refused."""
    other = write_encrypted(files)
    bad = bytearray(blob)
    bad[slot_offset(0) : slot_offset(1)] = other[slot_offset(0) : slot_offset(1)]
    with pytest.raises(fc.AuthenticationFailed, match="wrapped data key"):
        read_archive(io.BytesIO(bytes(bad)), NullSink(), key=KEY)


# -- the format's own checks --------------------------------------------------------------------------------------
def test_specs_and_fast_paths_agree():
    slot = fc.build_slot(KEY, OTHER, bytes(16), bytes(12))
    parsed = fc.KEY_SLOT.parse(slot)
    assert parsed.key_id == fc.key_id(KEY)
    assert fc.KEY_SLOT.build(parsed) == slot
    params = fc.build_params(bytes(range(16)))
    assert fc.CRYPT_PARAMS.build(fc.CRYPT_PARAMS.parse(params)) == params
    assert fc.frame_nonce(5) == struct.pack("<QI", 5, 0)
    assert len(fc.frame_nonce(2**64 - 1, 1)) == 12


def test_format_md_worked_example_is_what_the_writer_writes(tmp_path: Path):
    """docs/FORMAT.md §9: every byte of the worked example, from the real writer with fixed keys and nonces."""
    import re

    from tests.archive.builders import REPO

    text = (REPO / "docs/FORMAT.md").read_text()
    section = text[text.index("### Worked example") : text.index("## 10.")]
    code = section[section.index("```") + 3 : section.index("```", section.index("```") + 3)]
    hexdump = "".join(line.replace(" ", "") for line in code.splitlines() if re.fullmatch(r"[0-9a-f ]+", line))
    user_key, data_key = bytes(range(32)), bytes(range(0x20, 0x40))
    archive_id, wrap_nonce = bytes(range(0x40, 0x50)), bytes(range(0x60, 0x6C))
    codec = AeadCodec(PlainCodec(), data_key, archive_id)
    codec.slots[0] = fc.build_slot(user_key, data_key, archive_id, wrap_nonce)
    out = io.BytesIO()
    w = ArchiveWriter(out, meta={"flavor": "mariadb"}, codec=codec, index=False)  # §9 shows the one-pass layout
    f = w.begin_file("a")
    w.write(f, 0, b"hello, world!\n")
    w.end_file(f, 14)
    w.close({"to_lsn": 42})
    blob = out.getvalue()
    assert bytes.fromhex(hexdump) == blob
    assert f"total {len(blob)} bytes" in code
    key_id = fc.key_id(user_key).hex()
    assert f"key id `{key_id[:8]} {key_id[8:16]} {key_id[16:24]} {key_id[24:]}`" in section
    digest = fa.file_digest(b"hello, world!\n").hex()
    assert f'{{"files":[["a",14,"{digest}"]],"to_lsn":42}}' in section
    summary = extract(io.BytesIO(bytes.fromhex(hexdump)), tmp_path / "t", key=user_key)
    assert tree(tmp_path / "t") == {"a": b"hello, world!\n"}
    assert summary.meta == {"flavor": "mariadb"}


def test_an_optional_frame_must_authenticate_too(blob: bytes):
    """A forged optional frame (type 0x80+, skipped by readers that do not know it) in place of a real one."""
    head, frames = split_frames(blob)
    h = fa.unpack_frame_header(frames[-1][:56])
    forged_payload = bytes(40)
    forged = fa.build_frame_header(0x81, fa.FLAG_AEAD, 0, h.seq, 0, len(forged_payload) - 16, forged_payload)
    trailer = frames[-1]
    th = fa.unpack_frame_header(trailer[:56])
    moved = fa.build_frame_header(th.type, th.flags, 0, th.seq + 1, 0, th.raw_len, trailer[56:]) + trailer[56:]
    with pytest.raises(fc.AuthenticationFailed, match=f"frame {h.seq} does not authenticate"):
        read_archive(io.BytesIO(head + b"".join(frames[:-1]) + forged + forged_payload + moved), NullSink(), key=KEY)
