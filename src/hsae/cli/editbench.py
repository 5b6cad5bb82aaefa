"""`hsae editbench`: the fair attribute-edit benchmark (see `hsae.editing.bench`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hsae.cli.options import add_device_arguments
from hsae.editing.bench import DEFAULT_SIZES, BenchInputs, EditBenchConfig, run_editbench
from hsae.editing.bench_cache import BenchCache
from hsae.editing.bench_metrics import toyfaces_masks
from hsae.editing.bench_report import BENCH_FILE, CURVES_DIR, TABLE_FILE, write_editbench
from hsae.editing.intervene import parse_edit_steps
from hsae.editing.runner import DiffusionRunner
from hsae.editing.units import EDIT_MODES

H_CHECK_TOL = 0.05  # relative error allowed between re-captured h_t and the (float16) store


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "editbench",
        help="attribute-edit benchmark: SAE features vs PCA, the mean difference and a control",
    )
    p.add_argument("--store", type=Path, required=True, help="activation store folder")
    p.add_argument(
        "--sae",
        type=Path,
        nargs="+",
        required=True,
        metavar="[NAME=]FOLDER",
        help="SAE checkpoint folder(s), optionally named NAME=FOLDER",
    )
    p.add_argument("--data", type=Path, required=True, help="image folder the store came from")
    p.add_argument("--out", type=Path, default=None, help="default STORE/../editbench")
    p.add_argument("--model", default=None, help="diffusion model (default: the store's)")
    p.add_argument("--attributes", nargs="+", default=None, help="default: all labelled ones")
    p.add_argument("--n-test", type=int, default=200, help="held-out test images (default 200)")
    p.add_argument("--n-val", type=int, default=64, help="validation images (matched size)")
    p.add_argument("--n-stats", type=int, default=2000, help="train images for the statistics")
    p.add_argument(
        "--sizes",
        type=float,
        nargs="+",
        default=list(DEFAULT_SIZES),
        help="edit sizes ‖h̃−h‖/‖h‖, applied as ±size (default %(default)s)",
    )
    p.add_argument(
        "--windows",
        type=parse_edit_steps,
        nargs="+",
        default=["all"],
        help="edited resumed steps: 1 (the paper), N, all; the last one is the main one",
    )
    p.add_argument("--mode", choices=EDIT_MODES, default="error_preserving")
    p.add_argument("--candidates", type=int, default=8, help="AUROC candidates per family")
    p.add_argument("--effect-images", type=int, default=16, help="validation images for effect")
    p.add_argument("--effect-size", type=float, default=0.5, help="edit size of the effect test")
    p.add_argument(
        "--top-channels", type=int, default=16, help="channels of a latent@N feature (0: none)"
    )
    p.add_argument(
        "--top-positions",
        type=int,
        default=None,
        help="spatial-token SAEs: also each latent on its N most active positions (its support)",
    )
    p.add_argument("--pca-components", type=int, default=64)
    p.add_argument(
        "--components",
        choices=["all", "channel", "none"],
        default="all",
        help="single-component features of every SAE, of channel-token SAEs only, or none",
    )
    p.add_argument("--no-components", action="store_true", help="same as --components none")
    p.add_argument(
        "--max-group",
        type=int,
        default=None,
        help="test/validation images per add or remove group (default: all of them)",
    )
    p.add_argument(
        "--test-sizes",
        choices=["swept", "matched", "validated"],
        default="swept",
        help="on test: every --sizes value; or only the sizes chosen on validation, with "
        "(matched) or without (validated) the largest size in the main window",
    )
    p.add_argument(
        "--side-windows",
        choices=["all", "selected"],
        default="all",
        help="windows before the last: every feature, or each family's effect-selected one",
    )
    p.add_argument("--min-keep", type=float, default=0.95, help="others kept for matched size")
    p.add_argument("--n-examples", type=int, default=4, help="example images per direction")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the store's)")
    p.add_argument("--t", type=float, default=None, help="edit timestep fraction (store's)")
    p.add_argument("--batch", type=int, default=64, help="images per inversion / resume chunk")
    p.add_argument("--seed", type=int, default=0)
    add_device_arguments(p)
    p.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="use a store still being extracted: statistics from its written train rows; "
        "validation and test images are inverted from --data anyway",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def parse_saes(specs: list[Path]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for spec in specs:
        text = str(spec)
        name, _, folder = text.partition("=") if "=" in text else ("", "", text)
        path = Path(folder)
        name = name or path.name
        if name in out:
            raise ValueError(f"--sae: two SAEs named {name!r}; name them NAME=FOLDER")
        out[name] = path
    return out


def config_from(args: argparse.Namespace) -> EditBenchConfig:
    cfg = EditBenchConfig(
        attributes=args.attributes,
        n_test=args.n_test,
        n_val=args.n_val,
        n_stats=args.n_stats,
        sizes=tuple(args.sizes),
        windows=tuple(args.windows),
        mode=args.mode,
        n_candidates=args.candidates,
        effect_images=args.effect_images,
        effect_size=args.effect_size,
        top_channels=args.top_channels or None,
        top_positions=args.top_positions or None,
        pca_components=args.pca_components,
        min_keep=args.min_keep,
        components=False if args.no_components or args.components == "none" else args.components,
        max_group=args.max_group,
        test_sizes=args.test_sizes,
        side_windows=args.side_windows,
        n_examples=args.n_examples,
        batch=args.batch,
        seed=args.seed,
        progress=not args.no_progress,
    )
    cfg.check()
    return cfg


def load_inputs(args: argparse.Namespace, cfg: EditBenchConfig) -> BenchInputs:
    """Store, SAEs, committed classifier, backbone runner and image loader for the CLI."""
    from hsae.analysis.features import load_rows_images
    from hsae.data.extract import fast_path
    from hsae.data.store import ActivationStore
    from hsae.diffusion.backbone import DiffusionBackbone
    from hsae.sae.selection import load_checked
    from hsae.toy.classifier import load_default

    store = ActivationStore(args.store, allow_incomplete=args.allow_incomplete)
    saes = {n: load_checked(p, store).eval() for n, p in parse_saes(args.sae).items()}
    data = Path(args.data)
    if not data.is_dir():
        raise FileNotFoundError(f"--data {data} is not a folder (expected the store's images)")
    meta = store.meta
    model = args.model or _store_model(meta) or "toy"
    backbone = DiffusionBackbone.load(model, dtype=args.dtype, device=args.device)
    fast_path(backbone)  # channels_last where measured faster (hsae.data.extract)
    for s in saes.values():
        s.to(backbone.device)
    classifier = load_default(backbone.device)
    size = backbone.image_size
    if classifier.cfg.image_size != size:
        raise ValueError(
            f"the classifier judges {classifier.cfg.image_size}px images, model {model!r} makes "
            f"{size}px ones"
        )
    t = args.t if args.t is not None else float(meta.get("t", 0.7))
    steps = args.steps if args.steps is not None else int(meta.get("steps", 50))
    runner = DiffusionRunner(backbone, t, steps, meta.get("prompt", ""), cfg.batch, cfg.progress)
    same_run = t == meta.get("t") and steps == meta.get("steps") and model == _store_model(meta)
    return BenchInputs(
        store=store,
        saes=saes,
        classifier=classifier,
        runner=runner,
        load_images=lambda rows: load_rows_images(store, data, rows, size),
        masks=lambda ids, attr: toyfaces_masks(data, ids, attr, size),
        check_h=store_h_check(store) if same_run else None,
        cache_dir=bench_out(args),
    )


def bench_out(args: argparse.Namespace) -> Path:
    return Path(args.out or Path(args.store).parent / "editbench")


def _store_model(meta: dict[str, Any]) -> str | None:
    return (meta.get("model") or {}).get("model_id")


def store_h_check(store: Any) -> Callable[[np.ndarray, Tensor], None]:
    """A check that re-captured h_t of store rows matches the store (right --data, model, t)."""

    def check(rows: np.ndarray, h: Tensor) -> None:
        have = np.isin(rows, store.available_indices())
        if not have.any():
            return  # rows not extracted yet (an incomplete store): nothing to compare with
        ref = torch.from_numpy(np.asarray(store[rows[have]], dtype=np.float32))
        h = h[torch.as_tensor(have)]
        err = float((h.float() - ref).norm() / ref.norm().clamp_min(1e-12))
        if err > H_CHECK_TOL:
            raise ValueError(
                f"--data images do not reproduce the h_t of store {store.path} (relative error "
                f"{err:.3g}): pass the image folder, model, t and steps it was extracted with"
            )

    return check


def run(args: argparse.Namespace) -> int:
    from hsae.editing.bench_report import format_table

    cfg = config_from(args)
    inputs = load_inputs(args, cfg)
    doc = run_editbench(inputs, cfg)
    runner = inputs.runner
    model = runner.backbone.model_id if isinstance(runner, DiffusionRunner) else None
    doc["settings"].update(model=model, data=str(args.data))
    out = bench_out(args)
    doc = write_editbench(out, doc)
    BenchCache(out, "").clear()  # the outputs are written: the resumable parts are not needed
    print(format_table(doc), end="")
    print(f"wrote {out / BENCH_FILE}, {out / TABLE_FILE}, {out / CURVES_DIR}/*.png")
    return 0
