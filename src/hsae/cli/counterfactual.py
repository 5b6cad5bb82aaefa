"""`hsae counterfactual`: counterfactual consistency of an edit (§4.6.1)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from hsae.cli.options import add_setup_arguments
from hsae.editing import counterfactual as counterfactual_stage
from hsae.editing.counterfactual import (
    format_table,
    load_inputs,
    mean_metrics,
    merge_metrics,
    method_metrics,
    prepare_baselines,
    run_batch,
)
from hsae.editing.intervene import parse_component
from hsae.editing.setup import load_setup
from hsae.utils.metrics import image_metrics


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "counterfactual",
        help="edit with κ, re-invert, undo with 1/κ: how well SAE edits invert (§4.6.1)",
        description=counterfactual_stage.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--component", action="extend", nargs="+", required=True, metavar="C:J|k")
    p.add_argument("--kappa", type=float, required=True, help="edit factor (undone by 1/κ)")
    p.add_argument("--image", type=Path, action="extend", nargs="+", default=None)
    p.add_argument("--data", type=Path, default=None, help="image folder (CelebA layout or plain)")
    p.add_argument("--split", choices=["train", "val", "test", "all"], default="test")
    p.add_argument("--n", type=int, default=8, help="images from --data (default 8)")
    p.add_argument("--batch", type=int, default=8, help="images per batch")
    p.add_argument("--attribute", default=None, help="add the mean-difference baseline for it")
    p.add_argument("--baseline-scale", type=float, default=1.0, help="s of the h ± s·d baseline")
    p.add_argument("--edit-prompt", default=None, help="text baseline (conditional models)")
    add_setup_arguments(p)
    p.add_argument("--out", type=Path, default=Path("runs/counterfactual"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hsae.utils.io import atomic_write_json, atomic_write_text
    from hsae.utils.jsonable import jsonable
    from hsae.utils.viz import save_grid

    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if args.kappa == 0 or not math.isfinite(args.kappa):
        raise ValueError(f"--kappa must be finite and non-zero (undone by 1/κ), got {args.kappa}")
    setup = load_setup(args)
    comps = [parse_component(c, setup.sae) for c in dict.fromkeys(args.component)]
    base = prepare_baselines(args, setup)
    images, names = load_inputs(args, setup.backbone.image_size)
    per: dict[str, Any] = {}
    grid_rows: list[Tensor] = []
    starts = range(0, len(images), args.batch)
    for s in tqdm(starts, desc="counterfactual", disable=not setup.progress, leave=False):
        x = images[s : s + args.batch]
        x_rec, methods = run_batch(args, setup, x, comps, base)
        per_method = {name: method_metrics(x, x_rec, cf) for name, cf in methods.items()}
        merge_metrics(per, {"rec_vs_input": image_metrics(x_rec, x), "methods": per_method})
        cols = [x, x_rec] + [t for cf in methods.values() for t in (cf.edited, cf.restored)]
        grid_rows += [torch.stack([c[i] for c in cols]) for i in range(len(x))]
    save_grid(grid_rows, args.out / "grid.png")
    doc = {
        **setup.settings(),
        "sae": str(args.sae),
        "components": [str(c) for c in comps],
        "kappa": args.kappa,
        "mode": args.mode,
        "window": args.window,
        "images": names,
        "grid_columns": ["input", "invert→resume"]
        + [f"{m} {w}" for m in per["methods"] for w in ("edited", "restored")],
        "mean": mean_metrics(per),
        "per_image": per,
        "paths": {"grid": "grid.png", "table": "table.md"},
    }
    atomic_write_json(args.out / "counterfactual.json", jsonable(doc))
    atomic_write_text(args.out / "table.md", format_table(doc))
    print(format_table(doc), end="")
    print(f"wrote {args.out / 'counterfactual.json'}, {args.out / 'table.md'}, grid.png")
    return 0
