"""`hsae report`: a static HTML report of a run folder, checked in headless Chromium."""

from __future__ import annotations

import argparse
from pathlib import Path

from hsae.cli.options import add_threshold_arguments
from hsae.report.browser import browser_check
from hsae.report.build import SCREENSHOT_FILE, build_report


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="static HTML report of a run folder (RUN/report/index.html)")
    p.add_argument("run", type=Path, help="run folder (acts/, sae/, eval/, probe/, ...)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN/report)")
    p.add_argument(
        "--sparsity-images", type=int, default=512, help="test images for the histogram (0: skip)"
    )
    add_threshold_arguments(p)
    p.add_argument(
        "--check", action="store_true", help="open it in headless Chromium: broken images, shot"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hsae.sae.selection import parse_threshold_k

    k = parse_threshold_k(args.threshold_k)
    summary = build_report(args.run, args.out, args.sparsity_images, k, args.target_sparsity)
    print(f"wrote {summary['index']}")
    print(f"present: {', '.join(summary['present']) or '-'}")
    print(f"not run: {', '.join(summary['missing']) or '-'}")
    if not args.check:
        return 0
    index = Path(summary["index"])
    res = browser_check(index, index.parent / SCREENSHOT_FILE)
    print(
        f"browser check: {res['images']} images, {res['broken_images']} broken, "
        f"{res['unlabelled_images']} without a label, screenshot {res['screenshot']}"
    )
    ok = res["broken_images"] == 0 and res["unlabelled_images"] == 0
    return 0 if res["loaded"] and ok else 1
