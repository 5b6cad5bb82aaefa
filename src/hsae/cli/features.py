"""`hsae features`: top SAE components, max-activating images, best component per attribute."""

from __future__ import annotations

import argparse
from pathlib import Path

from hsae.analysis.code_scan import (
    DEFAULT_BATCH,
    DEFAULT_CANDIDATES,
    DEFAULT_GRID_IMAGES,
    DEFAULT_TOP,
)
from hsae.analysis.features import (
    FEATURES_FILE,
    RANK_BY,
    TABLE_FILE,
    FeaturesConfig,
    format_features_table,
    run_features,
)
from hsae.cli.options import add_device_arguments, add_threshold_arguments
from hsae.utils.device import resolve_device


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="top SAE components, max-activating images, per attribute")
    p.add_argument("--store", type=Path, required=True, help="activation store folder")
    p.add_argument("--sae", type=Path, required=True, help="SAE checkpoint folder")
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default STORE/../features)"
    )
    p.add_argument("--data", type=Path, default=None, help="image folder of the store (for grids)")
    add_threshold_arguments(p)
    add_device_arguments(p)
    p.add_argument(
        "--split",
        choices=["train", "val", "test", "all"],
        default="all",
        help="images the top components are ranked on (default all)",
    )
    p.add_argument("--top", type=int, default=DEFAULT_TOP, help="number of top components")
    p.add_argument("--rank-by", choices=RANK_BY, default="mean", help="ranking of top components")
    p.add_argument(
        "--n-images",
        type=int,
        default=DEFAULT_GRID_IMAGES,
        help="max-activating images per component",
    )
    p.add_argument(
        "--candidates",
        type=int,
        default=DEFAULT_CANDIDATES,
        help="components per attribute whose exact AUROC is computed",
    )
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="images per batch")
    p.add_argument("--image-size", type=int, default=None, help="grid tile size (default: model's)")
    p.add_argument("--seed", type=int, default=0, help="train sample for --threshold-k auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = FeaturesConfig(
        threshold_k=args.threshold_k,
        target_sparsity=args.target_sparsity,
        split=args.split,
        n_top=args.top,
        n_grid=args.n_images,
        rank_by=args.rank_by,
        n_candidates=args.candidates,
        batch=args.batch,
        image_size=args.image_size,
        seed=args.seed,
        progress=not args.no_progress,
    )
    out = args.out or Path(args.store).parent / "features"
    doc = run_features(args.store, args.sae, out, args.data, cfg, resolve_device(args.device))
    print(format_features_table(doc), end="")
    print(f"wrote {out / FEATURES_FILE}, {out / TABLE_FILE}")
    return 0
