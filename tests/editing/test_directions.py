"""Mean-difference directions: planted shift recovered, per-row scale, clear errors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hsae.editing.directions import direction_hook, mean_difference, project_out


def _store(n: int = 200, seed: int = 0) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random((n, 2)) < 0.4, 1, -1).astype(np.int8)
    shift = np.zeros((3, 2, 2))
    shift[1, 0, 1] = 5.0
    h = rng.normal(size=(n, 3, 2, 2)) * 0.1 + (labels[:, 0] > 0)[:, None, None, None] * shift
    splits = [0] * (n - 20) + [2] * 20
    return SimpleNamespace(
        path="mem",
        shape=h.shape,
        attribute_names=["A", "B"],
        attributes=labels,
        indices_for_split=lambda s: np.array([i for i, v in enumerate(splits) if v == 0]),
        rows=h,
    )


class _Store:
    def __init__(self, ns: SimpleNamespace) -> None:
        self.__dict__.update(vars(ns))

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        return self.rows[idx].astype(np.float16)


def test_mean_difference_recovers_planted_shift() -> None:
    store = _Store(_store())
    d = mean_difference(store, "A", batch=17)
    assert d.shape == (3, 2, 2)
    assert abs(float(d[1, 0, 1]) - 5.0) < 0.1
    d[1, 0, 1] = 0
    assert d.abs().max() < 0.1
    d_b = mean_difference(store, "B")  # B is independent of A: only sampling noise leaks in
    d_b[1, 0, 1] = 0
    assert d_b.abs().max() < 0.1


def test_mean_difference_errors() -> None:
    store = _Store(_store())
    with pytest.raises(ValueError, match="'C' not in store"):
        mean_difference(store, "C")
    store.attributes = np.ones_like(store.attributes)
    with pytest.raises(ValueError, match="always present"):
        mean_difference(store, "A")
    store.attributes = None
    with pytest.raises(ValueError, match="no attribute labels"):
        mean_difference(store, "A")


def test_direction_hook_per_row_scale() -> None:
    d = torch.randn(3, 2, 2)
    h = torch.zeros(3, 3, 2, 2)
    out = direction_hook(d, torch.tensor([0.0, 1.0, -2.0]))(h)
    torch.testing.assert_close(out[2], -2 * d)
    torch.testing.assert_close(project_out(out, d), torch.tensor([0.0, 1.0, -2.0]) * d.norm())
    with pytest.raises(ValueError, match="scale"):
        direction_hook(d, torch.ones(2))(h)
