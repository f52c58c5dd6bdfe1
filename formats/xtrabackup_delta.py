"""Incremental backup files: ``<name>.delta`` (changed page images) and ``<name>.meta`` (their page size, space id).

Sources (formats only): MariaDB ``extra/mariabackup/write_filt.cc`` (``wf_incremental_*``: cluster writer),
``xtrabackup.cc`` (``xtrabackup_apply_delta``, ``xb_read_delta_metadata``, ``xb_write_delta_metadata``), the same
functions in Percona XtraBackup 8.0. Checked against real ``mariadb-backup`` 10.11 files (``fixtures/meta/``).

A ``.delta`` is a sequence of clusters of ``page_size // 4`` pages each: one header page then the data pages.
The header page starts with the magic ``"xtra"`` (more clusters follow) or ``"XTRA"`` (last cluster), then one
big-endian u32 page number per data page, then ``0xFFFFFFFF`` if the cluster is not full; the rest is zero.
Every cluster but the last is full, because the reader finds cluster k at page ``k * (page_size // 4)``.
``page_size`` here is the physical size (``zip_size`` for ROW_FORMAT=COMPRESSED).

Pure functions over bytes; no I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from construct import Array, Bytes, Int32ub, Struct
from innostream.formats.errors import BadMagic, Corrupt, FormatError, Truncated
from innostream.formats.fsp0fsp import SpaceInfo, guess_flavor, space_info
from innostream.formats.xtrabackup_meta import parse_key_values

#: write_filt.cc: header magic of a cluster that is followed by another one.
XB_DELTA_MAGIC = b"xtra"
#: write_filt.cc: header magic of the last cluster.
XB_DELTA_MAGIC_LAST = b"XTRA"
#: Ends the page-number list of a cluster that is not full.
XB_DELTA_TERMINATOR = 0xFFFFFFFF
#: Page numbers are BE32, so this one can never be a page number (FIL_NULL).
FIL_NULL = 0xFFFFFFFF
#: Physical page sizes InnoDB supports (1K/2K only as zip_size).
VALID_PAGE_SIZES = (1024, 2048, 4096, 8192, 16384, 32768, 65536)

DELTA_MAGIC = Struct("magic" / Bytes(4))
assert DELTA_MAGIC.sizeof() == len(XB_DELTA_MAGIC) == 4


def delta_header_struct(page_size: int) -> Struct:
    """The cluster header page as a construct spec: magic + (page_size/4 - 1) BE32 slots (page nos, terminator, 0)."""
    spec = Struct("magic" / Bytes(4), "slots" / Array(page_size // 4 - 1, Int32ub))
    assert spec.sizeof() == page_size
    return spec


def cluster_capacity(page_size: int) -> int:
    """Data pages in a full cluster: one header slot per page, minus the magic slot (4095 for 16 KiB)."""
    return page_size // 4 - 1


def _check_page_size(page_size: int) -> None:
    if page_size not in VALID_PAGE_SIZES:
        raise Corrupt(f"page size {page_size} is not a valid InnoDB page size")


_FAST_HEADERS: dict[int, struct.Struct] = {}


def _fast_header(page_size: int) -> struct.Struct:
    """The fast path for the header page: one precompiled ``struct.Struct`` per page size."""
    fast = _FAST_HEADERS.get(page_size)
    if fast is None:
        fast = _FAST_HEADERS[page_size] = struct.Struct(f">4s{page_size // 4 - 1}I")
        assert fast.size == page_size
    return fast


@dataclass(frozen=True)
class DeltaClusterHeader:
    """One parsed cluster header: whether it is the last cluster and the page numbers of its data pages."""

    last: bool
    page_nos: tuple[int, ...]


def parse_cluster_header(page: bytes | memoryview, page_size: int, *, file: str | None = None,
                         offset: int = 0) -> DeltaClusterHeader:
    """Parse one cluster header page (exactly ``page_size`` bytes).

    Raises:
        Truncated: fewer than page_size bytes.
        BadMagic: neither ``xtra`` nor ``XTRA``.
    """
    _check_page_size(page_size)
    if len(page) < page_size:
        raise Truncated(f"delta cluster header needs {page_size} bytes, got {len(page)}", file=file, offset=offset)
    magic, *slots = _fast_header(page_size).unpack_from(page, 0)
    if magic not in (XB_DELTA_MAGIC, XB_DELTA_MAGIC_LAST):
        raise BadMagic(f"delta cluster magic {magic!r}, expected {XB_DELTA_MAGIC!r} or {XB_DELTA_MAGIC_LAST!r}",
                       file=file, offset=offset)
    try:
        count = slots.index(XB_DELTA_TERMINATOR)
    except ValueError:
        count = len(slots)
    return DeltaClusterHeader(last=magic == XB_DELTA_MAGIC_LAST, page_nos=tuple(slots[:count]))


def check_cluster(header: DeltaClusterHeader, page_size: int, *, file: str | None = None, offset: int = 0) -> None:
    """Every cluster but the last is full: the reader finds cluster k at page ``k * (page_size // 4)``.

    Raises:
        Corrupt: ``header`` is not the last cluster and not full.
    """
    if not header.last and len(header.page_nos) != cluster_capacity(page_size):
        raise Corrupt(f"delta cluster with {len(header.page_nos)} pages is not the last, but not full",
                      file=file, offset=offset)


def build_cluster_header(page_nos: Iterable[int], page_size: int, *, last: bool) -> bytes:
    """Build one cluster header page; adds the terminator when the cluster is not full."""
    _check_page_size(page_size)
    nos = list(page_nos)
    capacity = cluster_capacity(page_size)
    if len(nos) > capacity:
        raise ValueError(f"{len(nos)} pages do not fit one cluster of {capacity}")
    if any(not 0 <= n < FIL_NULL for n in nos):
        raise ValueError("page numbers must be in [0, 0xFFFFFFFF)")
    slots = nos + ([XB_DELTA_TERMINATOR] if len(nos) < capacity else [])
    slots += [0] * (capacity - len(slots))
    return _fast_header(page_size).pack(XB_DELTA_MAGIC_LAST if last else XB_DELTA_MAGIC, *slots)


def iter_delta(
    data: bytes | memoryview, page_size: int, *, file: str | None = None
) -> Iterator[tuple[int, memoryview]]:
    """Yield ``(page_no, page_image)`` for every page of a whole ``.delta`` file, in file order.

    Raises:
        BadMagic: a cluster header has another magic.
        Truncated: the data ends inside a cluster, or before the ``XTRA`` cluster.
        Corrupt: a non-last cluster is not full, or bytes follow the last cluster.
    """
    _check_page_size(page_size)
    view = memoryview(data)
    offset = 0
    while True:
        header = parse_cluster_header(view[offset:offset + page_size], page_size, file=file, offset=offset)
        check_cluster(header, page_size, file=file, offset=offset)
        end = offset + page_size * (1 + len(header.page_nos))
        if len(view) < end:
            raise Truncated(f"delta cluster needs {end - offset} bytes, {len(view) - offset} left",
                            file=file, offset=offset)
        for i, page_no in enumerate(header.page_nos):
            start = offset + page_size * (1 + i)
            yield page_no, view[start:start + page_size]
        offset = end
        if header.last:
            if offset != len(view):
                raise Corrupt(f"{len(view) - offset} bytes after the last delta cluster", file=file, offset=offset)
            return


def build_delta(pages: Iterable[tuple[int, bytes]], page_size: int) -> bytes:
    """Build a whole ``.delta`` file from ``(page_no, image)`` pairs the way the writer lays it out.

    With no pages the file is a single ``XTRA`` header with the terminator (what mariadb-backup writes for an
    unchanged tablespace). A last cluster that is exactly full has no terminator.
    """
    _check_page_size(page_size)
    capacity = cluster_capacity(page_size)
    clusters: list[list[tuple[int, bytes]]] = [[]]
    for page_no, image in pages:
        if len(image) != page_size:
            raise ValueError(f"page {page_no}: image is {len(image)} bytes, not {page_size}")
        if len(clusters[-1]) == capacity:
            clusters.append([])
        clusters[-1].append((page_no, bytes(image)))
    out = bytearray()
    for i, cluster in enumerate(clusters):
        out += build_cluster_header((n for n, _ in cluster), page_size, last=i == len(clusters) - 1)
        for _, image in cluster:
            out += image
    return bytes(out)


# --- .meta --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeltaMeta:
    """``<name>.meta``: the delta's page sizes and tablespace id (and, from PXB 8.0, the tablespace flags)."""

    page_size: int
    zip_size: int = 0
    space_id: int | None = None
    space_flags: int | None = None

    @property
    def physical_page_size(self) -> int:
        """The size of each page image in the .delta (MariaDB's reader: ``zip_size ? zip_size : page_size``)."""
        return self.zip_size or self.page_size


def parse_meta(data: bytes, *, file: str | None = None) -> DeltaMeta:
    """Parse a ``.meta`` file; page_size is required, space_id optional (pre-2.0.1 backups), as in the readers."""
    values = parse_key_values(data, file=file)

    def number(key: str) -> int | None:
        if key not in values:
            return None
        text = values[key].strip()
        if not text.isdigit():
            raise Corrupt(f"{key} = {values[key]!r} is not a number", file=file)
        return int(text)

    page_size = number("page_size")
    if page_size is None:
        raise Corrupt("required key 'page_size' missing", file=file)
    meta = DeltaMeta(page_size=page_size, zip_size=number("zip_size") or 0, space_id=number("space_id"),
                     space_flags=number("space_flags"))
    _check_page_size(meta.physical_page_size)
    return meta


def build_meta(meta: DeltaMeta, flavor: str) -> bytes:
    """Write a ``.meta`` as the flavour's tool does (MariaDB keeps the stray blank after the zip_size value)."""
    if meta.space_id is None:
        raise ValueError("space_id is required when writing a .meta")
    if flavor == "mariadb":
        return f"page_size = {meta.page_size}\nzip_size = {meta.zip_size} \nspace_id = {meta.space_id}\n".encode()
    if flavor == "mysql":
        flags = meta.space_flags if meta.space_flags is not None else 0
        return (f"page_size = {meta.page_size}\nzip_size = {meta.zip_size}\nspace_id = {meta.space_id}\n"
                f"space_flags = {flags}\n").encode()
    raise ValueError(f"unknown flavor {flavor!r}")


def delta_space_infos(meta: DeltaMeta, flavor: str | None, page0: bytes | None) -> list[SpaceInfo]:
    """What to validate a delta's pages as: page 0 if the delta carries it, else what the .meta says (MySQL's has
    the flags; MariaDB's only the sizes, so both of its checksum formats are returned, and a page valid in either
    is valid). Without ``flavor``, a .meta with ``space_flags`` is MySQL's (PXB 8.0 writes it, mariadb-backup not)."""
    fl = flavor or ("mysql" if meta.space_flags is not None else "mariadb")
    if page0 is not None:
        try:
            return [space_info(page0, guess_flavor(page0) or fl)]
        except FormatError:
            pass
    ps = meta.physical_page_size
    logical = meta.page_size if not meta.zip_size else max(meta.page_size, 16384)
    flags = meta.space_flags or 0
    return [SpaceInfo(space_id=meta.space_id or 0, flags=flags, flavor=fl, logical_page_size=logical,
                      physical_page_size=ps, full_crc32=full, page_compressed=False, encrypted=False)
            for full in ((False,) if fl == "mysql" else (True, False))]
