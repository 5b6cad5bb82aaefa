"""The atlas's measurement (`hsae.editing.atlas`): its settings and inputs, the validation images
inverted once, one feature's batched ±size edits with the logit change per unit of measured size,
and the labels read from it (what a latent writes, what it fires on)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hsae.editing import bench_methods as BM
from hsae.editing.bench_setup import EditRunner, classify
from hsae.editing.units import EDIT_MODES, EditFeature, StepLog, window_hook
from hsae.sae.base import BaseSAE

RANKS = ("auroc", "freq", "mean")
EDIT_COLUMNS = ("unedited", "-2s", "-s", "+s", "+2s")


@dataclass
class AtlasConfig:
    n_latents: int = 16
    n_images: int = 32  # validation images the effects are measured on
    size: float = 0.5  # first-step edit size ‖h̃ − h‖/‖h‖; the cards also show 2·size
    rank: str = "auroc"
    n_stats: int = 2000  # train rows for ā, the AUROCs and the ranking
    n_examples: int = 2  # validation images per card, edited at both sizes
    n_top: int = 6  # train images that drive the latent, per card
    window: int | str = "all"
    mode: str = "error_preserving"
    batch: int = 64
    seed: int = 0
    progress: bool = True

    def check(self) -> None:
        if self.rank not in RANKS:
            raise ValueError(f"--atlas-rank must be one of {RANKS}, got {self.rank!r}")
        if self.mode not in EDIT_MODES:
            raise ValueError(f"atlas mode must be one of {EDIT_MODES}, got {self.mode!r}")
        if min(self.n_latents, self.n_images, self.n_stats, self.batch) < 1:
            raise ValueError(
                "--atlas-latents, --atlas-images, --atlas-stats and --batch must be >= 1, got "
                f"{self.n_latents}, {self.n_images}, {self.n_stats}, {self.batch}"
            )
        if not self.size > 0:
            raise ValueError(f"--atlas-size must be a positive edit size, got {self.size}")
        if self.n_examples < 0 or self.n_top < 0:
            raise ValueError(f"example counts must be >= 0: {self.n_examples}, {self.n_top}")


@dataclass
class AtlasInputs:
    store: Any
    sae: BaseSAE
    classifier: Any  # predict_logits(x) and attribute_names
    runner: EditRunner
    load_images: Callable[[np.ndarray], Tensor]  # store rows → images in [-1, 1]
    check_h: Callable[[np.ndarray, Tensor], None] | None = None


@dataclass
class ValImages:
    rows: np.ndarray
    state: Any
    x_clean: Tensor
    h: Tensor
    logit: Tensor  # (n, A) of the unedited resume


# ----- measuring edits ----------------------------------------------------------------------------
def prepare_val(inputs: AtlasInputs, rows: np.ndarray) -> ValImages:
    x = inputs.load_images(rows)
    state, x_clean, h = inputs.runner.invert(x)
    if inputs.check_h is not None:
        inputs.check_h(rows, h)
    _, logit = classify(inputs.classifier, x_clean)
    if logit is None:
        raise ValueError("the atlas needs a classifier with logits (predict_logits)")
    return ValImages(rows, state, x_clean, h.float(), logit)


def resume_rows(
    inputs: AtlasInputs,
    val: ValImages,
    feature: EditFeature,
    idx: np.ndarray,
    u: np.ndarray,
    cfg: AtlasConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """Edited images, their logits and first-step sizes for rows (image idx, strength u)."""
    xs, logits, sizes = [], [], []
    for start in range(0, len(idx), cfg.batch):
        uu = torch.as_tensor(u[start : start + cfg.batch]).float()
        log = StepLog()
        hook = window_hook(feature, uu, cfg.mode, log)
        x = inputs.runner.resume(val.state, idx[start : start + cfg.batch], hook, cfg.window)
        xs.append(x)
        logit = classify(inputs.classifier, x)[1]
        assert logit is not None  # prepare_val checked that the classifier gives logits
        logits.append(logit)
        steps = log.per_step()
        sizes.append(steps[0] if len(steps) else torch.zeros(len(uu)))
    return torch.cat(xs), torch.cat(logits).float(), torch.cat(sizes).double()


def measure(
    inputs: AtlasInputs, val: ValImages, feature: EditFeature, cfg: AtlasConfig
) -> tuple[dict[str, Any], Tensor]:
    """The feature's effect on every logit per unit size (±cfg.size on every image), and the
    edited images (+size rows, then −size rows)."""
    n = len(val.rows)
    unit = BM.size_per_unit(feature, val.h)
    idx = np.concatenate([np.arange(n), np.arange(n)])
    u = np.concatenate([BM.oriented_u(feature, s * cfg.size, unit) for s in (1, -1)])
    x, logit, size = resume_rows(inputs, val, feature, idx, u, cfg)
    s = size.numpy()
    moved = s > 1e-12  # a feature that cannot move h on an image says nothing there
    change = (logit - val.logit[torch.as_tensor(idx)]).double().numpy()
    delta = np.where(moved[:, None], change / np.where(moved, s, 1.0)[:, None], np.nan)
    add, remove = delta[:n], -delta[n:]  # per unit of signed size
    per_image = (add + remove) / 2
    ok = np.isfinite(per_image[:, 0])
    k, width = int(ok.sum()), per_image.shape[1]
    res = {
        "effect": per_image[ok].mean(0) if k else np.full(width, np.nan),
        "effect_se": per_image[ok].std(0, ddof=1) / np.sqrt(k) if k > 1 else None,
        "effect_add": add[ok].mean(0) if k else None,
        "effect_remove": remove[ok].mean(0) if k else None,
        "size_measured": float(s[moved].mean()) if moved.any() else 0.0,
        "n_images": k,
    }
    return res, x


def label_writes(effect: np.ndarray, names: list[str], control_max: float) -> dict[str, Any]:
    """The attribute with the largest |effect| and its sign, and whether it beats the control."""
    mag = np.where(np.isfinite(effect), np.abs(effect), -1.0)
    a = int(np.argmax(mag))
    if mag[a] < 0:
        return {"attribute": None, "sign": 0, "effect": None, "above_control": False}
    return {
        "attribute": names[a],
        "sign": 1 if effect[a] >= 0 else -1,
        "effect": float(effect[a]),
        "above_control": bool(mag[a] > control_max),
    }


def label_fires(auc_row: np.ndarray | None, names: list[str]) -> dict[str, Any] | None:
    if auc_row is None or not np.isfinite(auc_row).any():
        return None
    a = int(np.nanargmax(np.abs(auc_row - 0.5)))
    v = float(auc_row[a])
    return {"attribute": names[a], "sign": 1 if v >= 0.5 else -1, "auroc_train": v}


def example_images(val: ValImages, attr: int, n: int) -> np.ndarray:
    """n validation images, alternating without / with the attribute (by the classifier)."""
    has = (val.logit[:, attr] > 0).numpy()
    lacks, holds = list(np.flatnonzero(~has)), list(np.flatnonzero(has))
    out: list[int] = []
    while len(out) < min(n, len(has)):
        for pool in (lacks, holds) if len(out) % 2 == 0 else (holds, lacks):
            if pool:
                out.append(int(pool.pop(0)))
                break
    return np.asarray(out, dtype=np.int64)
