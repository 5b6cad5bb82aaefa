"""Train-split statistics that pick and size edit features (labels only pick; nothing is fitted).

- `code_stats`: one streaming pass of an SAE over store rows: per (token, latent) the mean
  activation where it fires (ā, the add rule's step) and the mean activation (for ranking a
  latent's channels), and per image each latent's latent-wide score Σ_t α_tj (its AUROC handle).
- `pca_basis`: the top principal directions of raw h (Haas et al.'s unsupervised baseline) and
  the projections of the rows on them.
- `rank_by_auroc`: candidates ranked by |AUROC − 0.5|, with the sign that points to presence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hsae.editing.intervene import encode_tokens
from hsae.sae.base import BaseSAE


@dataclass
class CodeStats:
    """What `code_stats` measured on `rows` (raw codes, test-time context)."""

    rows: np.ndarray
    abar: Tensor  # (M, L) mean activation where > 0 (0 where it never fires)
    mean: Tensor  # (M, L) mean activation over all images
    freq: Tensor  # (M, L) fraction of images where it fires
    score: np.ndarray  # (N, L) latent-wide Σ_t α_tj per image

    def latent_abar(self, latent: int) -> Tensor:
        """(M,) ā of one latent per token; tokens where it never fired get its mean ā over the
        tokens where it did (a silent token can still be switched on), else 1."""
        a = self.abar[:, latent].clone()
        fired = a > 0
        fill = float(a[fired].mean()) if fired.any() else 1.0
        a[~fired] = fill
        return a

    def top_tokens(self, latent: int, n: int | None) -> list[int] | None:
        """The n tokens where the latent is most active on average (None: all tokens)."""
        m = self.mean.shape[0]
        if n is None or n >= m:
            return None
        return [int(i) for i in torch.argsort(self.mean[:, latent], descending=True)[:n]]


def store_h(store: Any, rows: np.ndarray) -> Tensor:
    return torch.from_numpy(np.asarray(store[np.asarray(rows, dtype=np.int64)], dtype=np.float32))


@torch.no_grad()
def code_stats(sae: BaseSAE, store: Any, rows: np.ndarray, batch: int = 128) -> CodeStats:
    sae.eval()
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        raise ValueError("no rows to measure the SAE's codes on")
    sums: list[Tensor] = []  # Σ α, Σ [α > 0], Σ α·[α > 0] over images
    scores = []
    for start in range(0, len(rows), batch):
        codes = encode_tokens(sae, store_h(store, rows[start : start + batch])).double()
        on = codes > 0
        part = [codes.sum(0), on.sum(0).double(), (codes * on).sum(0)]
        sums = part if not sums else [a + b for a, b in zip(sums, part, strict=True)]
        scores.append(codes.sum(1).float().numpy())
    total, fired, pos_sum = sums
    n = float(len(rows))
    abar = torch.where(fired > 0, pos_sum / fired.clamp_min(1), torch.zeros_like(pos_sum))
    return CodeStats(
        rows, abar.float(), (total / n).float(), (fired / n).float(), np.concatenate(scores)
    )


@dataclass
class PCABasis:
    mean: Tensor  # (C, K, K)
    components: Tensor  # (n, C, K, K), unit norm
    projections: np.ndarray  # (N, n) of the fitting rows
    h_norm: float  # mean ‖h‖ of the fitting rows


@torch.no_grad()
def pca_basis(store: Any, rows: np.ndarray, n_components: int = 64, seed: int = 0) -> PCABasis:
    """Top principal directions of raw h over `rows` (randomised SVD, seeded)."""
    h = store_h(store, rows)
    flat = h.flatten(1).double()
    mu = flat.mean(0)
    x = flat - mu
    q = min(n_components, min(x.shape) - 1)
    if q < 1:
        raise ValueError(f"PCA needs at least 2 rows, got {len(rows)}")
    torch.manual_seed(seed)
    _, _, v = torch.pca_lowrank(x, q=q, center=False, niter=4)
    comps = v.T[:q]  # (q, D)
    proj = (x @ comps.T).float().numpy()
    shape = h.shape[1:]
    return PCABasis(
        mean=mu.float().reshape(shape),
        components=comps.float().reshape(q, *shape),
        projections=proj,
        h_norm=float(flat.norm(dim=1).mean()),
    )


def auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC of each column of scores (N, K) for bool labels (N,); NaN if a class is absent."""
    from sklearn.metrics import roc_auc_score

    s = np.asarray(scores, dtype=np.float64)
    s = s[:, None] if s.ndim == 1 else s
    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        return np.full(s.shape[1], np.nan)
    return np.array([roc_auc_score(y, s[:, j]) for j in range(s.shape[1])])


def rank_by_auroc(scores: np.ndarray, labels: np.ndarray, n: int) -> list[dict[str, Any]]:
    """Columns of scores ranked by |AUROC − 0.5| (best first); each with its AUROC and sign."""
    auc = auroc(scores, labels)
    sep = np.where(np.isnan(auc), -1.0, np.abs(auc - 0.5))
    order = np.lexsort((np.arange(len(sep)), -sep))[:n]
    return [
        {"index": int(i), "auroc_train": float(auc[i]), "sign": 1 if auc[i] >= 0.5 else -1}
        for i in order
        if np.isfinite(auc[i])
    ]
