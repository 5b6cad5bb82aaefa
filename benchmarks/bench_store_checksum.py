"""Cost of the activation store's read-time checks, measured in one run.

    .venv/bin/python benchmarks/bench_store_checksum.py --shards 32 --rows 64 --repeats 5

A store of SHARDS x ROWS images of the toy model's h shape (128, 8, 8) float16 is written to a
temp folder (page cache warm, as in training). Each repeat opens it afresh and reads every row
once in batches of 64, as the trainer's first epoch does, twice: with the first-read sha256
(`check_checksums=True`, the process-wide cache cleared first) and without (size checks only).
Repeats are interleaved; min and median seconds are reported, wall and process CPU, with the
ratio checked/unchecked of the first full pass. A second pass in the same process costs nothing
more: each shard is hashed once per process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from hsae.data import store as S
from hsae.data.store import ActivationStore
from hsae.data.store_writer import ActivationStoreWriter

SHAPE = (128, 8, 8)


def make_store(out: Path, shards: int, rows: int) -> int:
    n = shards * rows
    rng = np.random.default_rng(0)
    meta = {"model": {"model_id": "bench"}, "t": 0.7, "timestep": 700, "steps": 50}
    with ActivationStoreWriter.open(
        out, meta=meta, shape=SHAPE, shard_size=rows, ids=[str(i) for i in range(n)]
    ) as w:
        for i in w.pending_shards():
            a, b = w.shard_rows(i)
            w.write_shard(i, rng.standard_normal((b - a, *SHAPE)).astype(np.float32))
    return sum(f.stat().st_size for f in out.glob("shard-*.npy"))


def one_pass(path: Path, checked: bool) -> tuple[float, float]:
    """(wall, cpu) seconds to open the store and read every row once."""
    S._VERIFIED.clear()
    w0, c0 = time.perf_counter(), time.process_time()
    store = ActivationStore(path, check_checksums=checked)
    total = 0.0
    for h, _ in store.iter_batches(64):
        total += float(h[:, 0, 0, 0].sum())  # touch the rows, as a consumer would
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shards", type=int, default=32)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store"
        nbytes = make_store(path, args.shards, args.rows)
        one_pass(path, True)  # warm-up: page cache, imports
        times: dict[str, list[tuple[float, float]]] = {"checked": [], "unchecked": []}
        for r in range(args.repeats):
            order = ("checked", "unchecked") if r % 2 == 0 else ("unchecked", "checked")
            for name in order:
                times[name].append(one_pass(path, name == "checked"))
        S._VERIFIED.clear()
        store = ActivationStore(path)
        list(store.iter_batches(64))
        w0 = time.perf_counter()
        list(store.iter_batches(64))  # second pass: nothing left to hash
        second = time.perf_counter() - w0
    out = {"store_mb": nbytes / 2**20, "shards": args.shards, "rows": args.rows}
    for i, clock in enumerate(("wall", "cpu")):
        for name, ts in times.items():
            vals = [t[i] for t in ts]
            out[f"{name}_{clock}_min_s"] = min(vals)
            out[f"{name}_{clock}_median_s"] = statistics.median(vals)
        out[f"ratio_{clock}_min"] = out[f"checked_{clock}_min_s"] / out[f"unchecked_{clock}_min_s"]
        out[f"ratio_{clock}_median"] = (
            out[f"checked_{clock}_median_s"] / out[f"unchecked_{clock}_median_s"]
        )
    extra = out["checked_wall_min_s"] - out["unchecked_wall_min_s"]
    out["sha256_mb_per_s"] = out["store_mb"] / extra if extra > 0 else None
    out["second_pass_wall_s"] = second
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
