"""Read-only inspection of tablespace files and data directories: what a DBA asks before and after a backup.

For one tablespace: the server family, page sizes, space id, checksum algorithms seen, pages by type and every page
the server would reject, with the reason. For a data directory: the same for each tablespace, as a table, plus the
redo files (through ``innostream.redo_inspect``). For an incremental backup's ``.delta``/``.meta`` pair: the meta's
page size and space id, the clusters, the pages it carries (numbers, LSN range) and each page validated. Nothing is
ever written.

The page checks are exactly the backup's (``formats.buf0checksum.validate_pages``), including its bounded re-reads
of pages that look torn, so a page that a running server is writing at that moment is not reported.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from innostream.datadir import REDO_DIR, is_redo_file, is_tablespace, is_temporary_tablespace
from innostream.errors import SourceError
from innostream.flavor import Flavor
from innostream.formats.buf0checksum import checksum_algorithm, page_is_corrupted, validate_pages
from innostream.formats.errors import FormatError, InnostreamError
from innostream.formats.fil0fil import BE16, BE64, FIL_PAGE_LSN, FIL_PAGE_TYPE, UNIV_PAGE_SIZE_MAX, page_type_name
from innostream.formats.fsp0fsp import FLAVORS, PAGE_COMPRESSION_ALGORITHMS, SpaceInfo, guess_flavor, space_info
from innostream.formats.xtrabackup_delta import delta_space_infos, iter_delta, parse_meta
from innostream.redo_inspect import inspect_redo

READ_SIZE = 4 << 20  # bytes per read, a whole number of pages of any size
RETRIES = 3  # re-reads of a page that fails, 100 ms apart (the backup tools retry 10 times per batch)
RETRY_SLEEP = 0.1
MAX_LISTED = 1000  # invalid pages kept per file; the count is always exact


@dataclass
class TablespaceReport:
    """The inspection result for one file; ``asdict`` of it is the --json form."""

    path: str
    flavor: str | None = None
    flavor_source: str = ""  # option | flags | datadir | default
    space_id: int | None = None
    flags: int | None = None
    logical_page_size: int | None = None
    physical_page_size: int | None = None
    zip_size: int = 0  # ROW_FORMAT=COMPRESSED page size from the flags (may equal the logical size), else 0
    full_crc32: bool | None = None
    page_compressed: bool | None = None
    compression_algo: str | None = None
    encrypted: bool | None = None
    file_size: int = 0
    pages: int = 0
    fsp_size: int | None = None
    first_page_no: int = 0
    checksums: dict[str, int] = field(default_factory=dict)
    page_types: dict[str, int] = field(default_factory=dict)
    max_lsn: int = 0  # newest FIL_PAGE_LSN of any page: how far the file's contents reach in the redo log
    invalid_count: int = 0
    invalid: list[tuple[int, str]] = field(default_factory=list)
    note: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.invalid_count == 0


def detect_datadir_flavor(datadir: Path) -> Flavor | None:
    """The server family of a data directory from files only one of them writes."""
    if (datadir / REDO_DIR).is_dir() or (datadir / "mysql.ibd").exists():
        return Flavor.MYSQL
    if any((datadir / n).exists() for n in ("aria_log_control", "ib_logfile0", "mariadb_upgrade_info")):
        return Flavor.MARIADB
    return None


def _resolve_flavor(path: Path, page0: bytes, flavor: str | None) -> tuple[str, str]:
    if flavor:
        return flavor, "option"
    if guessed := guess_flavor(page0):
        return guessed, "flags"
    for d in (path.parent, path.parent.parent):
        if found := detect_datadir_flavor(d):
            return found, "datadir"
    # Legacy flags without MySQL 8's SDI bit: a MariaDB file (crc32 or ROW_FORMAT=COMPRESSED) far more often.
    return Flavor.MARIADB, "default"


def _read_at(fd: int, offset: int, size: int) -> bytes:
    return os.pread(fd, size, offset)


def _recheck(fd: int, info: SpaceInfo, page_no: int, file_page: int) -> str | None:
    """Re-read one failing page a few times: a page being written by the server is only transiently torn."""
    ps = info.physical_page_size
    reason: str | None = "unreadable"
    for attempt in range(RETRIES):
        if attempt:
            time.sleep(RETRY_SLEEP)
        page = _read_at(fd, file_page * ps, ps)
        if len(page) < ps:
            return None  # the file shrank (truncated undo, dropped table): nothing left to judge
        reason = page_is_corrupted(page, info, page_no)
        if reason is None:
            return None
    return reason


def inspect_tablespace(
    path: Path, flavor: str | None = None, *, info: SpaceInfo | None = None, first_page_no: int = 0
) -> TablespaceReport:
    """Inspect one tablespace file. ``info``/``first_page_no`` are for ibdata2.. (no FSP header of their own).

    Problems with the file (unreadable, not a tablespace) land in ``report.error`` rather than raising, so a data
    directory report lists every file.
    """
    rep = TablespaceReport(path=str(path), first_page_no=first_page_no)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        rep.error = f"cannot open: {exc.strerror}"
        return rep
    try:
        rep.file_size = os.fstat(fd).st_size
        if info is None:
            page0 = _read_at(fd, 0, UNIV_PAGE_SIZE_MAX)  # page 0 and its encryption info
            if len(page0) < 150:
                rep.error = f"too short for a tablespace ({len(page0)} bytes)"
                return rep
            if page0.count(0) == len(page0):
                rep.note = "page 0 is all zero (not yet initialised by the server); pages not checked"
                return rep
            rep.flavor, rep.flavor_source = _resolve_flavor(path, page0, flavor)
            try:
                info = space_info(page0, rep.flavor)
            except FormatError as exc:
                rep.error = str(exc)
                return rep
        else:
            rep.flavor, rep.flavor_source = info.flavor, "option"
        _fill_info(rep, info)
        _scan(fd, rep, info, first_page_no)
    finally:
        os.close(fd)
    return rep


def _fill_info(rep: TablespaceReport, info: SpaceInfo) -> None:
    rep.space_id = info.space_id
    rep.flags = info.flags
    rep.logical_page_size = info.logical_page_size
    rep.physical_page_size = info.physical_page_size
    rep.zip_size = info.zip_size
    rep.full_crc32 = info.full_crc32
    rep.page_compressed = info.page_compressed
    rep.compression_algo = PAGE_COMPRESSION_ALGORITHMS.get(info.compression_algo) if info.page_compressed else None
    rep.encrypted = info.encrypted
    rep.fsp_size = info.size_in_pages


def _scan(fd: int, rep: TablespaceReport, info: SpaceInfo, first_page_no: int) -> None:
    ps = info.physical_page_size
    size = rep.file_size
    rep.pages = size // ps
    if size % ps:
        rep.note = f"file ends with a partial page of {size % ps} bytes (not checked)"
    checksums: Counter[str] = Counter()
    types: Counter[str] = Counter()
    chunk_pages = max(1, READ_SIZE // ps)
    for file_page in range(0, rep.pages, chunk_pages):
        want = min(chunk_pages, rep.pages - file_page) * ps
        buf = _read_at(fd, file_page * ps, want)
        if len(buf) < want:  # the file shrank under us
            buf = buf[: len(buf) // ps * ps]
        mv = memoryview(buf)
        for page_no, _reason in validate_pages(mv, info, first_page_no + file_page):
            reason = _recheck(fd, info, page_no, page_no - first_page_no)
            if reason is not None:
                rep.invalid_count += 1
                if len(rep.invalid) < MAX_LISTED:
                    rep.invalid.append((page_no, reason))
        for i in range(len(buf) // ps):
            page = mv[i * ps : (i + 1) * ps]
            types[page_type_name(BE16.unpack_from(page, FIL_PAGE_TYPE)[0], info.flavor, info.full_crc32)] += 1
            checksums[checksum_algorithm(page, info)] += 1
            rep.max_lsn = max(rep.max_lsn, BE64.unpack_from(page, FIL_PAGE_LSN)[0])
    rep.checksums = dict(checksums.most_common())
    rep.page_types = dict(types.most_common())


def _system_files(datadir: Path) -> list[Path]:
    files = (p for p in datadir.glob("ibdata*") if p.suffix not in (".delta", ".meta"))  # not an incremental's
    return sorted(files, key=lambda p: int(re.sub(r"\D", "", p.name) or 0))


def _redo_entries(paths: list[Path]) -> list[dict[str, Any]]:
    """Redo files, described by :func:`innostream.redo_inspect.inspect_redo`."""
    out = []
    for p in paths:
        try:
            out.append({"path": str(p), **inspect_redo(p)})
        except InnostreamError as exc:
            out.append({"path": str(p), "error": str(exc)})
    return out


def is_redo_path(path: Path) -> bool:
    """Whether ``path`` names a redo file or MySQL's redo directory."""
    return path.name == REDO_DIR or is_redo_file(path.name)


def inspect_datadir(datadir: Path, flavor: str | None = None) -> dict[str, Any]:
    """Inspect every tablespace under ``datadir`` (and its redo files); the result is JSON-ready."""
    if flavor is None:
        flavor = detect_datadir_flavor(datadir)
    reports: list[TablespaceReport] = []
    deltas: list[dict[str, Any]] = []  # an incremental backup's .delta/.meta pairs
    sys_files = _system_files(datadir)
    if sys_files:
        first = inspect_tablespace(sys_files[0], flavor)
        reports.append(first)
        info = _info_of(first)
        next_page = first.pages
        for extra in sys_files[1:]:
            if info is None:
                reports.append(TablespaceReport(path=str(extra), error="ibdata1 unreadable; continuation not checked"))
                continue
            rep = inspect_tablespace(extra, info=info, first_page_no=next_page)
            next_page += rep.pages
            reports.append(rep)
    # MySQL's redo is one log in a directory of files (#ib_redoN, spare #ib_redoN_tmp): inspected as a whole.
    redo: list[Path] = [datadir / REDO_DIR] if (datadir / REDO_DIR).is_dir() else []
    for root, dirs, files in os.walk(datadir):
        dirs[:] = sorted(d for d in dirs if d != REDO_DIR)
        rel_root = Path(root)
        for name in sorted(files):
            p = rel_root / name
            if is_redo_file(name):
                if rel_root == datadir:
                    redo.append(p)
            elif p.parent == datadir and name.startswith("ibdata") and p.suffix not in (".delta", ".meta"):
                continue
            elif is_tablespace(name) or is_temporary_tablespace(name):
                reports.append(inspect_tablespace(p, flavor))
            elif name.endswith(".delta"):
                deltas.append(inspect_delta(p, flavor))
    return {
        "datadir": str(datadir),
        "flavor": flavor,
        "tablespaces": [report_dict(r) for r in reports],
        "redo": _redo_entries(redo),
        "deltas": deltas,
        "invalid_pages": sum(r.invalid_count for r in reports) + sum(d["invalid_count"] for d in deltas),
        "errors": sum(1 for r in reports if r.error) + sum(1 for d in deltas if d["error"]),
    }


def _info_of(rep: TablespaceReport) -> SpaceInfo | None:
    if rep.space_id is None or rep.flavor is None or rep.logical_page_size is None:
        return None
    return SpaceInfo(
        space_id=rep.space_id,
        flags=rep.flags or 0,
        flavor=rep.flavor,
        logical_page_size=rep.logical_page_size,
        physical_page_size=rep.physical_page_size or rep.logical_page_size,
        full_crc32=bool(rep.full_crc32),
        page_compressed=bool(rep.page_compressed),
        encrypted=bool(rep.encrypted),
    )


def report_dict(rep: TablespaceReport) -> dict[str, Any]:
    """The JSON form of a tablespace report."""
    d = asdict(rep)
    d["invalid"] = [{"page": no, "reason": why} for no, why in rep.invalid]
    d["ok"] = rep.ok
    return d


#: Delta inspection reads the whole .delta; more than this is refused (a delta is at most its tablespace's size).
MAX_DELTA_BYTES = 8 << 30
MAX_DELTA_LISTED = 200  # page numbers listed in the report; the count is exact


def inspect_delta(path: Path, flavor: str | None = None) -> dict[str, Any]:
    """One ``.delta`` and its ``.meta`` (either path may be given): sizes, space id, clusters, the page numbers it
    carries, their LSN range, and every page validated as the backup validates pages."""
    stem = str(path)[: -len(path.suffix)] if path.suffix in (".delta", ".meta") else str(path)
    delta, meta_path = Path(stem + ".delta"), Path(stem + ".meta")
    out: dict[str, Any] = {"kind": "delta", "path": str(delta), "meta_path": str(meta_path), "error": None,
                           "pages": 0, "clusters": 0, "page_nos": [], "min_lsn": None, "max_lsn": None,
                           "invalid_count": 0, "invalid": []}
    try:
        meta = parse_meta(meta_path.read_bytes(), file=str(meta_path))
        out.update(page_size=meta.page_size, zip_size=meta.zip_size, space_id=meta.space_id,
                   space_flags=meta.space_flags)
        size = delta.stat().st_size
        if size > MAX_DELTA_BYTES:
            raise SourceError(f"{delta} is {size} bytes; inspect reads at most {MAX_DELTA_BYTES}")
        data = delta.read_bytes()
        ps = meta.physical_page_size
        pages = list(iter_delta(data, ps, file=str(delta)))
    except (OSError, InnostreamError) as exc:
        out["error"] = exc.strerror if isinstance(exc, OSError) else str(exc)
        return out
    page0 = next((bytes(img) for no, img in pages if no == 0), None)
    infos = delta_space_infos(meta, flavor, page0)
    out["validated_as"] = f"{infos[0].flavor}, " + ("page 0" if page0 is not None else "the .meta")
    out["clusters"] = max(1, -(-len(pages) // (ps // 4 - 1)))
    out["pages"] = len(pages)
    out["page_nos"] = [no for no, _ in pages[:MAX_DELTA_LISTED]]
    lsns = [BE64.unpack_from(img, FIL_PAGE_LSN)[0] for _, img in pages]
    if lsns:
        out["min_lsn"], out["max_lsn"] = min(lsns), max(lsns)
    seen: set[int] = set()
    for no, img in pages:
        reason = "listed twice" if no in seen else None
        seen.add(no)
        if infos[0].space_id == 0 and infos[0].extent_size <= no < 3 * infos[0].extent_size:
            continue  # ibdata1's doublewrite area: copies of other pages, never validated (as the backup)
        if reason is None:
            reasons = [validate_pages(img, info, no) for info in infos]
            if all(reasons):
                reason = reasons[0][0][1]
        if reason is not None:
            out["invalid_count"] += 1
            if len(out["invalid"]) < MAX_LISTED:
                out["invalid"].append({"page": no, "reason": reason})
    return out


def render_delta(d: dict[str, Any], listed: int = 20) -> str:
    """Text form of :func:`inspect_delta`."""
    lines = [f"delta:            {d['path']}"]
    if d.get("error"):
        lines.append(f"error:            {d['error']}")
        return "\n".join(lines)
    nos = d["page_nos"]
    shown = ", ".join(str(n) for n in nos[:listed]) + (", ..." if d["pages"] > listed else "")
    lines += [
        f"meta:             page_size {d['page_size']}, zip_size {d['zip_size']}, space id {d['space_id']}"
        + (f", space_flags {d['space_flags']:#x}" if d.get("space_flags") is not None else ""),
        f"pages:            {d['pages']} in {d['clusters']} cluster(s): {shown or '-'}",
        f"page LSNs:        {d['min_lsn']} .. {d['max_lsn']}" if d["pages"] else "page LSNs:        -",
        f"validated as:     {d['validated_as']}",
    ]
    if d["invalid_count"]:
        lines.append(f"invalid pages:    {d['invalid_count']}")
        lines += [f"  page {x['page']}: {x['reason']}" for x in d["invalid"][:listed]]
    else:
        lines.append("invalid pages:    none")
    return "\n".join(lines)


def inspect_path(path: Path, flavor: str | None = None) -> dict[str, Any]:
    """Inspect a tablespace file, a redo file, ``#innodb_redo`` or a data directory; JSON-ready result.

    Raises:
        SourceError: the path does not exist.
    """
    if flavor is not None and flavor not in FLAVORS:
        raise SourceError(f"unknown flavor {flavor!r}", hint="use mysql or mariadb")
    if not path.exists():
        raise SourceError(f"{path} does not exist")
    if path.is_dir() and path.name == REDO_DIR:
        return {"kind": "redo", "redo": _redo_entries([path])}
    if path.is_dir():
        return {"kind": "datadir", **inspect_datadir(path, flavor)}
    if is_redo_path(path):
        return {"kind": "redo", "redo": _redo_entries([path])}
    if path.suffix in (".delta", ".meta"):
        return inspect_delta(path, flavor)
    rep = inspect_tablespace(path, flavor)
    return {"kind": "tablespace", **report_dict(rep)}


# --- Text rendering ------------------------------------------------------------------------------------------------
def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"


def render_tablespace(d: dict[str, Any], listed: int = 20) -> str:
    """A human-readable block for one tablespace report."""
    lines = [f"file:             {d['path']}"]
    if d.get("error"):
        lines.append(f"error:            {d['error']}")
        return "\n".join(lines)
    if d.get("flavor") is None:
        lines.append(f"note:             {d.get('note')}")
        return "\n".join(lines)
    feats = ["full_crc32" if d["full_crc32"] else "legacy checksums"]
    if d["page_compressed"]:
        feats.append(f"page_compressed ({d['compression_algo']})")
    if d["encrypted"]:
        feats.append("encrypted")
    if d.get("zip_size"):
        feats.append(f"ROW_FORMAT=COMPRESSED, KEY_BLOCK_SIZE={d['zip_size'] // 1024}")
    lines += [
        f"server family:    {d['flavor']} (from {d['flavor_source']})",
        f"space id:         {d['space_id']}",
        f"flags:            {d['flags']:#x} ({', '.join(feats)})",
        f"page size:        {d['logical_page_size']} logical, {d['physical_page_size']} physical",
        f"pages:            {d['pages']} in {d['file_size']} bytes (FSP_SIZE {d['fsp_size']})",
        f"newest page LSN:  {d['max_lsn']}",
        f"checksums seen:   {_counts(d['checksums'])}",
        f"page types:       {_counts(d['page_types'])}",
    ]
    if d.get("note"):
        lines.append(f"note:             {d['note']}")
    if d["invalid_count"]:
        lines.append(f"invalid pages:    {d['invalid_count']}")
        lines += [f"  page {x['page']}: {x['reason']}" for x in d["invalid"][:listed]]
        if d["invalid_count"] > listed:
            lines.append(f"  ... {d['invalid_count'] - listed} more (use --json for up to {MAX_LISTED})")
    else:
        lines.append("invalid pages:    none")
    return "\n".join(lines)


def render_datadir(d: dict[str, Any]) -> str:
    """A table of all tablespaces of a data directory, then the invalid pages and redo files."""
    base = Path(d["datadir"])
    rows = [("SPACE", "PAGE", "PHYS", "PAGES", "CHECKSUM", "FEATURES", "INVALID", "FILE")]
    problems: list[str] = []
    notes: list[str] = []
    for t in d["tablespaces"]:
        rel = os.path.relpath(t["path"], base)
        if t.get("error") or t.get("flavor") is None:
            rows.append(("-", "-", "-", "-", "-", "-", "error" if t.get("error") else "-", rel))
            (problems if t.get("error") else notes).append(f"{rel}: {t.get('error') or t.get('note')}")
            continue
        if t.get("note"):
            notes.append(f"{rel}: {t['note']}")
        feats = [f for f, on in (("fcrc32", t["full_crc32"]), ("pcomp", t["page_compressed"]),
                                 ("enc", t["encrypted"])) if on]  # fmt: skip
        if t.get("zip_size"):
            feats.append("zip")
        main_algo = next((k for k in t["checksums"] if k != "zero"), "zero")
        rows.append((str(t["space_id"]), str(t["logical_page_size"]), str(t["physical_page_size"]), str(t["pages"]),
                     main_algo, ",".join(feats) or "-", str(t["invalid_count"]), rel))  # fmt: skip
        problems += [f"{rel}: page {x['page']}: {x['reason']}" for x in t["invalid"][:20]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]  # all but FILE
    out = [f"data directory:   {d['datadir']} ({d['flavor'] or 'family unknown'})"]
    for r in rows:
        pairs = enumerate(zip(r[:-1], widths, strict=True))
        cells = (c.rjust(w) if i in (0, 1, 2, 3, 6) else c.ljust(w) for i, (c, w) in pairs)
        out.append("  ".join([*cells, r[-1]]))
    for x in d.get("deltas", []):
        rel = os.path.relpath(x["path"], base)
        if x["error"]:
            problems.append(f"{rel}: {x['error']}")
        problems += [f"{rel}: page {y['page']}: {y['reason']}" for y in x["invalid"][:20]]
    if d.get("deltas"):
        out.append(f"{len(d['deltas'])} incremental deltas ({sum(x['pages'] for x in d['deltas'])} pages); "
                   "one file: innostream inspect NAME.delta")
    out.append(f"{len(d['tablespaces'])} tablespaces, {d['invalid_pages']} invalid pages, {d['errors']} unreadable")
    if problems:
        out.append("problems:")
        out += [f"  {p}" for p in problems]
    if notes:
        out.append("notes:")
        out += [f"  {p}" for p in notes]
    for r in d["redo"]:
        out.append(render_redo(r))
    return "\n".join(out)


def render_redo(r: dict[str, Any]) -> str:
    """Redo inspection results as ``key: value`` lines (whatever ``inspect_redo`` returned)."""
    lines = [f"redo:             {r.get('path')}"]
    for k, v in r.items():
        if k == "path":
            continue
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            lines.append(f"  {k}:")
            lines += ["    - " + ", ".join(f"{kk}={vv}" for kk, vv in x.items()) for x in v]
        else:
            lines.append(f"  {k}: {v}")
    return "\n".join(lines)


def render(result: dict[str, Any]) -> str:
    """Text form of any ``inspect_path`` result."""
    if result["kind"] == "datadir":
        return render_datadir(result)
    if result["kind"] == "redo":
        return "\n".join(render_redo(r) for r in result["redo"])
    if result["kind"] == "delta":
        return render_delta(result)
    return render_tablespace(result)


def result_ok(result: dict[str, Any]) -> bool:
    """True when no invalid page and no unreadable tablespace was found."""
    if result["kind"] == "datadir":
        return bool(result["invalid_pages"] == 0 and result["errors"] == 0)
    if result["kind"] == "tablespace":
        return bool(result["ok"])
    if result["kind"] == "delta":
        return not result["error"] and result["invalid_count"] == 0
    return not any("error" in r for r in result["redo"])
