"""`hsae store verify STORE`: check every shard of an activation store against its manifest, and
name the temp files an interrupted write left in its folder (never read; `hsae extract` removes
them when it opens the store)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("store", help="inspect an activation store")
    ssub = p.add_subparsers(dest="store_command", required=True)
    v = ssub.add_parser("verify", help="check every shard's size and sha256 against the manifest")
    v.add_argument("store", type=Path, help="activation store folder (e.g. RUN/acts)")
    v.set_defaults(func=verify_command)


def verify_command(args: argparse.Namespace) -> int:
    from hsae.data.store import ActivationStore
    from hsae.utils.io import hidden_temps

    t0 = time.perf_counter()
    store = ActivationStore(args.store, allow_incomplete=True)
    n = store.verify()
    size = sum((store.path / s["file"]).stat().st_size for s in store.manifest["shards"])
    state = "complete" if store.complete else "incomplete: re-run its `hsae extract` to finish"
    print(
        f"activation store {store.path} ({state}): {n} shard(s), {size / 2**20:.1f} MB, every "
        f"sha256 matches the manifest ({time.perf_counter() - t0:.2f} s)"
    )
    leftovers = hidden_temps(store.path)
    if leftovers:
        names = ", ".join(p.name for p in leftovers[:3]) + (" ..." if len(leftovers) > 3 else "")
        print(
            f"  {len(leftovers)} leftover temp file(s) of an interrupted write, never read: "
            f"{names}; the next `hsae extract` into this store removes them"
        )
    return 0
