"""Random damage never escapes as anything but a named innostream error (no traceback, no hang, no allocation)."""

from __future__ import annotations

import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from innostream.archive import NullSink, read_archive
from innostream.archive.xbstream import read_xbstream
from innostream.formats import archive as fa
from innostream.formats.errors import FormatError, InnostreamError

from tests.archive.builders import frame, make_archive, sample_files

BLOB = make_archive(sample_files(21))
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(pos=st.integers(0, len(BLOB) - 1), bit=st.integers(0, 7))
def test_any_flipped_bit_is_detected(pos, bit):
    bad = bytearray(BLOB)
    bad[pos] ^= 1 << bit
    try:
        read_archive(io.BytesIO(bytes(bad)), NullSink())
    except FormatError:
        return
    raise AssertionError(f"flip at {pos} bit {bit} not detected")


@FAST
@given(cut=st.integers(0, len(BLOB) - 1))
def test_any_cut_is_detected(cut):
    try:
        read_archive(io.BytesIO(BLOB[:cut]), NullSink())
    except FormatError:
        return
    raise AssertionError(f"cut at {cut} not detected")


@FAST
@given(
    ftype=st.sampled_from([1, 2, 3, 4, 5, 0x80, 0xFF]), flags=st.integers(0, 3), file_id=st.integers(0, 3),
    seq=st.integers(0, 3), offset=st.integers(0, 2**64 - 1), raw_len=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=80),
)
def test_well_checksummed_nonsense_frames(ftype, flags, file_id, seq, offset, raw_len, payload):
    head, rest = BLOB[: BLOB.index(b"ISFR")], [frame(fa.FRAME_FILE_BEGIN, 1, 0, fa.build_file_begin("a", 0o640))]
    rest.append(frame(ftype, file_id, seq, payload, offset=offset, flags=flags, raw_len=raw_len))
    try:
        read_archive(io.BytesIO(head + b"".join(rest)), NullSink())
    except InnostreamError:
        return
    raise AssertionError("an archive without a trailer was accepted")


XB = bytes.fromhex("58425354434b3031 00 50 02000000 6631 0300000000000000 0000000000000000 c2412435 616263"
                   "58425354434b3031 00 45 02000000 6631")


@FAST
@given(data=st.data())
def test_xbstream_mutations_fail_cleanly(data):
    bad = bytearray(XB * 2)
    for _ in range(data.draw(st.integers(1, 4))):
        bad[data.draw(st.integers(0, len(bad) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(bad)))
    try:
        read_xbstream(io.BytesIO(bytes(bad[:cut])), NullSink())
    except InnostreamError:
        pass
