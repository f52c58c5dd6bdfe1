"""The seekable index (docs/FORMAT.md §10): built by the writer as frames go out, checked by the sequential reader.

The writer records, per member, runs of consecutive frames (a run absorbs other members' frames between two of its
own when the gap is small, so a member copied alongside others stays a few runs); the reader of a pipe, which sees
every frame, checks that the index says exactly what the stream holds, so an index that passed ``verify`` can be
trusted by a reader that seeks.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left
from collections.abc import Sequence

from innostream.archive.types import FileResult
from innostream.formats import archive as fa
from innostream.formats import archive_index as fi
from innostream.formats.errors import Corrupt, Where

#: another member's frames up to this many bytes between two frames of a member join them in one run: reading them
#: costs less than one more ranged GET
RUN_GAP = 64 << 10
_FILE_SEQ = struct.Struct("<4xB3xI12xQ")  # type, file_id, seq of a frame header
assert _FILE_SEQ.size == 32


class IndexBuilder:
    """Per member, runs of frames as ``array('Q')`` of (offset, length, first_seq, frames): 32 bytes per run."""

    def __init__(self, start: int) -> None:
        self.pos = start  # archive offset of the next frame
        self._runs: dict[int, array[int]] = {}

    def add(self, header: bytes, size: int) -> None:
        """A frame of ``size`` bytes (header and payload) was written at ``self.pos``."""
        ftype, file_id, seq = _FILE_SEQ.unpack_from(header)
        pos = self.pos
        self.pos = pos + size
        if not file_id or ftype not in (fa.FRAME_FILE_BEGIN, fa.FRAME_DATA, fa.FRAME_FILE_END):
            return
        runs = self._runs.get(file_id)
        if runs is None:
            self._runs[file_id] = array("Q", (pos, size, seq, 1))
        elif pos - (runs[-4] + runs[-3]) <= RUN_GAP:
            runs[-3] = pos + size - runs[-4]
            runs[-1] += 1
        else:
            runs.extend((pos, size, seq, 1))

    def build(self, files: Sequence[tuple[str, int, int, bytes]], cap: int = fa.MAX_TRAILER_LEN) -> bytes:
        """The raw INDEX payload for ``files`` = (name, mode, size, digest) in file-id order. An index over the
        frame cap (some two million runs) is coarsened: runs with growing gaps are joined until it fits."""
        gap = 0
        while True:
            members = [fi.Member(i, name, mode, size, digest, _runs(self._runs.get(i), gap))
                       for i, (name, mode, size, digest) in enumerate(files, 1)]
            names = sum(len(m.name.encode()) for m in members)
            runs = sum(len(m.runs) for m in members)
            if fi.index_size(len(members), runs, names) <= cap or runs <= len(members):
                return fi.build_index(members)
            gap = max(gap * 4, fa.CHUNK_SIZE)


def _runs(flat: array[int] | None, gap: int) -> list[fi.Run]:
    out: list[fi.Run] = []
    if flat is None:
        return out
    for i in range(0, len(flat), 4):
        offset, length, first_seq, frames = flat[i : i + 4]
        if out and offset - out[-1].end <= gap:
            last = out[-1]
            out[-1] = fi.Run(last.offset, offset + length - last.offset, last.first_seq, last.frames + frames)
        else:
            out.append(fi.Run(offset, length, first_seq, frames))
    return out


class FrameMap:
    """Where each frame of a stream began and whose it was (12 bytes a frame): what the sequential reader checks an
    index against."""

    def __init__(self) -> None:
        self.starts: array[int] = array("Q")
        self.file_ids: array[int] = array("I")

    def add(self, pos: int, file_id: int) -> None:
        self.starts.append(pos)
        self.file_ids.append(file_id)


def check_index(members: list[fi.Member], results: Sequence[FileResult], frames: FrameMap, index_pos: int,
                where: Where) -> None:
    """The index against the stream as read: the same members (names, modes, sizes, digests) and runs that start
    and end at frame boundaries before the index and hold exactly each member's frames.

    Raises:
        Corrupt: the first disagreement, naming the member.
    """
    if len(members) != len(results):
        raise Corrupt(f"the index lists {len(members)} members, the archive holds {len(results)}", where=where)
    starts, ids = frames.starts, frames.file_ids
    for m, r in zip(members, results, strict=True):
        if (m.name, m.mode, m.size, m.digest.hex()) != (r.name, r.mode, r.size, r.digest):
            raise Corrupt(f"the index entry of member {m.file_id} does not match the archive", where=where,
                          file=r.name)
        counted = 0
        for run in m.runs:
            first, end = run.first_seq, bisect_left(starts, run.end)
            if (first >= len(starts) or starts[first] != run.offset or end >= len(starts) or starts[end] != run.end
                    or run.end > index_pos):
                raise Corrupt(f"an index run of member {m.file_id} does not start and end at frame boundaries",
                              where=where, file=r.name)
            mine = ids[first:end].count(m.file_id)
            if mine != run.frames or ids[first] != m.file_id:
                raise Corrupt(f"an index run of member {m.file_id} counts {run.frames} of its frames, the archive "
                              f"has {mine} there", where=where, file=r.name)
            counted += mine
        if counted != r.data_frames + 2:
            raise Corrupt(f"the index places {counted} frames of member {m.file_id}, the archive has "
                          f"{r.data_frames + 2}", where=where, file=r.name)
