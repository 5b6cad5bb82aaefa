"""The benchmark's edit features per attribute: how each is found, oriented, sized and selected.

Families (every one under the same window and edit-size axis):

- `<arch> latent add` / `<arch> latent@N add`: an SAE latent at all its tokens (or the top-N
  channels ranked on train, channel-aware SAEs), h += s·ā·w_j; ranked by the train AUROC of its
  latent-wide score Σ_t α_tj;
- `<arch> component scale` (the paper's eq. 10) and `<arch> component add`: the single
  (token, latent) with the best train AUROC of its raw code;
- `pca`: the top principal directions of raw h ranked by the train AUROC of the projection;
- `mean_diff`: the supervised mean-difference direction (a baseline, not a discovery);
- `random`: a Gaussian direction (control), sized like every other feature by the axis.

Labels only *pick* (AUROC on train) and orient (sign) a feature; nothing is fitted to them except
the supervised baseline. Selection by effect re-ranks the top candidates by the classifier-logit
change they cause per unit of edit size on validation images (`effect_scores`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hsae.editing.intervene import Component
from hsae.editing.selection import CodeStats, PCABasis, rank_by_auroc
from hsae.editing.units import (
    EditFeature,
    component_feature,
    direction_feature,
    random_direction,
    sae_feature,
)
from hsae.sae.base import BaseSAE


@dataclass
class SAEEntry:
    """One SAE under test with its train statistics."""

    name: str
    sae: BaseSAE
    stats: CodeStats


def is_channel_tokens(sae: BaseSAE) -> bool:
    return len(sae.code_axes) > 1 and sae.code_axes[0] == "channel"


def is_position_tokens(sae: BaseSAE) -> bool:
    return len(sae.code_axes) > 1 and sae.code_axes[0] != "channel"


def sae_latent_candidates(
    entry: SAEEntry,
    labels: np.ndarray,
    n: int,
    top_channels: int | None,
    top_positions: int | None = None,
) -> dict[str, list[EditFeature]]:
    """Latent-wide features of one SAE, best train AUROC first, per family; with `top_channels`
    (channel tokens) or `top_positions` (spatial tokens) also the latent restricted to the N
    tokens where it is most active on train: its own channels, or its own spatial support."""
    ranked = rank_by_auroc(entry.stats.score, labels, n)
    fams: dict[str, list[EditFeature]] = {f"{entry.name} latent add": []}
    top_channels = (
        top_channels
        if is_channel_tokens(entry.sae)
        else top_positions
        if is_position_tokens(entry.sae)
        else None
    )
    channel = top_channels is not None
    if channel:
        fams[f"{entry.name} latent@{top_channels} add"] = []
    for r in ranked:
        j, info = r["index"], {"auroc_train": r["auroc_train"], "selected_on": "train AUROC"}
        abar = entry.stats.latent_abar(j)
        fams[f"{entry.name} latent add"].append(
            sae_feature(entry.sae, j, None, "add", abar, sign=r["sign"], info=info)
        )
        if channel:
            toks = entry.stats.top_tokens(j, top_channels)
            fams[f"{entry.name} latent@{top_channels} add"].append(
                sae_feature(entry.sae, j, toks, "add", abar, sign=r["sign"], info=info)
            )
    return {k: v for k, v in fams.items() if v}


def sae_component_candidates(
    entry: SAEEntry, codes_train: Tensor, labels: np.ndarray, n_prefilter: int = 4096
) -> dict[str, list[EditFeature]]:
    """The best single (token, latent) by train AUROC of its raw code, with both rules.

    codes_train: (N, M·L) raw codes of the train rows used; the exact AUROC runs on the
    components with the largest |difference of means| (a cheap prefilter over M·L columns).
    """
    x = codes_train.double()
    y = torch.as_tensor(labels, dtype=torch.bool)
    if y.all() or not y.any():
        return {}
    diff = (x[y].mean(0) - x[~y].mean(0)).abs()
    cols = torch.argsort(diff, descending=True)[: min(n_prefilter, diff.numel())].numpy()
    ranked = rank_by_auroc(x[:, cols].numpy(), labels, 1)
    if not ranked:
        return {}
    flat = int(cols[ranked[0]["index"]])
    n_lat = entry.sae.cfg.n_latents
    comp = Component(flat // n_lat, flat % n_lat)
    info = {
        "component": str(comp),
        "auroc_train": ranked[0]["auroc_train"],
        "selected_on": "train AUROC",
    }
    abar = entry.stats.abar[:, comp.latent].clone()
    if float(abar[comp.token]) <= 0:
        abar[comp.token] = float(entry.stats.latent_abar(comp.latent)[comp.token])
    sign = ranked[0]["sign"]
    return {
        f"{entry.name} component scale": [
            component_feature(entry.sae, comp, "scale", sign=sign, info=info)
        ],
        f"{entry.name} component add": [
            component_feature(entry.sae, comp, "add", abar, sign=sign, info=info)
        ],
    }


def pca_candidates(pca: PCABasis, labels: np.ndarray, n: int) -> dict[str, list[EditFeature]]:
    ranked = rank_by_auroc(pca.projections, labels, n)
    feats = [
        direction_feature(
            pca.components[r["index"]] * pca.h_norm,
            f"pca {r['index']}",
            r["sign"],
            {"pc": r["index"], "auroc_train": r["auroc_train"], "selected_on": "train AUROC"},
        )
        for r in ranked
    ]
    return {"pca": feats} if feats else {}


def baseline_features(d: Tensor | None, seed: int, attr_index: int) -> dict[str, EditFeature]:
    out: dict[str, EditFeature] = {}
    if d is None:
        return out
    out["mean_diff"] = direction_feature(d, "mean_diff", 1, {"norm": float(d.norm())})
    r = random_direction(tuple(d.shape), float(d.norm()), seed * 1000 + attr_index)
    out["random"] = direction_feature(r, "random", 1, {"seed": seed * 1000 + attr_index})
    return out


@torch.no_grad()
def size_per_unit(feature: EditFeature, h: Tensor) -> np.ndarray:
    """Per image ‖delta(h)‖ / ‖h‖: the first-step edit size of strength u = 1."""
    d = feature.delta(h).flatten(1).norm(dim=1)
    return (d / h.flatten(1).norm(dim=1).clamp_min(1e-12)).double().numpy()


def oriented_u(feature: EditFeature, size: float, unit: np.ndarray | float) -> np.ndarray:
    """Per image the signed strength u whose first-step size is |size|, towards presence if
    size > 0; 0 where the feature cannot move h (a scaled component that is silent there)."""
    unit = np.asarray(unit, dtype=np.float64)
    safe = np.where(unit > 1e-12, unit, 1.0)
    return np.where(unit > 1e-12, feature.sign * size / safe, 0.0)


def describe(feature: EditFeature, unit: np.ndarray, extra: dict[str, Any] | None = None) -> dict:
    u = np.asarray(unit, dtype=np.float64)
    silent = float((u <= 1e-12).mean()) if u.size else 0.0
    out = {**feature.describe(), "size_per_unit": float(u.mean()) if u.size else None}
    return {**out, "silent_fraction": silent, **(extra or {})}
