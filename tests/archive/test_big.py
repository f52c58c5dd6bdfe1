"""A stream of several GB produced lazily, through a real pipe into the real CLI (`slow`, but it runs in CI)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.archive.builders import PY, REPO

GB = float(os.environ.get("INNOSTREAM_BIG_GB", "5"))

GENERATOR = r'''
import hashlib, json, random, sys, threading
from innostream.archive import ArchiveWriter
size, nfiles, out_json = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rnd = random.Random(42)
PAGE = 16384
# a pool of "real-ish" pages: half random bytes, half repetitive rows; every 8th page all zero (a hole)
pool = [rnd.randbytes(PAGE // 2) + (b"row-%05d|" % i) * (PAGE // 2 // 10) + bytes(PAGE // 2 % 10) for i in range(64)]
w = ArchiveWriter(sys.stdout.buffer, meta={"flavor": "mariadb"}, threads=2)
digests = {}
def copy(n):
    name = f"db/big{n}.ibd"
    fid = w.begin_file(name)
    sha = hashlib.sha256()
    block_pages = 256
    for blk in range(size // (PAGE * block_pages)):
        pages = []
        for j in range(block_pages):
            no = blk * block_pages + j
            pages.append(bytes(PAGE) if no % 8 == 7 else no.to_bytes(8, "big") + pool[(no * 7 + n) % 64][8:])
        data = b"".join(pages)
        sha.update(data)
        w.write(fid, blk * PAGE * block_pages, data)
    w.end_file(fid, size)
    digests[name] = sha.hexdigest()
threads = [threading.Thread(target=copy, args=(n,)) for n in range(nfiles)]
[t.start() for t in threads]; [t.join() for t in threads]
w.add_bytes("xtrabackup_checkpoints", b"backup_type = full-backuped\n")
w.close({"from_lsn": 1, "to_lsn": 2})
json.dump(digests, open(out_json, "w"))
'''


@pytest.mark.slow
def test_several_gb_through_a_pipe(tmp_path: Path):
    nfiles = 3
    size = int(GB * (1 << 30)) // nfiles // (1 << 22) * (1 << 22)
    digests = tmp_path / "digests.json"
    target = tmp_path / "t"
    cmd = (f"cd {REPO} && {PY} -c '{GENERATOR}' {size} {nfiles} {digests} | "
           f"{PY} -m innostream extract -C {target} --parallel 2")
    t0 = time.perf_counter()
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, timeout=900)
    elapsed = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    expected = json.loads(digests.read_text())
    assert len(expected) == nfiles
    for name, digest in expected.items():
        path = target / name
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(8 << 20):
                h.update(block)
        assert h.hexdigest() == digest, name
        st = path.stat()
        assert st.st_size == size
        assert st.st_blocks * 512 < size * 15 // 16  # 1 page in 8 is a hole
        path.unlink()
    assert (target / "xtrabackup_checkpoints").read_bytes() == b"backup_type = full-backuped\n"
    mb = nfiles * size / 1e6
    print(f"{mb:.0f} MB through the pipe in {elapsed:.1f} s = {mb / elapsed:.0f} MB/s")
