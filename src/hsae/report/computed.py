"""Sections the report computes itself: training curves (RUN/sae) and code sparsity (RUN/acts)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from hsae.report.collect import Collector
from hsae.report.stages import read_json_or_none, scalar_facts
from hsae.report.view import Block, Figure, Headline, Section, fmt, sized

TRAIN_HINT = "hsae train --store {run}/acts --out {run}/sae"
TRAIN_ABOUT = "Loss, MSE, L0 and dead latents of the SAE against training step."
SPARSITY_ABOUT = "Fraction of zero code values per test image, raw and thresholded by eq. 9."


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines log; a torn last line (a run killed mid-write) is skipped."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in rows if isinstance(r, dict) and "step" in r]


def training_headline(metrics: Any) -> Headline | None:
    """The final training MSE, with L0 and dead latents, from sae/metrics.json."""
    final = metrics.get("final") if isinstance(metrics, dict) else None
    if not isinstance(final, dict) or not isinstance(final.get("mse"), int | float):
        return None
    detail = ", ".join(
        f"{name} {fmt(final[key], '.4g')}"
        for key, name in (("loss", "loss"), ("l0", "L0 per token"), ("dead_pct", "dead %"))
        if isinstance(final.get(key), int | float)
    )
    steps = metrics.get("steps")
    return Headline(
        fmt(float(final["mse"]), ".4g"),
        "final training MSE" + (f" after {steps} steps" if steps else ""),
        detail + (f" ({metrics['units']})" if isinstance(metrics.get("units"), str) else ""),
    )


def training_section(run: Path, col: Collector) -> Section:
    """RUN/sae/loss_curves.png, else a plot of RUN/sae/train_log.jsonl; plus metrics.json."""
    sae = run / "sae"
    png, log = sae / "loss_curves.png", sae / "train_log.jsonl"
    section = Section("training", "Training curves", False, TRAIN_ABOUT)
    rel = "images/training/loss_curves.png"
    if png.is_file():
        url, caption = col.copy(png, rel), "loss curves (sae/loss_curves.png)"
    elif log.is_file() and (history := read_jsonl(log)):
        from hsae.training.plots import plot_curves

        plot_curves(history, col.out / rel)
        url = col.track(rel)
        caption = f"loss curves, plotted from sae/train_log.jsonl ({len(history)} rows)"
    else:
        section.hint = TRAIN_HINT.format(run=run)
        return section
    section.present, section.sources, section.n_images = True, ["sae"], 1
    section.blocks.append(Block("gallery", figures=[sized(url, caption, col.out / rel)]))
    metrics = read_json_or_none(sae / "metrics.json")
    section.headline = training_headline(metrics)
    facts = scalar_facts(metrics, limit=40)
    if facts:
        section.blocks.append(
            Block("table", header=["metric", "value"], rows=[list(f) for f in facts])
        )
    elif (sae / "metrics.json").is_file():
        section.blocks.append(
            Block("text", text="sae/metrics.json could not be read.", css="not-run")
        )
    return section


def eval_rows(store: Any, max_images: int) -> tuple[np.ndarray, str]:
    """Up to max_images evenly spaced test rows (all rows if the store has no test split)."""
    try:
        rows, split = np.asarray(store.indices_for_split("test"), dtype=np.int64), "test"
    except ValueError:
        rows, split = np.arange(len(store)), "all"
    if len(rows) == 0:
        rows, split = np.arange(len(store)), "all"
    if len(rows) > max_images:
        rows = rows[np.unique(np.linspace(0, len(rows) - 1, max_images).astype(np.int64))]
    return rows, split


def code_sparsity(
    acts: Path,
    sae_dir: Path,
    max_images: int = 512,
    threshold_k: int | str | None = "auto",
    target: float = 0.95,
    batch: int = 64,
) -> dict[str, Any]:
    """Per-image fraction of zero code values, raw and thresholded (eq. 9), on test rows."""
    import torch

    from hsae.data.store import ActivationStore
    from hsae.sae.selection import load_checked, resolve_threshold_k
    from hsae.sae.threshold import codes_as_tokens, threshold_codes

    store = ActivationStore(acts)
    model = load_checked(sae_dir, store).eval()
    rows, split = eval_rows(store, max_images)
    k = resolve_threshold_k(model, threshold_k, store, None, target)[0]
    raw, thr = [], []
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            h = torch.from_numpy(np.asarray(store[rows[start : start + batch]], dtype=np.float32))
            tokens = codes_as_tokens(model.encode(h.to(model.W_enc.dtype)))
            raw.append((tokens == 0).flatten(1).double().mean(1).numpy())
            if k is not None:
                zero = threshold_codes(tokens, int(k)) == 0
                thr.append(zero.flatten(1).double().mean(1).numpy())
    return {
        "split": split,
        "n_images": len(rows),
        "threshold_k": k,
        "architecture": model.cfg.architecture,
        "raw": np.concatenate(raw),
        "thresholded": np.concatenate(thr) if thr else None,
    }


def plot_sparsity(stats: dict[str, Any], target: float) -> bytes:
    """Histogram PNG of per-image sparsity (Agg canvas, no pyplot), raw and thresholded."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(6, 3.6))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.15, top=0.9)
    ax = fig.add_subplot(1, 1, 1)
    series = [("raw codes", stats["raw"])]
    if stats["thresholded"] is not None:
        series.append((f"thresholded, k={stats['threshold_k']}", stats["thresholded"]))
    lo = min(float(s.min()) for _, s in series)
    bins = np.linspace(min(lo, target) - 1e-3, 1.0, 41).tolist()
    for label, s in series:
        ax.hist(s, bins=bins, alpha=0.6, label=label)
    ax.axvline(target, color="k", linestyle="--", linewidth=1, label=f"target {target:g}")
    ax.set_xlabel("fraction of zero code values per image")
    ax.set_ylabel("images")
    ax.set_title(f"Code sparsity, {stats['n_images']} {stats['split']} images")
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def sparsity_section(
    run: Path, col: Collector, max_images: int, threshold_k: int | str | None, target: float
) -> Section:
    section = Section("sparsity", "Code sparsity", False, SPARSITY_ABOUT)
    if max_images < 1:
        section.not_run = "skipped (--sparsity-images 0)"
        return section
    if not (run / "sae" / "cfg.json").is_file() or not (run / "acts" / "manifest.json").is_file():
        section.not_run, section.hint = "not run (needs acts/, sae/)", TRAIN_HINT.format(run=run)
        return section
    try:
        stats = code_sparsity(run / "acts", run / "sae", max_images, threshold_k, target)
    except (OSError, ValueError, RuntimeError) as e:
        section.not_run = f"could not be computed: {e}"
        return section
    url = col.write("images/sparsity/sparsity_hist.png", plot_sparsity(stats, target))
    caption = (
        f"per-image sparsity of {stats['architecture']} codes, {stats['n_images']} "
        f"{stats['split']} images (dashed: target {target:g})"
    )
    means = [("raw", stats["raw"])]
    if stats["thresholded"] is not None:
        means.append((f"thresholded (k={stats['threshold_k']})", stats["thresholded"]))
    name, shown = means[-1]
    section.headline = Headline(
        f"{shown.mean():.4f}",
        f"mean sparsity of the {name} codes",
        f"target {target:g}; {stats['n_images']} {stats['split']} images",
    )
    rows = [[n, f"{s.mean():.4f}", f"{s.min():.4f}", f"{s.max():.4f}"] for n, s in means]
    section.blocks = [
        Block("gallery", figures=[Figure(url, caption)]),
        Block("table", header=["codes", "mean sparsity", "min", "max"], rows=rows),
    ]
    section.present, section.sources, section.n_images = True, ["sae", "acts"], 1
    return section
