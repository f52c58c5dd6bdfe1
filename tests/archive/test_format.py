"""The format contract: construct specs and struct fast paths agree; build/parse round trips; xbstream vectors."""

from __future__ import annotations

import zlib

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st
from innostream.formats import archive as fa
from innostream.formats import xbstream as fx
from innostream.formats.errors import BadMagic, ChecksumMismatch, Corrupt, UnsupportedVersion


def test_stream_header_construct_agrees_with_fast_path():
    blob = fa.build_stream_header({"flavor": "mysql", "server_version": "9.7.4"})
    parsed = fa.STREAM_HEADER.parse(blob[: fa.STREAM_HEADER_SIZE])
    version, required, optional, meta_len, digest = fa.parse_stream_header_fixed(blob[: fa.STREAM_HEADER_SIZE])
    assert (parsed.format_version, parsed.required_features, parsed.optional_features, parsed.meta_len,
            parsed.header_xxh3) == (version, required, optional, meta_len, digest)
    assert fa.STREAM_HEADER.build(parsed) == blob[: fa.STREAM_HEADER_SIZE]
    hdr = fa.parse_stream_header(blob[: fa.STREAM_HEADER_SIZE], blob[fa.STREAM_HEADER_SIZE :])
    assert hdr.meta == {"flavor": "mysql", "server_version": "9.7.4"}
    assert hdr.size == len(blob)


@given(
    ftype=st.integers(0, 255), flags=st.integers(0, 255), file_id=st.integers(0, 2**32 - 1),
    seq=st.integers(0, 2**64 - 1), offset=st.integers(0, 2**64 - 1), raw_len=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=64),
)
def test_frame_header_construct_agrees_with_fast_path(ftype, flags, file_id, seq, offset, raw_len, payload):
    blob = fa.build_frame_header(ftype, flags, file_id, seq, offset, raw_len, payload)
    fast = fa.unpack_frame_header(blob)
    spec = fa.FRAME_HEADER.parse(blob)
    assert fast == fa.FrameHeader(fa.FRAME_MAGIC, *(spec[k] for k in fa.FrameHeader._fields[1:]))
    assert fa.FRAME_HEADER.build(spec) == blob
    assert fa.header_checksum_ok(blob, fast)
    assert fast.payload_xxh3 == fa.xxh3(payload)


def test_payload_structs_round_trip():
    fb = fa.build_file_begin("db/t1.ibd", 0o640)
    assert fa.parse_file_begin(fb) == ("db/t1.ibd", 0o640)
    spec = fa.FILE_BEGIN.parse(fb)
    assert (spec.mode, spec.name_len) == (0o640, 9)
    fe = fa.build_file_end(12345, 3, b"\x11" * 16)
    assert len(fe) == fa.FILE_END_SIZE == 32
    assert fa.parse_file_end(fe) == (12345, 3, b"\x11" * 16)
    spec = fa.FILE_END.parse(fe)
    assert (spec.size, spec.data_frames, spec.reserved, spec.xxh3_128) == (12345, 3, 0, b"\x11" * 16)
    assert fa.FILE_END.build(spec) == fe
    with pytest.raises(ValueError, match="16"):
        fa.build_file_end(1, 1, b"\x11" * 32)  # a SHA-256-sized digest is refused
    with pytest.raises(Corrupt, match="expected 32"):
        fa.parse_file_end(fe + bytes(16))
    tr = fa.build_trailer(10, 2, 300, 200, b"\x22" * 16, {"to_lsn": 5, "files": []})
    assert fa.parse_trailer(tr) == (10, 2, 300, 200, b"\x22" * 16, {"to_lsn": 5, "files": []})
    assert fa.TRAILER.build(fa.TRAILER.parse(tr)) == tr[: fa.TRAILER_FIXED]


def test_stream_header_errors():
    blob = fa.build_stream_header({})
    with pytest.raises(BadMagic):
        fa.parse_stream_header_fixed(b"XNNOSTRM" + blob[8:32])
    with pytest.raises(UnsupportedVersion, match="version 2"):
        fa.parse_stream_header_fixed(blob[:8] + b"\x02\x00" + blob[10:32])
    with pytest.raises(UnsupportedVersion, match="unknown features"):
        fa.parse_stream_header_fixed(blob[:12] + b"\x09\x00\x00\x00" + blob[16:32])  # bit 3: unknown
    with pytest.raises(Corrupt, match="exceeds the cap"):
        fa.parse_stream_header_fixed(blob[:20] + b"\xff\xff\xff\x00" + blob[24:32])
    bad = bytearray(blob)
    bad[-2] ^= 1
    with pytest.raises(ChecksumMismatch):
        fa.parse_stream_header(bytes(bad[:32]), bytes(bad[32:]))


@pytest.mark.parametrize(
    ("name", "ok"),
    [("a", True), ("db/t.ibd", True), ("", False), ("/etc/passwd", False), ("../x", False), ("a/../../x", False),
     ("a//b", False), ("./a", False), ("a/", False), ("a\0b", False)],
)
def test_check_name(name, ok):
    assert (fa.check_name(name) is None) is ok


def test_file_begin_refuses_symlink_and_devices():
    with pytest.raises(Corrupt, match="symlink"):
        fa.parse_file_begin(fa.build_file_begin("x", 0o120777))
    with pytest.raises(Corrupt, match="only regular files"):
        fa.parse_file_begin(fa.build_file_begin("x", 0o060640))
    assert fa.parse_file_begin(fa.build_file_begin("x", 0o100644)) == ("x", 0o644)


def test_xbstream_vector_from_peers():
    # peers.md §1.9: file "f1" = "abc" as one P chunk, produced and round-tripped with mbstream 10.11.19
    vector = bytes.fromhex("58425354434b3031 00 50 02000000 6631 0300000000000000 0000000000000000 c2412435 616263")
    assert fx.build_payload_header(b"f1", 0, b"abc") + b"abc" == vector
    spec = fx.EXAMPLE_P_CHUNK.parse(vector)
    assert (spec.prefix.type, spec.path, spec.tail.payload_len, spec.tail.checksum) == (ord("P"), b"f1", 3,
                                                                                      zlib.crc32(b"abc"))
    assert fx.unpack_prefix(vector[:14]) == (fx.XB_STREAM_CHUNK_MAGIC, 0, ord("P"), 2)
    assert fx.unpack_payload_tail(vector[16:36]) == (3, 0, 0x352441C2)
    assert fx.build_eof_chunk(b"f1") == bytes.fromhex("58425354434b3031 00 45 02000000 6631")
    assert fx.CHUNK_PREFIX.build({"flags": 0, "type": ord("E"), "path_len": 2}) == fx.build_eof_chunk(b"f1")[:14]
    sparse = fx.SPARSE_TAIL.build({"sparse_map_len": 2, "payload_len": 5, "payload_offset": 7, "checksum": 9})
    assert fx.unpack_sparse_tail(sparse) == (2, 5, 7, 9)


def test_format_md_example_is_what_the_writer_writes():
    """docs/FORMAT.md §6 stays true: its hex is byte for byte the writer's output (DATA payload elided there)."""
    import io
    import re

    from innostream.archive import ArchiveWriter

    from tests.archive.builders import REPO

    text = (REPO / "docs/FORMAT.md").read_text()
    example = text[text.index("## 6. Example") : text.index("## 7.")]
    hexdump = "".join(line.replace(" ", "") for line in example.splitlines() if re.fullmatch(r"[0-9a-f ]+", line))
    out = io.BytesIO()
    w = ArchiveWriter(out, meta={"flavor": "mariadb"}, compress=False, index=False)  # §10 shows the index
    f = w.begin_file("a")
    w.write(f, 0, b"x" * 4096 + bytes(4096))
    w.end_file(f, 8192)
    w.close({"to_lsn": 42})
    blob = out.getvalue()
    data_start = blob.index(b"ISFR\x02") + fa.FRAME_HEADER_SIZE
    assert bytes.fromhex(hexdump) == blob[:data_start] + blob[data_start + 4096 :]
    assert f"total {len(blob)} bytes" in example
    # the FILE_END digest in the example is the xxh3_128 of the file, holes as zeros, in canonical byte order
    end = blob.index(b"ISFR\x03")
    size, nframes, digest = fa.parse_file_end(blob[end + fa.FRAME_HEADER_SIZE : end + fa.FRAME_HEADER_SIZE + 32])
    assert (size, nframes) == (8192, 1)
    assert digest == xxhash.xxh3_128_digest(b"x" * 4096 + bytes(4096)) == fa.file_digest(b"x" * 4096 + bytes(4096))
    assert f'"{digest.hex()}"' in example  # the JSON shown in the comment
