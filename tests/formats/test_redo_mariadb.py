"""formats.mtr0log against real MariaDB 10.11 / 11.8 redo samples (fixtures/redo/), and corrupted variants of them."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from innostream.formats import mtr0log as ma
from innostream.formats.errors import BadMagic, ChecksumMismatch, Corrupt, Truncated, UnsupportedVersion
from innostream.redo_inspect import inspect_redo

FIXTURES = Path(__file__).resolve().parent.parent.parent / "fixtures" / "redo"
SAMPLES = ("mariadb-10.11", "mariadb-11.8")


def load(name: str) -> tuple[bytearray, dict]:
    """The sample as a full-size ``ib_logfile0`` image (bytes outside the kept ranges are zero) plus its JSON."""
    meta = json.loads((FIXTURES / f"{name}-redo.json").read_text())
    blob = gzip.decompress((FIXTURES / f"{name}-redo.bin.gz").read_bytes())
    image = bytearray(meta["file_size"])
    image[: meta["prefix_size"]] = blob[: meta["prefix_size"]]
    seg = blob[meta["prefix_size"] :]
    assert len(seg) == meta["segment_size"]
    first_lsn = ma.parse_file_header(image).first_lsn
    for i in range(len(seg)):  # place it circularly, as it was in the file
        image[ma.lsn_to_offset(meta["segment_lsn"] + i, first_lsn, len(image))] = seg[i]
    return image, meta


def stream(image: bytes | bytearray, lsn: int, size: int) -> bytes:
    """``size`` bytes of the circular log from ``lsn`` (stitched across the wrap point)."""
    first_lsn = ma.parse_file_header(image).first_lsn
    out = bytearray()
    while len(out) < size:
        off = ma.lsn_to_offset(lsn + len(out), first_lsn, len(image))
        out += image[off : off + min(size - len(out), len(image) - off)]
    return bytes(out)


@pytest.fixture(params=SAMPLES)
def sample(request: pytest.FixtureRequest) -> tuple[bytearray, dict]:
    return load(request.param)


def test_header_and_checkpoint_match_what_the_server_reported(sample) -> None:
    image, meta = sample
    status = meta["server_status"]
    header, cp = ma.find_checkpoint(image[: ma.START_OFFSET])
    assert header.format == ma.FORMAT_10_8
    assert header.creator == "MariaDB " + meta["server_version"].split("-")[0]
    assert not header.encrypted
    assert header.first_lsn >= ma.FIRST_LSN
    assert cp.checkpoint_lsn == status["last_checkpoint_at"] == status["Innodb_lsn_last_checkpoint"]
    assert status["Innodb_checkpoint_age"] == status["log_sequence_number"] - cp.checkpoint_lsn
    # the other slot holds the previous checkpoint
    other = ma.checkpoints(image[: ma.START_OFFSET], header.first_lsn)[2 - cp.slot]
    assert other is not None
    assert other.checkpoint_lsn < cp.checkpoint_lsn


def test_scan_from_checkpoint_ends_exactly_at_the_servers_lsn(sample) -> None:
    image, meta = sample
    header, cp = ma.find_checkpoint(image[: ma.START_OFFSET])
    end = meta["server_status"]["log_sequence_number"]
    for start in (cp.checkpoint_lsn, meta["segment_lsn"]):
        buf = stream(image, start, end + 1024 - start)
        res = ma.scan_mtrs(buf, start, header.first_lsn, len(image))
        assert res.status == ma.MTR_INVALID  # what follows the log is not a valid mtr
        assert start + res.end == end
        assert len(res.terminators) > 3
        # every mtr decodes into records of known types
        pos = 0
        for term in res.terminators:
            for rec in ma.parse_records(buf[pos:term]):
                assert rec.type in ma.MrecType._value2member_map_ or rec.type in ma.MfileType._value2member_map_
            pos = term + 5
        assert ma.describe_stop(buf, res.end, ma.sequence_bit(end, header.first_lsn, len(image)))


def test_checkpoint_mtr_at_end_lsn(sample) -> None:
    """The mtr at end_lsn holds FILE_MODIFY records for the dirty tablespaces and ends with FILE_CHECKPOINT."""
    image, meta = sample
    _header, cp = ma.find_checkpoint(image[: ma.START_OFFSET])
    raw = stream(image, cp.end_lsn, meta["server_status"]["log_sequence_number"] - cp.end_lsn)
    term = ma.find_terminator(raw, 0)
    assert ma.mtr_end(raw, 0, 1) == term + 5
    recs = ma.parse_records(raw[:term])
    assert ma.file_checkpoint_lsn(recs[-1]) == cp.checkpoint_lsn
    assert {r.type for r in recs[:-1]} <= {ma.MfileType.FILE_MODIFY}
    assert any(r.payload.endswith(b".ibd") for r in recs[:-1])
    # the FILE_CHECKPOINT record is the canonical 16-byte mtr's record part
    built = ma.build_file_checkpoint_mtr(cp.checkpoint_lsn, 1)
    assert raw[term - 11 : term] == built[:11]
    assert ma.FILE_CHECKPOINT_MTR.parse(built).lsn == cp.checkpoint_lsn
    assert ma.mtr_end(built, 0, 1) == ma.SIZE_OF_FILE_CHECKPOINT
    assert ma.mtr_end(built, 0, 0) == ma.MTR_INVALID


def test_construct_specs_agree_with_fast_paths_and_builders(sample) -> None:
    image, _meta = sample
    header = ma.parse_file_header(image)
    spec = ma.LOG_FILE_HEADER.parse(bytes(image[:512]))
    assert (spec.format, spec.first_lsn) == (header.format, header.first_lsn)
    assert spec.creator.rstrip(b"\0").decode() == header.creator
    assert ma.build_file_header(header.first_lsn, header.creator) == bytes(image[:512])
    assert ma.LOG_FILE_HEADER.build(spec) == bytes(image[:512])
    for slot, off in ((1, ma.CHECKPOINT_1), (2, ma.CHECKPOINT_2)):
        block = bytes(image[off : off + 64])
        cp = ma.parse_checkpoint(block, header.first_lsn, slot)
        spec_cp = ma.CHECKPOINT_BLOCK.parse(block)
        assert (spec_cp.checkpoint_lsn, spec_cp.end_lsn) == (cp.checkpoint_lsn, cp.end_lsn)
        assert ma.build_checkpoint(cp.checkpoint_lsn, cp.end_lsn) == block
        assert ma.CHECKPOINT_BLOCK.build(spec_cp) == block
    assert ma.build_log_prefix(1, "x", 1, 1)[ma.CHECKPOINT_2 :] == bytes(ma.START_OFFSET - ma.CHECKPOINT_2)


# --- corrupted variants -----------------------------------------------------------------------------------------------
def _mtrs(image: bytearray, meta: dict) -> tuple[bytes, list[int], int, int]:
    header, cp = ma.find_checkpoint(image[: ma.START_OFFSET])
    end = meta["server_status"]["log_sequence_number"]
    buf = stream(image, cp.checkpoint_lsn, end - cp.checkpoint_lsn)
    res = ma.scan_mtrs(buf, cp.checkpoint_lsn, header.first_lsn, len(image))
    assert res.status == 0
    return buf, res.terminators, cp.checkpoint_lsn, header.first_lsn


def test_flipped_record_byte_bad_crc_and_stale_sequence_bit_end_the_log(sample) -> None:
    image, meta = sample
    buf, terms, lsn, first = _mtrs(image, meta)
    k = len(terms) // 2
    start_k = terms[k - 1] + 5  # mtr k starts after mtr k-1's CRC
    size = len(image)
    for mutate in ("record", "crc", "sequence", "zero_first_byte"):
        bad = bytearray(buf)
        if mutate == "record":
            bad[terms[k] - 1] ^= 0x01  # last record byte: lengths unchanged, CRC now wrong
        elif mutate == "crc":
            bad[terms[k] + 2] ^= 0x40
        elif mutate == "sequence":
            bad[terms[k]] ^= 1  # the previous lap's bit: stale data
        else:
            bad[start_k] = 0
        res = ma.scan_mtrs(bytes(bad), lsn, first, size)
        assert res.status == ma.MTR_INVALID, mutate
        assert res.end == start_k, mutate
        assert len(res.terminators) == k
        assert ma.describe_stop(bytes(bad), start_k, 1) != "end of data"


def test_truncated_mtr_is_incomplete_not_invalid(sample) -> None:
    image, meta = sample
    buf, terms, lsn, first = _mtrs(image, meta)
    for cut in (terms[1] - 1, terms[1], terms[1] + 3):
        res = ma.scan_mtrs(buf[:cut], lsn, first, len(image))
        assert res.status == ma.MTR_INCOMPLETE
        assert res.end == terms[0] + 5


def test_wrapped_log_validates_across_the_wrap_point(sample) -> None:
    """Real mtrs laid into a tiny circular file so that one straddles the end; lap bits set as the server would."""
    image, meta = sample
    buf, terms, _lsn, _first = _mtrs(image, meta)
    body = buf[: terms[-1] + 5]
    first_lsn = 20000
    cap = len(body) + 1000
    file_size = ma.START_OFFSET + cap
    start_lsn = first_lsn + cap - len(body) // 2  # first lap ends in the middle of the sequence
    logical = bytearray(body)
    for t in terms:
        logical[t] = ma.sequence_bit(start_lsn + t, first_lsn, file_size)
    assert {logical[t] for t in terms} == {0, 1}
    res = ma.scan_mtrs(bytes(logical), start_lsn, first_lsn, file_size)
    assert (res.status, res.end, res.terminators) == (0, len(body), terms)
    # the same bytes with the first-lap bit everywhere: the part after the wrap is stale
    stale = bytearray(body)
    for t in terms:
        stale[t] = 1
    res = ma.scan_mtrs(bytes(stale), start_lsn, first_lsn, file_size)
    assert res.status == ma.MTR_INVALID
    k = next(i for i, t in enumerate(terms) if start_lsn + t >= first_lsn + cap)  # first mtr ending in lap 2
    assert 0 < k < len(terms)
    assert res.terminators == terms[:k]


def test_checkpoint_fallback_and_rejections(sample) -> None:
    image, _meta = sample
    prefix = bytearray(image[: ma.START_OFFSET])
    header, cp = ma.find_checkpoint(prefix)
    off = ma.CHECKPOINT_1 if cp.slot == 1 else ma.CHECKPOINT_2
    prefix[off + 5] ^= 0xFF  # the newer checkpoint is torn: recovery takes the older one
    _h, older = ma.find_checkpoint(prefix)
    assert older.slot != cp.slot
    assert older.checkpoint_lsn < cp.checkpoint_lsn
    other = ma.CHECKPOINT_1 + ma.CHECKPOINT_2 - off
    prefix[other + 20] = 1  # reserved byte set (CRC recomputed): invalid too
    prefix[other + 60 : other + 64] = ma.crc32c(bytes(prefix[other : other + 60])).to_bytes(4, "big")
    with pytest.raises(Corrupt):
        ma.parse_checkpoint(prefix[other : other + 64], header.first_lsn)
    with pytest.raises(Corrupt, match="no valid checkpoint"):
        ma.find_checkpoint(prefix)
    with pytest.raises(Truncated):
        ma.parse_checkpoint(prefix[other : other + 63], header.first_lsn)


def test_header_rejections(sample) -> None:
    image, _meta = sample
    block = bytearray(image[:512])
    bad = bytearray(block)
    bad[20] ^= 1
    with pytest.raises(ChecksumMismatch):
        ma.parse_file_header(bad)
    old = bytearray(block)
    old[0:4] = ma.FORMAT_10_5.to_bytes(4, "big")
    with pytest.raises(UnsupportedVersion):
        ma.parse_file_header(old)
    with pytest.raises(BadMagic):
        ma.parse_file_header(bytes(512))
    with pytest.raises(Truncated):
        ma.parse_file_header(block[:100])


def test_inspect_server_log_image(sample, tmp_path: Path) -> None:
    image, meta = sample
    path = tmp_path / "ib_logfile0"
    path.write_bytes(image)
    info = inspect_redo(tmp_path)
    status = meta["server_status"]
    assert info["flavor"] == "mariadb"
    assert info["kind"] == "server log"
    assert info["checkpoint_lsn"] == status["last_checkpoint_at"]
    assert info["end_lsn"] == status["log_sequence_number"]
    assert info["invalid"] is None
    assert info["mtrs"] > 3


# --- varints ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (0x7F, b"\x7f"),
        (0x80, b"\x80\x00"),
        (0x407F, b"\xbf\xff"),
        (0x4080, b"\xc0\x00\x00"),
        (0x204080, b"\xe0\x00\x00\x00"),
        (0x10204080, b"\xf0\x00\x00\x00\x00"),
        (0xFFFFFFFF, b"\xf0" + (0xFFFFFFFF - 0x10204080).to_bytes(4, "big")),
    ],
)
def test_varint_vectors(value: int, encoded: bytes) -> None:
    assert ma.encode_varint(value) == encoded
    assert ma.decode_varint(encoded) == (value, len(encoded))
    assert ma.varint_length(encoded[0]) == len(encoded)


@given(st.integers(0, 0xFFFFFFFF), st.binary(max_size=3))
def test_varint_round_trip(value: int, tail: bytes) -> None:
    enc = ma.encode_varint(value)
    assert ma.decode_varint(b"\x01" + enc + tail, 1) == (value, len(enc))


def test_varint_errors() -> None:
    with pytest.raises(Corrupt):
        ma.decode_varint(b"\xf1\x00\x00\x00\x00")
    with pytest.raises(Corrupt):
        ma.decode_varint(b"\xf0\xff\xff\xff\xff")
    with pytest.raises(Truncated):
        ma.decode_varint(b"\xc0\x00")


def test_fast_length_walk_agrees_with_full_record_decoding(sample) -> None:
    """find_terminator (hot path, lengths only) and parse_records (full decode) split every real mtr alike."""
    image, meta = sample
    end = meta["server_status"]["log_sequence_number"]
    buf = stream(image, meta["segment_lsn"], end - meta["segment_lsn"])
    pos = 0
    n = 0
    while pos < len(buf):
        term = ma.find_terminator(buf, pos)
        recs = ma.parse_records(buf[pos:term])
        assert recs
        assert recs[-1].end == term - pos
        assert all(a.end == b.offset for a, b in itertools.pairwise(recs))
        pos = term + 5
        n += 1
    assert pos == len(buf)
    assert n > 10


def reference_scan(buf: bytes, lsn: int, first_lsn: int, file_size: int) -> ma.ScanResult:
    """scan_mtrs spelled with the un-inlined find_terminator / check_tail (the inlined loop must agree)."""
    pos, terms = 0, []
    while pos < len(buf):
        term = ma.find_terminator(buf, pos)
        if term < 0:
            return ma.ScanResult(pos, terms, term)
        end = ma.check_tail(buf, pos, term, ma.sequence_bit(lsn + term, first_lsn, file_size))
        if end < 0:
            return ma.ScanResult(pos, terms, end)
        terms.append(term)
        pos = end
    return ma.ScanResult(pos, terms, 0)


def test_inlined_scan_agrees_with_reference_walk(sample) -> None:
    image, meta = sample
    first = ma.parse_file_header(image).first_lsn
    end = meta["server_status"]["log_sequence_number"]
    buf = stream(image, meta["segment_lsn"], end + 1024 - meta["segment_lsn"])
    for cut in (len(buf), end - meta["segment_lsn"], end - meta["segment_lsn"] - 7, 1000):
        assert ma.scan_mtrs(buf[:cut], meta["segment_lsn"], first, len(image)) == reference_scan(
            buf[:cut], meta["segment_lsn"], first, len(image)
        )


@given(st.binary(max_size=600), st.integers(ma.FIRST_LSN, 1 << 40))
def test_scan_never_crashes_on_garbage(data: bytes, lsn: int) -> None:
    res = ma.scan_mtrs(data, lsn, ma.FIRST_LSN, ma.START_OFFSET + 4096)
    assert 0 <= res.end <= len(data)
    assert res.status in (0, ma.MTR_INCOMPLETE, ma.MTR_INVALID)
    assert res == reference_scan(data, lsn, ma.FIRST_LSN, ma.START_OFFSET + 4096)
    try:
        ma.parse_records(data)
    except (Corrupt, Truncated):
        pass


@st.composite
def mtr_streams(draw):
    """Well-formed mtr sequences: random records (short and varint-length forms), terminator, CRC-32C."""
    out = bytearray()
    terms = []
    for _ in range(draw(st.integers(1, 6))):
        start = len(out)
        for _ in range(draw(st.integers(1, 5))):
            if draw(st.booleans()):
                n = draw(st.integers(1, 15))
                first = draw(st.sampled_from([0x10, 0x20, 0x30, 0x40, 0x50, 0x70, 0xB0, 0xC0])) | n
                out += bytes([first]) + draw(st.binary(min_size=n, max_size=n))
            else:
                x = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0x100, 0x4080, 0x5000]))
                enc = ma.encode_varint(x)
                out += bytes([0x30]) + enc + draw(st.binary(min_size=x + 15 - len(enc), max_size=x + 15 - len(enc)))
        terms.append(len(out))
        out += b"\x01" + ma.crc32c(bytes(out[start:])).to_bytes(4, "big")
    return bytes(out), terms


@given(mtr_streams(), st.integers(0, 10**6), st.integers(0, 255))
def test_scan_on_generated_mtrs(stream_terms, cut: int, flip: int) -> None:
    data, terms = stream_terms
    size = ma.START_OFFSET + len(data) + 10  # one lap: every sequence bit is 1
    res = ma.scan_mtrs(data, ma.FIRST_LSN, ma.FIRST_LSN, size)
    assert (res.status, res.end, res.terminators) == (0, len(data), terms)
    cut %= len(data)
    truncated = ma.scan_mtrs(data[:cut], ma.FIRST_LSN, ma.FIRST_LSN, size)
    assert truncated == reference_scan(data[:cut], ma.FIRST_LSN, ma.FIRST_LSN, size)
    assert truncated.status == (0 if cut in [t + 5 for t in terms] or cut == 0 else ma.MTR_INCOMPLETE)
    bad = bytearray(data)
    bad[cut] ^= flip or 1
    damaged = ma.scan_mtrs(bytes(bad), ma.FIRST_LSN, ma.FIRST_LSN, size)
    assert damaged == reference_scan(bytes(bad), ma.FIRST_LSN, ma.FIRST_LSN, size)
    assert damaged.end <= cut  # nothing at or after the damaged byte's mtr is accepted


@given(mtr_streams(), st.integers(1, 200), st.integers(0, 10**6), st.integers(0, 1000))
def test_scan_across_several_laps(stream_terms, cap: int, skew: int, cut: int) -> None:
    """A tiny circular area: the stream's mtrs end on several different laps, each with its own sequence bit."""
    data, terms = stream_terms
    size = ma.START_OFFSET + cap
    lsn = ma.FIRST_LSN + skew
    buf = bytearray(data)
    for t in terms:
        buf[t] = ma.sequence_bit(lsn + t, ma.FIRST_LSN, size)
    res = ma.scan_mtrs(bytes(buf), lsn, ma.FIRST_LSN, size)
    assert (res.status, res.end, res.terminators) == (0, len(data), terms)
    cut %= len(data) + 1
    assert ma.scan_mtrs(bytes(buf[:cut]), lsn, ma.FIRST_LSN, size) == reference_scan(
        bytes(buf[:cut]), lsn, ma.FIRST_LSN, size
    )
    wrong = bytearray(buf)
    wrong[terms[-1]] ^= 1  # the other lap's bit: stale data ends the log there
    stale = ma.scan_mtrs(bytes(wrong), lsn, ma.FIRST_LSN, size)
    assert (stale.status, stale.terminators) == (ma.MTR_INVALID, terms[:-1])
