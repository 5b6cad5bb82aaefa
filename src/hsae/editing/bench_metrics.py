"""Per-image measurements of an edit and their summaries with Wilson 95% intervals.

Every measurement is against the *unedited resume* of the same inversion (so the inversion's own
error is not counted as the edit's):

- flipped: the classifier's verdict on the target attribute is now the wanted one;
- preserved: fraction of the other attributes whose verdict is unchanged (`all_preserved`: all);
- change_outside / change_inside / change: mean |Δpixel| in [0, 1] units outside / inside the
  attribute's region (toyfaces regions follow each face's nuisance shift) and over the image;
- size: ‖h̃ − h‖ / ‖h‖ at the first edited step; size_sum: the same summed over the window;
- logit: the target's classifier logit change, signed towards the wanted verdict.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n; (nan, nan) when n = 0."""
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def toyfaces_masks(data: Path | None, ids: list[str], attribute: str, size: int) -> Tensor | None:
    """(B, S, S) bool region of `attribute` in each toyface (None if not a toyfaces folder).

    Faces move with their nuisance (position, scale), so the mask is per image, re-derived from the
    generator seed and config in `toyfaces.json` and the image index in its name (000001.png → 0).
    """
    from hsae.toy.toyfaces import ATTRIBUTE_REGIONS, ToyFacesConfig, attribute_region_mask
    from hsae.utils.io import read_json

    if data is None or not (data / "toyfaces.json").is_file() or attribute not in ATTRIBUTE_REGIONS:
        return None
    meta = read_json(data / "toyfaces.json", "toyfaces metadata")
    cfg = ToyFacesConfig(**meta["config"])
    if cfg.size != size:
        return None  # the regions are in the generator's pixels; no resampling guesswork
    try:
        index = [int(Path(i).stem) - 1 for i in ids]
    except ValueError:
        return None
    masks = [attribute_region_mask(int(meta["seed"]), i, attribute, cfg) for i in index]
    return torch.from_numpy(np.stack(masks))


def row_metrics(
    pred_ref: Tensor,
    pred: Tensor,
    logit_ref: Tensor | None,
    logit: Tensor | None,
    target: int,
    want: Tensor,
) -> dict[str, np.ndarray]:
    """Classifier-side metrics of edited rows against their unedited resumes."""
    others = [a for a in range(pred_ref.shape[1]) if a != target]
    same = pred[:, others] == pred_ref[:, others]
    out = {
        "flipped": (pred[:, target] == want).numpy(),
        "preserved": same.double().mean(1).numpy() if others else np.ones(len(pred)),
        "all_preserved": same.all(1).numpy() if others else np.ones(len(pred), bool),
    }
    if logit is not None and logit_ref is not None:
        sign = torch.where(want, 1.0, -1.0).double()
        out["logit"] = ((logit[:, target] - logit_ref[:, target]).double() * sign).numpy()
    return out


RATE_KEYS = ("flipped", "all_preserved")
MEAN_KEYS = ("preserved", "change_outside", "change_inside", "change", "size", "size_sum", "logit")


def summarize(metrics: dict[str, np.ndarray], sel: np.ndarray) -> dict[str, Any]:
    """Means over the selected rows, Wilson intervals on the rates; None where unmeasured.

    `preserved` is a mean of per-image fractions over (image, attribute) pairs, so its interval
    treats the pairs as the trials (n · (A − 1)); an approximation, as pairs of one image are not
    independent, and said so in the docs.
    """
    n = int(sel.sum())
    out: dict[str, Any] = {"n": n}
    for key in MEAN_KEYS:
        v = metrics[key][sel] if n and key in metrics else np.zeros(0)
        v = v[np.isfinite(v)]
        out[key] = float(v.mean()) if len(v) else None
    for key in RATE_KEYS:
        v = metrics[key][sel] if n else np.zeros(0)
        out[key] = float(v.mean()) if n else None
        out[f"{key}_ci"] = list(wilson(float(v.sum()), n)) if n else None
    pairs = n * int(metrics.get("n_others", np.array([1]))[0]) if n else 0
    if out["preserved"] is not None:
        out["preserved_ci"] = list(wilson(out["preserved"] * pairs, pairs))
    else:
        out["preserved_ci"] = None
    return out
