"""PXB's ``xtrabackup_logfile`` (MySQL 8.0.30+ redo copy) and the ``#innodb_redo/#ib_redo0`` prepare makes of it.

Sources (formats only): Percona XtraBackup ``storage/innobase/xtrabackup/src/xtrabackup.cc``
(``xtrabackup_init_temp_log``, ``update_log_temp_checkpoint``) and ``redo_log.cc``; innodb-formats.md §6.3.
The copy keeps the server's 512-byte block format: the 2048-byte header of the server redo file that held the
start checkpoint, then the blocks from ``align_down(checkpoint, 512)``. Block and header parsing is
:mod:`formats.log0files_io`'s.

Pure functions over bytes; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from innostream.formats import log0files_io as lf
from innostream.formats.errors import Corrupt, Truncated, UnsupportedVersion

#: PXB pads the prepared redo file to 64 KiB steps, grows it by 1/8 and keeps at least 8 MiB (128 x 64 KiB).
REDO_PAD_UNIT = 64 * 1024
REDO_MIN_SIZE = 128 * REDO_PAD_UNIT
MYSQL_REDO_DIR = lf.LOG_DIRECTORY_NAME
MYSQL_PREPARED_REDO = lf.LOG_FILE_BASE_NAME + "0"
XTRABACKUP_LOGFILE = "xtrabackup_logfile"
LOG_HEADER_FLAG_FILE_FULL = int(lf.LogHeaderFlags.FILE_FULL)


@dataclass(frozen=True)
class MysqlRedoStart:
    """Where recovery of a ``xtrabackup_logfile`` starts, and the 2048-byte header ``#ib_redo0`` gets."""

    header: bytes
    start_lsn: int  # LSN of the first block (file offset 2048)
    checkpoint_lsn: int


def mysql_redo_start(head: bytes, *, creator: str | None = None) -> MysqlRedoStart:
    """From the first 2560 bytes of ``xtrabackup_logfile`` (header + first block), the header of the prepared
    ``#ib_redo0``: start LSN = the first block's, both checkpoints = the start checkpoint, CRC-32C recomputed,
    FILE_FULL cleared (PXB ``xtrabackup_init_temp_log``).

    Raises:
        Truncated: shorter than the 2048-byte header.
        UnsupportedVersion: the header's format is not 6 (8.0.30+).
        Corrupt: no block, no checkpoint block with a good checksum, or no usable start checkpoint.
    """
    file = XTRABACKUP_LOGFILE
    block_size = lf.OS_FILE_LOG_BLOCK_SIZE
    if len(head) < lf.LOG_FILE_HDR_SIZE:
        raise Truncated(f"redo copy is {len(head)} bytes, shorter than its {lf.LOG_FILE_HDR_SIZE}-byte header",
                        file=file)
    # PXB overwrites the creator after computing the header checksum, so it is not checked here.
    hdr = lf.parse_file_header(head[:block_size], verify_checksum=False)
    if hdr.format != lf.LogFormat.VERSION_8_0_30:
        raise UnsupportedVersion(f"redo log format {hdr.format}, expected {int(lf.LogFormat.VERSION_8_0_30)} "
                                 "(MySQL 8.0.30+)", file=file, offset=lf.LOG_HEADER_FORMAT)
    if len(head) < lf.LOG_FILE_HDR_SIZE + block_size:
        raise Corrupt("the redo copy holds no log block", file=file, offset=lf.LOG_FILE_HDR_SIZE)
    # The first copied block says which LSN it holds (hdr_no and epoch_no are both derived from it).
    first = lf.parse_block_header(head, lf.LOG_FILE_HDR_SIZE)
    start = lf.block_claimed_lsn(first.hdr_no, first.epoch_no)
    cps = [c.lsn for c in lf.checkpoints(head[:lf.LOG_FILE_HDR_SIZE]) if c is not None]
    if not cps:
        raise Corrupt("no checkpoint block with a valid checksum in the redo copy", file=file,
                      offset=lf.LOG_CHECKPOINT_1)
    # PXB writes the checkpoint of the backup start into both blocks, and the copy starts at its block. A header
    # taken unchanged from the server file may instead name a later checkpoint, one made while the data files were
    # copied: recovering from there would skip changes the copied pages lack. Then start at the first mini-
    # transaction of the first block instead: that is at or before the real start checkpoint, and applying redo
    # to pages that already have it is a no-op.
    in_first_block = [c for c in cps if lf.align_down(c) == start]
    if in_first_block:
        checkpoint = max(in_first_block)
    elif first.first_rec_group >= lf.LOG_BLOCK_HDR_SIZE:
        checkpoint = start + first.first_rec_group
    else:
        raise Corrupt(f"the redo copy starts at LSN {start} but its checkpoint is {max(cps)}, and no "
                      "mini-transaction starts in the first block", file=file, lsn=max(cps))
    name = creator if creator is not None else hdr.creator
    header = (
        lf.build_file_header(start, name[:31], hdr.log_uuid, hdr.flags & ~LOG_HEADER_FLAG_FILE_FULL, hdr.format)
        + lf.build_checkpoint_block(checkpoint)
        + bytes(head[lf.LOG_ENCRYPTION:lf.LOG_ENCRYPTION + block_size])
        + lf.build_checkpoint_block(checkpoint)
    )
    assert len(header) == lf.LOG_FILE_HDR_SIZE
    return MysqlRedoStart(header, start, checkpoint)


def scan_mysql_blocks(buf: bytes | memoryview, lsn: int) -> tuple[int, int | None, bool]:
    """Validate consecutive 512-byte blocks of ``buf`` (the first at LSN ``lsn``) as recovery does
    (``log_block_is_valid``). Returns ``(bytes of valid blocks, LSN after the last redo byte or None, stopped)``;
    ``stopped`` means the log ends in this buffer (a bad block, or one that is not full)."""
    block_size = lf.OS_FILE_LOG_BLOCK_SIZE
    n = 0
    end = None
    while n + block_size <= len(buf):
        status, data_len = lf.check_block(buf, lsn + n, n)
        if status is not lf.BlockStatus.VALID:
            return n, end, True
        end = lsn + n + data_len
        n += block_size
        if data_len < block_size:
            return n, end, True
    return n, end, n < len(buf)


def mysql_redo_file_size(data_size: int, page_size: int = 16384) -> int:
    """Size for ``#ib_redo0`` holding ``data_size`` bytes: PXB pads to 64 KiB steps, adds 1/8 and keeps at least
    8 MiB; MySQL wants a multiple of the page size (``log_check_file``)."""
    size = -(-data_size // REDO_PAD_UNIT) * REDO_PAD_UNIT
    size = max(size + size // 8, REDO_MIN_SIZE)
    unit = max(REDO_PAD_UNIT, page_size)
    return -(-size // unit) * unit


@dataclass(frozen=True)
class MysqlRedoPlan:
    """What :func:`build_mysql_prepare_redo` found in ``xtrabackup_logfile`` and the file it made of it."""

    checkpoint_lsn: int
    start_lsn: int
    end_lsn: int  # LSN after the last valid byte of redo in the copy
    data: bytes  # header + blocks, to be zero-padded to ``file_size``
    file_size: int


def build_mysql_prepare_redo(logfile: bytes, *, page_size: int = 16384, creator: str | None = None) -> MysqlRedoPlan:
    """The whole ``#ib_redo0`` for the bytes of a ``xtrabackup_logfile`` (in memory; prepare streams the same
    steps over the file).

    Raises:
        Truncated, UnsupportedVersion, Corrupt: as :func:`mysql_redo_start`; Corrupt also if no valid block
        holds the checkpoint.
    """
    head = mysql_redo_start(logfile[:lf.LOG_FILE_HDR_SIZE + lf.OS_FILE_LOG_BLOCK_SIZE], creator=creator)
    n, end, _stopped = scan_mysql_blocks(memoryview(logfile)[lf.LOG_FILE_HDR_SIZE:], head.start_lsn)
    if end is None or end < head.checkpoint_lsn:
        raise Corrupt(f"the redo copy has no valid block at the checkpoint LSN {head.checkpoint_lsn}",
                      file=XTRABACKUP_LOGFILE, offset=lf.LOG_FILE_HDR_SIZE, lsn=head.checkpoint_lsn)
    data = head.header + logfile[lf.LOG_FILE_HDR_SIZE:lf.LOG_FILE_HDR_SIZE + n]
    return MysqlRedoPlan(head.checkpoint_lsn, head.start_lsn, end, data, mysql_redo_file_size(len(data), page_size))
