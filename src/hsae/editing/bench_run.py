"""Running the benchmark's edits: batched resumes of (image, signed strength) rows, the sweep of
signed sizes over an attribute's add and remove groups, and the effect score that selects a
feature on validation images (`hsae.editing.bench`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hsae.editing import bench_methods as BM
from hsae.editing.bench_metrics import row_metrics, summarize
from hsae.editing.bench_setup import BenchInputs, EditBenchConfig, ImageSet, classify
from hsae.editing.units import EditFeature, StepLog, window_hook
from hsae.utils.metrics import pixel_change


# ----- running edits ------------------------------------------------------------------------------
def run_rows(
    inputs: BenchInputs,
    images: ImageSet,
    feature: EditFeature,
    target: int,
    idx: np.ndarray,
    u: np.ndarray,
    towards: np.ndarray,
    window: int | str,
    mode: str,
    batch: int,
    keep: set[int] | None = None,
) -> tuple[dict[str, np.ndarray], dict[int, Tensor]]:
    """Resume rows (image idx, strength u) in chunks; per-row metrics (+ kept rows' images).
    `towards` is each row's direction (+1 add, −1 remove). It is not read off u: a scaled
    component silent on an image has u = 0 there, and that image still wants its direction's
    verdict (an unmoved image without the attribute has not been flipped to it)."""
    attr = list(inputs.classifier.attribute_names)[target]
    mask = images.masks.get(attr)
    parts, kept = [], {}
    for start in range(0, len(idx), batch):
        rows = idx[start : start + batch]
        uu = torch.as_tensor(u[start : start + batch]).float()
        log = StepLog()
        x = inputs.runner.resume(images.state, rows, window_hook(feature, uu, mode, log), window)
        pred, logit = classify(inputs.classifier, x)
        want = torch.as_tensor(towards[start : start + batch] > 0)
        ref_logit = None if images.logit is None else images.logit[rows]
        m = row_metrics(images.pred[rows], pred, ref_logit, logit, target, want)
        steps = log.per_step()
        m["size"] = steps[0].double().numpy() if len(steps) else np.zeros(len(rows))
        m["size_sum"] = steps.sum(0).double().numpy() if len(steps) else np.zeros(len(rows))
        m.update(pixel_change(x, images.x_clean[rows], None if mask is None else mask[rows]))
        parts.append(m)
        if keep:
            kept.update({start + i: x[i] for i in range(len(rows)) if start + i in keep})
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    if out:
        out["n_others"] = np.array([max(images.pred.shape[1] - 1, 1)])
    return out, kept


def sweep(
    inputs: BenchInputs,
    images: ImageSet,
    feature: EditFeature,
    target: int,
    sizes: tuple[float, ...] | dict[str, tuple[float, ...]],
    window: int | str,
    cfg: EditBenchConfig,
    keep_at: tuple[float | None, float | None] = (None, None),
    keep_images: np.ndarray | None = None,
) -> tuple[list[dict[str, Any]], dict[int, Tensor]]:
    """Every signed size on its group: +size on images without the attribute, −size on those with
    (each group capped at cfg.max_group images). `sizes` is shared by both directions or given
    per direction ({"add": …, "remove": …}). Returns one summary row per signed size, and the
    edited images of `keep_images` (by image index) at keep_at = (add size, remove size)."""
    has = images.pred[:, target].numpy().astype(bool)
    unit = BM.size_per_unit(feature, images.h)
    per_dir = sizes if isinstance(sizes, dict) else {d: tuple(sizes) for d in ("add", "remove")}
    pairs = [
        (sign, s)
        for sign, d in ((1, "add"), (-1, "remove"))
        for s in sorted(set(per_dir.get(d, ())))
    ]
    groups = {1: np.flatnonzero(~has)[: cfg.max_group], -1: np.flatnonzero(has)[: cfg.max_group]}
    idx, u, tag = [np.zeros(0, dtype=np.int64)], [np.zeros(0)], [np.zeros(0)]
    for sign, s in pairs:
        g = groups[sign]
        idx.append(g)
        u.append(BM.oriented_u(feature, sign * s, unit[g]))
        tag.append(np.full(len(g), sign * s))
    idx_a, u_a, tag_a = (np.concatenate(v) for v in (idx, u, tag))
    keep = set()
    if keep_images is not None:
        want = set(keep_images.tolist())
        wanted_tags = {t for t in (keep_at[0], None if keep_at[1] is None else -keep_at[1]) if t}
        keep = {
            i
            for i, (img, t) in enumerate(zip(idx_a, tag_a, strict=False))
            if img in want and t in wanted_tags
        }
    metrics, kept = run_rows(
        inputs, images, feature, target, idx_a, u_a, np.sign(tag_a), window, cfg.mode, cfg.batch,
        keep,
    )  # fmt: skip
    rows = [
        {
            "target_size": s,
            "direction": "add" if sign > 0 else "remove",
            **summarize(metrics, tag_a == sign * s),
        }
        for sign, s in pairs
    ]
    return rows, {int(idx_a[i]): x for i, x in kept.items()}


def effect_scores(
    inputs: BenchInputs,
    images: ImageSet,
    feats: list[EditFeature],
    target: int,
    window: int | str,
    cfg: EditBenchConfig,
) -> list[float]:
    """Mean signed logit change per unit of edit size of each candidate on validation images
    (half without the attribute edited +size, half with it −size); NaN without logits."""
    has = images.pred[:, target].numpy().astype(bool)
    half = max(cfg.effect_images // 2, 1)
    groups = [(1, np.flatnonzero(~has)[:half]), (-1, np.flatnonzero(has)[:half])]
    out = []
    for f in feats:
        unit = BM.size_per_unit(f, images.h)
        idx = np.concatenate([g for _, g in groups])
        u = np.concatenate([BM.oriented_u(f, s * cfg.effect_size, unit[g]) for s, g in groups])
        towards = np.concatenate([np.full(len(g), s) for s, g in groups])
        if len(idx) == 0 or not np.any(u):
            out.append(math.nan)
            continue
        m, _ = run_rows(inputs, images, f, target, idx, u, towards, window, cfg.mode, cfg.batch)
        if "logit" not in m:
            out.append(math.nan)
            continue
        out.append(float(np.mean(m["logit"]) / max(float(np.mean(m["size"])), 1e-12)))
    return out
