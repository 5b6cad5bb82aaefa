"""Supervised raw-H-space directions: the Asyrp / Haas-style baseline for SAE edits.

The mean-difference direction of an attribute is d = mean(h | attr) − mean(h | ¬attr) over the
labelled rows of an activation store (train split by default). Editing adds s·d to h_t at the
edited step(s); s = 1 moves an average image without the attribute onto the average with it,
s = −1 the other way. `s` may differ per batch row, so a sweep is one batched resume.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from hsae.diffusion.hspace import HEdit


def attribute_column(store: Any, attribute: str) -> np.ndarray:
    """Bool labels of `attribute` for every store row, with an error naming what exists."""
    names = list(store.attribute_names)
    if store.attributes is None or not names:
        raise ValueError(f"activation store {store.path} has no attribute labels")
    if attribute not in names:
        raise ValueError(f"attribute {attribute!r} not in store {store.path}; it has {names}")
    return np.asarray(store.attributes[:, names.index(attribute)]) > 0


def mean_difference(store: Any, attribute: str, split: str = "train", batch: int = 256) -> Tensor:
    """d = mean(h | attr) − mean(h | ¬attr) over `split` rows, shape (C, K, K), float32."""
    rows = np.asarray(store.indices_for_split(split), dtype=np.int64)
    pos = attribute_column(store, attribute)[rows]
    if pos.all() or not pos.any():
        raise ValueError(
            f"attribute {attribute!r} is {'always' if pos.all() else 'never'} present in the "
            f"{split} split of {store.path}: no mean difference"
        )
    sums = [np.zeros(store.shape[1:], np.float64) for _ in range(2)]
    for start in range(0, len(rows), batch):
        h = np.asarray(store[rows[start : start + batch]], dtype=np.float64)
        p = pos[start : start + batch]
        sums[0] += h[p].sum(axis=0)
        sums[1] += h[~p].sum(axis=0)
    d = sums[0] / pos.sum() - sums[1] / (~pos).sum()
    return torch.from_numpy(d).float()


def direction_hook(direction: Tensor, scale: Tensor | float) -> HEdit:
    """h → h + s·d, with s a scalar or one value per batch row."""
    s = torch.as_tensor(scale, dtype=torch.float32).reshape(-1, 1, 1, 1)

    def edit(h: Tensor) -> Tensor:
        if s.shape[0] not in (1, h.shape[0]):
            raise ValueError(f"scale needs 1 or {h.shape[0]} values, got {s.shape[0]}")
        return h + s.to(h) * direction.to(h)

    return edit


def project_out(h: Tensor, direction: Tensor) -> Tensor:
    """Component of each h along the unit direction, shape (B,): how far an image sits on d."""
    u = direction.flatten() / direction.norm().clamp_min(1e-12)
    return h.flatten(1).to(u) @ u
