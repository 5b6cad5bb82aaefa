"""`hsae table2`: paper Table 2 on the toy model, every SAE and baseline (resumable)."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path


def run_hsae(argv: list[str]) -> None:
    """Run `hsae ARGV` in a fresh Python: each SAE trains from a clean process state, as when
    the commands are typed one by one; a failing command stops the protocol."""
    print("+ hsae " + " ".join(argv), flush=True)
    subprocess.run([sys.executable, "-m", "hsae.cli", *argv], check=True)


def _add_table2(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "table2",
        help="paper Table 2 on the toy model: every SAE and baseline, test and OOD (resumable)",
        description="Extract train/test/OOD stores, train the SAE sweep, fit PCA and random "
        "baselines, evaluate them in distribution and on shifted toyfaces, and write "
        "OUT/table2.md. Every stage is skipped when its output exists, so a stopped run resumes.",
    )
    p.add_argument("--data", type=Path, default=Path("data/toyfaces"))
    p.add_argument("--ood-data", type=Path, default=Path("data/toyfaces-shifted"))
    p.add_argument("--out", type=Path, default=Path("runs/table2"))
    p.add_argument("--n", type=int, default=1536, help="train images of --data to extract")
    p.add_argument("--n-test", type=int, default=256, help="test images of --data to extract")
    p.add_argument("--n-ood", type=int, default=384, help="images of --ood-data to extract")
    p.add_argument("--steps", type=int, default=2000, help="training steps per SAE")
    p.add_argument("--spliced", type=int, default=16, help="images for spliced fidelity")
    p.set_defaults(func=_cmd_table2)


def _cmd_table2(args: argparse.Namespace) -> int:
    from hsae.analysis.table2 import Table2Config, run_table2

    cfg = Table2Config(
        data=args.data,
        ood_data=args.ood_data,
        out=args.out,
        n=args.n,
        n_test=args.n_test,
        n_ood=args.n_ood,
        steps=args.steps,
        spliced=args.spliced,
    )
    try:
        path = run_table2(cfg, run_hsae)
    except subprocess.CalledProcessError as e:
        failed = shlex.join(e.cmd[3:])
        print(f"hsae table2: stopped: `hsae {failed}` exited {e.returncode}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    _add_table2(sub)
