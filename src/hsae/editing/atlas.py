"""Feature atlas (`hsae features --atlas`): what each top SAE latent *writes*, measured by editing.

For the top latents of one SAE (ranked on train rows, `AtlasConfig.rank`):

- it *fires on* the store attribute whose train AUROC of the latent-wide score Σ_t α_tj is
  furthest from 0.5 (sign +: it fires more when the attribute is present);
- it *writes* the classifier attribute whose logit its edit moves most per unit of edit size on
  validation images (sign +: adding the latent raises the logit).

The edit is the add rule at every token, h̃ = h + u·ā_j·w_j (ā = its mean activation where it
fires on train), on the window's resumed steps (default all), keeping the SAE's error. u is set per
image so that the first-step size ‖h̃ − h‖/‖h‖ is ±`size`, the benchmark's axis
(`bench_methods.oriented_u`). Per image and attribute, Δ± = (logit after the ±size edit − logit of
the unedited resume) / measured size; the effect is the central difference (Δ₊ − Δ₋)/2, reported
as its mean and standard error over images, beside the one-sided means (add: Δ₊, remove: −Δ₋). A
random direction edited the same way is the control: a latent writes beyond chance where its
largest |effect| exceeds the control's largest.

Cost: the validation images are inverted once; per latent one batched resume of both signs of
every image, and one of the example images at twice the size (the cards' second size), in chunks
of `batch` rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hsae.editing import bench_methods as BM
from hsae.editing.atlas_measure import (
    EDIT_COLUMNS,
    RANKS,
    AtlasConfig,
    AtlasInputs,
    ValImages,
    example_images,
    label_fires,
    label_writes,
    measure,
    prepare_val,
    resume_rows,
)
from hsae.editing.selection import CodeStats, code_stats
from hsae.editing.units import EditFeature, direction_feature, random_direction, sae_feature

__all__ = ["EDIT_COLUMNS", "RANKS", "AtlasConfig", "AtlasInputs", "run_atlas"]


# ----- rows, AUROCs, ranking ----------------------------------------------------------------------
def atlas_rows(store: Any, cfg: AtlasConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train rows for the statistics, validation rows): the val split, else the last train rows
    (then kept out of the statistics). The test split is never touched."""
    from hsae.utils.splits import optional_split_rows

    train = optional_split_rows(store, "train")
    train = np.arange(len(store), dtype=np.int64) if train is None else train
    val = optional_split_rows(store, "val")
    if val is None:
        val, train = train[-cfg.n_images :], train[: -cfg.n_images]
    if len(train) < 2:
        raise ValueError(f"activation store {store.path}: too few train rows ({len(train)})")
    return np.asarray(train)[: cfg.n_stats], np.asarray(val)[: cfg.n_images]


def latent_aurocs(score: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(L, A) AUROC of each latent's score (N, L) for each bool label column (N, A), from average
    ranks (the Mann–Whitney U, equal to sklearn's roc_auc_score); NaN where a class is absent."""
    from scipy.stats import rankdata

    ranks = rankdata(np.asarray(score, dtype=np.float64), axis=0)
    out = np.full((ranks.shape[1], labels.shape[1]), np.nan)
    for a in range(labels.shape[1]):
        y = np.asarray(labels[:, a], dtype=bool)
        n_pos, n_neg = int(y.sum()), int((~y).sum())
        if n_pos and n_neg:
            out[:, a] = (ranks[y].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out


def pick_latents(stats: CodeStats, auc: np.ndarray | None, cfg: AtlasConfig) -> list[dict]:
    """The atlas's latents, best first; latents that never fired on train are left out.

    auroc: the attributes take turns, each adding its best remaining latent by |AUROC − 0.5|
    (so every attribute is represented); freq: the largest firing frequency over (image, token);
    mean: the largest mean latent-wide score."""
    alive = np.asarray((stats.score > 0).any(0), dtype=bool)
    if cfg.rank == "auroc":
        if auc is None:
            raise ValueError("--atlas-rank auroc needs attribute labels in the store: use freq")
        sep = np.where(np.isnan(auc) | ~alive[:, None], -1.0, np.abs(auc - 0.5))
        orders = [np.lexsort((np.arange(len(sep)), -sep[:, a])) for a in range(sep.shape[1])]
        picked: dict[int, int] = {}
        for r in range(len(sep)):
            for a, order in enumerate(orders):
                j = int(order[r])
                if sep[j, a] >= 0 and j not in picked and len(picked) < cfg.n_latents:
                    picked[j] = a
        return [{"latent": j, "picked_for": a} for j, a in picked.items()]
    value = stats.freq.mean(0).numpy() if cfg.rank == "freq" else stats.score.mean(0)
    value = np.where(alive, value, -np.inf)
    order = np.lexsort((np.arange(len(value)), -value))
    return [{"latent": int(j)} for j in order[: cfg.n_latents] if np.isfinite(value[j])]


# ----- the atlas ----------------------------------------------------------------------------------
def run_atlas(inputs: AtlasInputs, cfg: AtlasConfig) -> tuple[dict[str, Any], dict[int, dict]]:
    """atlas.json's document, and per latent its pictures: "drives" (n, 3, H, W) train images
    and "edits" (one tensor of len(EDIT_COLUMNS) images per example image)."""
    cfg.check()
    t0 = time.perf_counter()
    store, sae, clf = inputs.store, inputs.sae.eval(), inputs.classifier
    names = list(clf.attribute_names)
    train, val_rows = atlas_rows(store, cfg)
    stats = code_stats(sae, store, train)
    store_names = list(store.attribute_names or []) if store.attributes is not None else []
    auc = None
    if store_names:
        labels = np.asarray(store.attributes)[train] > 0
        auc = latent_aurocs(stats.score, labels)
    picked = pick_latents(stats, auc, cfg)
    timings = {"statistics_s": round(time.perf_counter() - t0, 2)}
    val = prepare_val(inputs, val_rows)
    timings["invert_s"] = round(time.perf_counter() - t0 - timings["statistics_s"], 2)
    control = direction_feature(
        random_direction(tuple(val.h.shape[1:]), 1.0, cfg.seed), "random direction"
    )
    ctrl, _ = measure(inputs, val, control, cfg)
    ctrl_max = float(np.nanmax(np.abs(ctrl["effect"])))
    latents, pictures = [], {}
    ctx = _Context(inputs, val, stats, auc, store_names, names, cfg, ctrl_max)
    for rank, pick in enumerate(picked, 1):
        rec, pics = latent_record(ctx, pick)
        latents.append({"rank": rank, **rec})
        pictures[pick["latent"]] = pics
    timings["edits_s"] = round(time.perf_counter() - t0 - sum(timings.values()), 2)
    doc = {
        "settings": _settings(inputs, cfg, len(train), len(val_rows), names, store_names),
        "control": {
            "name": "random direction",
            "effect": dict(zip(names, map(float, ctrl["effect"]), strict=True)),
            "max_abs_effect": ctrl_max,
        },
        "latents": latents,
        "summary": summarize(latents, ctrl_max),
        "timings": timings,
    }
    return doc, pictures


@dataclass
class _Context:
    inputs: AtlasInputs
    val: ValImages
    stats: CodeStats
    auc: np.ndarray | None  # (L, A_store)
    store_names: list[str]
    names: list[str]  # the classifier's attributes
    cfg: AtlasConfig
    control_max: float


def _named(names: list[str], values: np.ndarray | None) -> dict[str, float | None]:
    if values is None:
        return {}
    return {n: (float(v) if np.isfinite(v) else None) for n, v in zip(names, values, strict=True)}


def latent_record(ctx: _Context, pick: dict) -> tuple[dict[str, Any], dict[str, Any]]:
    """One latent measured and labelled, and its pictures (the images that drive it, its edit
    of the example images at ±size and ±2·size)."""
    j, cfg, val, stats = pick["latent"], ctx.cfg, ctx.val, ctx.stats
    feature = sae_feature(ctx.inputs.sae, j, None, "add", stats.latent_abar(j))
    res, x = measure(ctx.inputs, val, feature, cfg)
    writes = label_writes(res["effect"], ctx.names, ctx.control_max)
    if writes["attribute"] is not None and res["effect_se"] is not None:
        writes["se"] = float(res["effect_se"][ctx.names.index(writes["attribute"])])
    fires = label_fires(None if ctx.auc is None else ctx.auc[j], ctx.store_names)
    rec: dict[str, Any] = {"latent": j}
    if "picked_for" in pick:
        rec["picked_for"] = ctx.store_names[pick["picked_for"]]
    rec.update(
        freq=float(stats.freq[:, j].mean()),
        mean_score=float(stats.score[:, j].mean()),
        fires_on=fires,
        writes=writes,
        writes_what_it_fires_on=_same(writes, fires, signed=True),
        effect=_named(ctx.names, res["effect"]),
        effect_se=_named(ctx.names, res["effect_se"]),
        effect_add=_named(ctx.names, res["effect_add"]),
        effect_remove=_named(ctx.names, res["effect_remove"]),
        auroc_train={} if ctx.auc is None else _named(ctx.store_names, ctx.auc[j]),
        size_measured=res["size_measured"],
        n_images=res["n_images"],
    )
    a = ctx.names.index(writes["attribute"]) if writes["attribute"] is not None else 0
    ex = example_images(val, a, cfg.n_examples)
    ids = ctx.inputs.store.ids
    rec["example_ids"] = [ids[int(r)] for r in val.rows[ex]]
    pics: dict[str, Any] = {"edits": _edits(ctx, feature, x, ex), "drives": None}
    top = np.argsort(-stats.score[:, j], kind="stable")[: cfg.n_top]
    top = top[stats.score[top, j] > 0]
    rows = stats.rows[top]
    rec.update(
        top_rows=[int(r) for r in rows],
        top_ids=[ids[int(r)] for r in rows],
        top_scores=[float(v) for v in stats.score[top, j]],
    )
    if len(rows):
        pics["drives"] = ctx.inputs.load_images(rows)
    return rec, pics


def _edits(ctx: _Context, feature: EditFeature, x: Tensor, ex: np.ndarray) -> list[Tensor]:
    """Per example image its EDIT_COLUMNS: the unedited resume, −2s, −s, +s, +2s; `x` holds the
    ±size edits of every validation image (+ rows, then − rows), the ±2·size ones are made here."""
    if not len(ex):
        return []
    val, size = ctx.val, ctx.cfg.size
    unit = BM.size_per_unit(feature, val.h[torch.as_tensor(ex)])
    u = np.concatenate([BM.oriented_u(feature, s * 2 * size, unit) for s in (1, -1)])
    x2, _, _ = resume_rows(ctx.inputs, val, feature, np.concatenate([ex, ex]), u, ctx.cfg)
    n, k = len(val.rows), len(ex)
    return [
        torch.stack([val.x_clean[e], x2[k + i], x[n + e], x[e], x2[i]]) for i, e in enumerate(ex)
    ]


def _same(writes: dict, fires: dict | None, signed: bool) -> bool:
    """Does the latent write the attribute it fires on (with the same sign, when `signed`)?"""
    if fires is None or writes["attribute"] != fires["attribute"]:
        return False
    return not signed or writes["sign"] == fires["sign"]


def summarize(latents: list[dict], control_max: float) -> dict[str, Any]:
    return {
        "n_latents": len(latents),
        "n_write_what_they_fire_on": sum(_same(r["writes"], r["fires_on"], True) for r in latents),
        "n_same_attribute": sum(_same(r["writes"], r["fires_on"], False) for r in latents),
        "n_above_control": sum(bool(r["writes"]["above_control"]) for r in latents),
        "control_max_abs_effect": control_max,
    }


def _settings(
    inputs: AtlasInputs,
    cfg: AtlasConfig,
    n_train: int,
    n_val: int,
    names: list[str],
    store_names: list[str],
) -> dict[str, Any]:
    runner = inputs.runner
    return {
        "architecture": inputs.sae.cfg.architecture,
        "n_latents_sae": inputs.sae.cfg.n_latents,
        "rank": cfg.rank,
        "size": cfg.size,
        "sizes_shown": [cfg.size, 2 * cfg.size],
        "edit_columns": list(EDIT_COLUMNS),
        "edit": f"add rule, the latent at all tokens (h + u·ā_j·w_j), {cfg.mode}",
        "window": str(cfg.window),
        "mode": cfg.mode,
        "n_train_stats": n_train,
        "n_val": n_val,
        "codes": "raw (unthresholded)",
        "attributes": names,
        "store_attributes": store_names,
        "t": getattr(runner, "t", None),
        "steps": getattr(runner, "steps", None),
        "seed": cfg.seed,
    }
