"""`hsae eval`: Table 2, reconstruction metrics of SAEs and baselines (and spliced fidelity)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hsae.analysis.reconstruction import (
    METRICS_FILE,
    TABLE_FILE,
    _fmt,
    evaluate_run,
    format_table,
    sae_edit,
    spliced_fidelity_many,
    write_outputs,
)
from hsae.cli.options import add_device_arguments
from hsae.sae.base import BaseSAE
from hsae.sae.selection import DENSE_ARCHITECTURES, is_sparse, load_checked, parse_threshold_k
from hsae.utils.device import resolve_device
from hsae.utils.jsonable import jsonable
from hsae.utils.splits import split_rows


def model_name(model: BaseSAE, source: str) -> str:
    cfg = model.cfg
    if cfg.architecture in DENSE_ARCHITECTURES:
        return f"{cfg.architecture} L={cfg.n_latents} ({source})"
    return f"{cfg.architecture} L={cfg.n_latents} λ={cfg.l1_coeff:g} ({source})"


def fit_baselines(
    store: Any, pca: Sequence[int], random_latents: int | None, batch: int, seed: int
) -> dict[str, BaseSAE]:
    """PCA-L fitted on the train split (all rows if unpartitioned) and the random baseline."""
    from hsae.sae import PCABaseline, build_sae, make_config

    if not pca and random_latents is None:  # nothing to fit: a test-only store is fine
        return {}
    _, c, k, _ = store.shape
    train_rows = split_rows(store, "train")
    out: dict[str, BaseSAE] = {}
    for n in pca:
        pca_model = PCABaseline(make_config("pca", c, k, n_latents=n))
        pca_model.fit(store.iter_batches(max(batch, n), indices=train_rows))
        out[model_name(pca_model, f"fitted on {len(train_rows)} train images")] = pca_model
    if random_latents is not None:
        torch.manual_seed(seed)  # the matrices are a fixed function of --seed
        rnd = build_sae(make_config("random", c, k, n_latents=random_latents))
        out[model_name(rnd, f"seed {seed}")] = rnd
    return out


def run_spliced(args: Any, store: Any, models: Mapping[str, BaseSAE], rows: list[dict]) -> dict:
    """--spliced N: spliced fidelity of every sparse SAE (raw and at its thresholded k)."""
    from hsae.data.images import ImageDataset
    from hsae.diffusion.backbone import DiffusionBackbone

    if args.data is None:
        raise ValueError("--spliced needs --data (the image folder the store was extracted from)")
    meta = store.meta
    backbone = DiffusionBackbone.load(args.model, dtype=args.dtype, device=args.device)
    for model in models.values():
        model.to(backbone.device)
    split = args.split if store.splits is not None else "all"
    ds = ImageDataset(args.data, backbone.image_size, split=split, limit=args.spliced)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    ks = {r["model_key"]: r["threshold_k"] for r in rows if r["thresholded"]}
    edits: dict[str, Callable[[Tensor], Tensor]] = {}
    for name, model in models.items():
        if is_sparse(model):
            edits[name] = sae_edit(model)
            if ks.get(name) is not None:
                edits[f"{name} thresholded k={ks[name]}"] = sae_edit(model, ks[name])
    t, steps = float(meta.get("t", args.t)), int(meta.get("steps", args.steps))
    res = spliced_fidelity_many(backbone, images, edits, t, steps, meta.get("prompt", ""))
    return {"model": args.model, "images": ds.ids, "t": t, "steps": steps, "results": res}


def format_spliced(spliced: Mapping[str, Any]) -> str:
    lines = [
        f"Spliced fidelity ({len(spliced['images'])} images, t={spliced['t']}, "
        f"{spliced['steps']} DDIM steps): pixel MSE / PSNR of the resume with h_t → ĥ_t "
        "against the unspliced resume; recovered = 1 − MSE(spliced) / MSE(mean-ablated).",
        "",
        "| method | MSE vs clean | PSNR (dB) | recovered | MSE clean vs input |",
        "|---|---|---|---|---|",
    ]
    for name, r in spliced["results"].items():
        lines.append(
            f"| {name} | {r['mse_spliced_vs_clean']:.3g} | {r['psnr_spliced_vs_clean']:.1f} | "
            f"{_fmt(r.get('recovered'), '.3f')} | {r['mse_clean_vs_input']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def eval_command(args: Any) -> int:
    from hsae.data.store import ActivationStore

    store = ActivationStore(args.store)
    split_rows(store, args.split)  # fail on a missing split before loading anything
    k = parse_threshold_k(args.threshold_k)
    models = {model_name(m, str(p)): m for p in args.sae for m in [load_checked(p, store)]}
    models.update(
        {model_name(m, str(p)): m for p in args.baseline for m in [load_checked(p, store)]}
    )
    models.update(fit_baselines(store, args.fit_pca, args.random, args.batch, args.seed))
    for model in models.values():
        model.to(resolve_device(args.device))
    if not models:
        raise ValueError(
            "nothing to evaluate: give --sae DIR, --baseline DIR, --fit-pca or --random"
        )
    k_store = ActivationStore(args.k_store) if getattr(args, "k_store", None) else None
    rows = evaluate_run(
        store, models, args.split, k, args.batch, args.target_sparsity, args.seed, k_store
    )
    if not args.per_image:  # one count per eval image: large, so only on request
        for r in rows:
            r.pop("active_values")
    settings = {
        "store": str(args.store),
        "split": args.split,
        "threshold_k": k,
        "target_sparsity": args.target_sparsity,
        "k_store": str(getattr(args, "k_store", None) or args.store),
        "batch": args.batch,
        "seed": args.seed,
        "store_meta": {x: store.meta.get(x) for x in ("t", "timestep", "steps", "prompt")},
        "args": vars(args),
    }
    out = args.out or Path(args.store).parent / "eval"
    doc = write_outputs(out, rows, settings)
    text = format_table(rows)
    if args.spliced:
        doc["spliced"] = run_spliced(args, store, models, rows)
        from hsae.utils.io import atomic_write_json, atomic_write_text

        atomic_write_json(out / METRICS_FILE, jsonable(doc))
        text += "\n" + format_spliced(doc["spliced"])
        atomic_write_text(out / TABLE_FILE, text)
    print(text, end="")
    print(f"wrote {out / METRICS_FILE}, {out / TABLE_FILE}")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from hsae.cli.options import add_threshold_arguments

    p = sub.add_parser("eval", help="Table 2: reconstruction metrics of SAEs and baselines")
    p.add_argument("--store", type=Path, required=True, help="activation store folder")
    p.add_argument("--sae", type=Path, nargs="+", default=[], help="SAE folder(s), e.g. a sweep")
    p.add_argument("--baseline", type=Path, nargs="+", default=[], help="saved baseline folder(s)")
    p.add_argument(
        "--fit-pca", type=int, nargs="+", default=[], metavar="L", help="fit PCA-L on train split"
    )
    p.add_argument(
        "--random",
        type=int,
        nargs="?",
        const=512,
        default=None,
        metavar="L",
        help="add the random baseline with L latents (default 512)",
    )
    add_threshold_arguments(p)
    p.add_argument(
        "--k-store",
        type=Path,
        default=None,
        help="store whose train split chooses k for --threshold-k auto (default --store)",
    )
    p.add_argument("--split", choices=["train", "val", "test", "all"], default="test")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: STORE/../eval)")
    p.add_argument("--batch", type=int, default=64, help="images per batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-image", action="store_true", help="keep active values of every image")
    p.add_argument(
        "--spliced", type=int, default=0, metavar="N", help="spliced fidelity on N images"
    )
    p.add_argument("--data", type=Path, default=None, help="image folder (for --spliced)")
    p.add_argument("--model", default="toy", help="diffusion model (for --spliced)")
    p.add_argument("--t", type=float, default=0.7, help="(--spliced) if the store lacks t")
    p.add_argument("--steps", type=int, default=50, help="(--spliced) if the store lacks steps")
    add_device_arguments(p)
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:

    return eval_command(args)


def register(sub: argparse._SubParsersAction) -> None:
    _add_eval(sub)
