"""`hsae probe`: Table 1, linear attribute probes on SAE codes and baselines."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from hsae.analysis.probe import PROBE_FILE, TABLE_FILE, format_table, run_probe, write_outputs
from hsae.cli.options import add_device_arguments, add_threshold_arguments
from hsae.utils.device import resolve_device


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="Table 1: linear attribute probes on SAE codes and baselines")
    p.add_argument("--store", type=Path, required=True, help="activation store with attributes")
    p.add_argument("--sae", type=Path, required=True, help="SAE checkpoint folder")
    p.add_argument("--flat-sae", type=Path, default=None, help="flat SAE folder (extra column)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default STORE/../probe)")
    p.add_argument("--n-components", type=int, default=512, help="features per method (512)")
    add_threshold_arguments(p)
    add_device_arguments(p)
    p.add_argument("--test-split", choices=["test", "val"], default="test")
    p.add_argument("--C", dest="inv_reg", type=float, default=1.0, help="inverse L2 strength")
    p.add_argument("--max-iter", type=int, default=1000, help="logistic regression iterations")
    p.add_argument("--batch", type=int, default=64, help="images per batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blas-threads", type=int, default=1, help="BLAS threads of the probes (1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hsae.data.store import ActivationStore
    from hsae.sae.selection import parse_threshold_k

    store = ActivationStore(args.store)
    k = parse_threshold_k(args.threshold_k)
    doc = run_probe(
        store,
        args.sae,
        args.flat_sae,
        n_components=args.n_components,
        threshold_k=k,
        target=args.target_sparsity,
        seed=args.seed,
        batch=args.batch,
        inv_reg=args.inv_reg,
        max_iter=args.max_iter,
        test_split=args.test_split,
        blas_threads=args.blas_threads,
        device=resolve_device(args.device),
    )
    settings = {
        key: str(v) if isinstance(v, Path) else v for key, v in vars(args).items() if key != "func"
    }
    doc = {"command": shlex.join(sys.argv), "settings": settings, **doc}
    out = args.out or Path(args.store).parent / "probe"
    write_outputs(out, doc)
    print(format_table(doc), end="")
    print(f"wrote {out / PROBE_FILE}, {out / TABLE_FILE}")
    return 0
