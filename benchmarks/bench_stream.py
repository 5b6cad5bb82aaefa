"""Read throughput of the shuffled stream against a sequential `dd`-style read of the same files.

    .venv/bin/python benchmarks/bench_stream.py --rows 8192 --buffer-rows 1024 --repeats 5

Writes a store of random h (or reads --store), then alternates, after a warm-up pass of each:
"sequential", every shard file read front to back in 1 MiB `readinto` calls (what
`dd if=shard of=/dev/null bs=1M` does), and "stream", one pass of ShuffledStream yielding
shuffled batches. Reports MB/s of h delivered (min / median over repeats) and the ratio. Both
usually read from the page cache after the warm-up, so this measures the stream's own cost, not
the disk's.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hsae.data.store import ActivationStore
from hsae.data.store_writer import ActivationStoreWriter
from hsae.data.stream import ShuffledStream


def make_store(path: Path, rows: int, shape: tuple[int, int, int], shard: int) -> ActivationStore:
    ids = [f"{i:07d}" for i in range(rows)]
    w = ActivationStoreWriter.open(path, {"kind": "bench"}, shape, shard_size=shard, ids=ids)
    rng = np.random.default_rng(0)
    for i in w.pending_shards():
        a, b = w.shard_rows(i)
        w.write_shard(i, rng.standard_normal((b - a, *shape), dtype=np.float32))
    return ActivationStore(path)


def sequential(store: ActivationStore) -> int:
    buf = bytearray(2**20)
    total = 0
    for s in store.manifest["shards"]:
        with open(store.path / s["file"], "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return total


def stream(s: ShuffledStream) -> int:
    return sum(h.nbytes for h, _ in s)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", type=Path, default=None, help="an existing store (default: made)")
    p.add_argument("--rows", type=int, default=8192)
    p.add_argument("--shape", type=int, nargs=3, default=[128, 8, 8])
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--buffer-rows", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_stream_"))
    try:
        store = a.store and ActivationStore(a.store)
        store = store or make_store(tmp / "acts", a.rows, tuple(a.shape), a.shard_size)
        s = ShuffledStream(store, a.batch, a.buffer_rows)
        fns = {"sequential": lambda: sequential(store), "stream": lambda: stream(s)}
        for fn in fns.values():
            fn()
        mbps: dict[str, list[float]] = {k: [] for k in fns}
        for r in range(a.repeats):
            for name, fn in list(fns.items())[:: 1 if r % 2 == 0 else -1]:
                t0 = time.perf_counter()
                nbytes = fn()
                mbps[name].append(nbytes / (time.perf_counter() - t0) / 1e6)
        size = store.nbytes_on_disk() / 2**20
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"store {len(store)} rows x {store.shape[1:]} {store.dtype} ({size:.0f} MiB, "
        f"{len(store.manifest['shards'])} shards); buffer {a.buffer_rows} rows "
        f"({a.buffer_rows * s.row_bytes / 2**20:.1f} MiB), batch {a.batch}"
    )
    for name, v in mbps.items():
        print(f"  {name:10s} max {max(v):8.0f} MB/s   median {statistics.median(v):8.0f} MB/s")
    ratio = statistics.median(mbps["stream"]) / statistics.median(mbps["sequential"])
    print(f"  stream / sequential (medians): {ratio:.2f}")
    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")


if __name__ == "__main__":
    main()
