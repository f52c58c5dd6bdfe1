"""`innostream verify` validates the InnoDB pages inside an archive, for each real server flavour."""

from __future__ import annotations

import gzip
import io
import itertools
import json

import pytest
from innostream.datadir import is_tablespace
from innostream.extract import PageValidation, PageValidator, verify

from tests.archive.builders import REPO, make_archive

KINDS = ("mariadb10", "mysql9", "mariadb11")


@pytest.mark.parametrize("kind", KINDS)
def test_verify_checks_pages_of_a_clean_shutdown_datadir(fresh_server, kind: str):
    srv = fresh_server(kind, sample=True)
    flavor = srv.flavor
    srv.stop()  # a cleanly shut down datadir: every page must be valid
    files = {p.relative_to(srv.datadir).as_posix(): p.read_bytes()
             for p in sorted(srv.datadir.rglob("*")) if p.is_file() and is_tablespace(p.name)}
    assert any(n.endswith(".ibd") for n in files)
    # 50 000-byte writes: frames start mid-page, so the validator must reassemble pages across frames and holes
    blob = make_archive(files, meta={"flavor": flavor}, piece=50_000)
    pages = PageValidation()
    verify(io.BytesIO(blob), observer_factory=pages)
    checked = {v.name: v for v in pages.validators}
    assert set(checked) == set(files)
    assert all(v.note is None for v in checked.values()), [(v.name, v.note) for v in checked.values() if v.note]
    assert all(v.bad == [] for v in checked.values())
    nonzero = sum(1 for d in files.values() for i in range(0, len(d), 4096) if d[i : i + 4096].strip(b"\0"))
    assert sum(v.pages for v in checked.values()) * 4 >= nonzero  # at least every stored 16K page was checked
    # one flipped byte in one page of one table is found and named
    name = next(n for n in files if n.startswith("sample/") and n.endswith(".ibd") and len(files[n]) > 5 * 16384)
    data = bytearray(files[name])
    page_no = next(i for i in range(3, len(data) // 16384) if data[i * 16384 : (i + 1) * 16384].strip(b"\0"))
    data[page_no * 16384 + 5000] ^= 0x01
    pages = PageValidation()
    verify(io.BytesIO(make_archive({**files, name: bytes(data)}, meta={"flavor": flavor})), observer_factory=pages)
    bad = [(v.name, b[0]) for v in pages.validators for b in v.bad]
    assert bad == [(name, page_no)]



SAMPLES = json.loads((REPO / "fixtures/pages/pages.json").read_text())
PLAIN = [k for k, v in SAMPLES.items() if "encrypted" not in v["file"]]


@pytest.mark.parametrize("sample", PLAIN)
def test_page_validator_reassembles_pages_across_frames_and_holes(sample: str):
    """Real page 0 + a real B-tree page N of each page size and format, laid out as the tablespace has them
    (pages 1..N-1 a hole), fed in odd frame sizes: both pages are checked, and a flipped byte is named."""
    info = SAMPLES[sample]
    ps = info["physical_page_size"]
    blob = gzip.decompress((REPO / "fixtures/pages" / info["file"]).read_bytes())
    page0, page_n = blob[:ps], blob[ps : 2 * ps]
    n = info["pages"][1]
    flavor = "mysql" if info["kind"] == "mysql9" else "mariadb"
    size = (n + 3) * ps

    def run(pn: bytes, cuts: list[int]) -> PageValidator:
        v = PageValidator("t.ibd", flavor)
        pieces = [(0, page0)] + [(n * ps + a, pn[a:b]) for a, b in itertools.pairwise([0, *cuts, ps])]
        for off, data in pieces:
            v.feed(off, data)
        v.finish(size)
        return v

    for cuts in ([], [100], [ps // 2, ps // 2 + 7]):
        v = run(page_n, cuts)
        assert v.note is None
        assert v.bad == []
        assert v.pages >= 2
    if info["innodb_checksum_algorithm"] == "none":
        return  # 0xDEADBEEF in both fields: nothing to detect a flipped byte with
    bad = bytearray(page_n)
    bad[ps // 2] ^= 0x10
    v = run(bytes(bad), [ps // 3])
    assert [p for p, _ in v.bad] == [n]


@pytest.mark.parametrize("flavor", ["mysql", "mariadb"])
def test_zero_continuation_file_of_the_system_tablespace_is_not_a_zero_page0(flavor: str):
    """ibdata2's first page is page N of the system tablespace, not a page 0: an all-zero ibdata2 (not yet used,
    as a server with ``ibdata1:12M;ibdata2:12M:autoextend`` leaves it) passes; an all-zero ibdata1 is refused."""
    zero = bytes(12 << 20)
    pages = PageValidation()
    verify(io.BytesIO(make_archive({"ibdata2": zero}, meta={"flavor": flavor})), observer_factory=pages)
    assert [v.bad for v in pages.validators] == [[]]
    pages = PageValidation()
    verify(io.BytesIO(make_archive({"ibdata1": zero}, meta={"flavor": flavor})), observer_factory=pages)
    if flavor == "mysql":
        assert "page 0 is all zero" in pages.validators[0].bad[0][1]
