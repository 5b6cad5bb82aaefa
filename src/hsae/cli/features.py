"""`hsae features`: top SAE components, max-activating images, best component per attribute;
with --atlas also the feature atlas (what the top latents write, `hsae.editing.atlas`)."""

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
from hsae.editing.atlas import RANKS, AtlasConfig, AtlasInputs, run_atlas
from hsae.editing.atlas_write import ATLAS_DIR, ATLAS_FILE, format_atlas, write_atlas
from hsae.editing.intervene import parse_edit_steps
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
    add_atlas_arguments(p)
    p.set_defaults(func=run)


def add_atlas_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("feature atlas (hsae.editing.atlas; needs --data and the model)")
    g.add_argument(
        "--atlas",
        action="store_true",
        help="also edit the top latents on validation images: what each writes (atlas.json)",
    )
    g.add_argument("--atlas-latents", type=int, default=16, help="latents in the atlas")
    g.add_argument("--atlas-images", type=int, default=32, help="validation images edited")
    g.add_argument(
        "--atlas-size",
        type=float,
        default=0.5,
        help="edit size ‖h̃−h‖/‖h‖ applied as ±size; the cards also show 2·size (default 0.5)",
    )
    g.add_argument(
        "--atlas-rank",
        choices=RANKS,
        default="auroc",
        help="auroc: attributes take turns adding their best latent by train AUROC; freq: "
        "firing frequency; mean: mean activation (default auroc)",
    )
    g.add_argument("--atlas-stats", type=int, default=2000, help="train images for ā, AUROCs")
    g.add_argument("--atlas-examples", type=int, default=2, help="edited images per card")
    g.add_argument(
        "--atlas-window",
        type=parse_edit_steps,
        default="all",
        help="edited resumed steps: 1, N or all (default all)",
    )
    g.add_argument("--atlas-steps", type=int, default=None, help="DDIM steps (store's)")


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
    atlas_cfg = atlas_config(args) if args.atlas else None  # bad atlas options fail first
    out = args.out or Path(args.store).parent / "features"
    doc = run_features(args.store, args.sae, out, args.data, cfg, resolve_device(args.device))
    print(format_features_table(doc), end="")
    print(f"wrote {out / FEATURES_FILE}, {out / TABLE_FILE}")
    if atlas_cfg is not None:
        run_atlas_command(args, atlas_cfg, out)
    return 0


def atlas_config(args: argparse.Namespace) -> AtlasConfig:
    cfg = AtlasConfig(
        n_latents=args.atlas_latents,
        n_images=args.atlas_images,
        size=args.atlas_size,
        rank=args.atlas_rank,
        n_stats=args.atlas_stats,
        n_examples=args.atlas_examples,
        window=args.atlas_window,
        batch=args.batch,
        seed=args.seed,
        progress=not args.no_progress,
    )
    cfg.check()
    return cfg


def atlas_inputs(args: argparse.Namespace, cfg: AtlasConfig) -> AtlasInputs:
    """Store, SAE, committed classifier, the store's model as a runner and the image loader."""
    from hsae.analysis.features import load_rows_images, resolve_data_dir
    from hsae.cli.editbench import store_h_check
    from hsae.data.extract import fast_path
    from hsae.data.store import ActivationStore
    from hsae.diffusion.backbone import DiffusionBackbone
    from hsae.editing.runner import DiffusionRunner
    from hsae.sae.selection import load_checked
    from hsae.toy.classifier import load_default

    store = ActivationStore(args.store)
    data = resolve_data_dir(store, args.data)
    if data is None:
        raise ValueError("--atlas needs --data: the image folder the store was extracted from")
    meta = store.meta
    model = (meta.get("model") or {}).get("model_id") or "toy"
    backbone = DiffusionBackbone.load(model, dtype=args.dtype, device=args.device)
    fast_path(backbone)  # channels_last where measured faster (hsae.data.extract)
    sae = load_checked(Path(args.sae), store).eval().to(backbone.device)
    classifier = load_default(backbone.device)
    size = backbone.image_size
    if classifier.cfg.image_size != size:
        raise ValueError(
            f"the classifier judges {classifier.cfg.image_size}px images, model {model!r} makes "
            f"{size}px ones: the atlas cannot judge its edits"
        )
    steps = args.atlas_steps if args.atlas_steps is not None else int(meta.get("steps", 50))
    t = float(meta.get("t", 0.7))
    runner = DiffusionRunner(backbone, t, steps, meta.get("prompt", ""), cfg.batch, cfg.progress)
    return AtlasInputs(
        store=store,
        sae=sae,
        classifier=classifier,
        runner=runner,
        load_images=lambda rows: load_rows_images(store, data, rows, size),
        check_h=store_h_check(store) if steps == meta.get("steps") else None,
    )


def run_atlas_command(args: argparse.Namespace, cfg: AtlasConfig, out: Path) -> None:
    import shlex
    import sys

    doc, pictures = run_atlas(atlas_inputs(args, cfg), cfg)
    doc = {"command": shlex.join(sys.argv), **doc}
    doc["settings"].update(store=str(args.store), sae=str(args.sae))
    write_atlas(out, doc, pictures)
    print(format_atlas(doc), end="")
    print(f"wrote {out / ATLAS_FILE}, {out / ATLAS_DIR}/*.png")
