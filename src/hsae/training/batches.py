"""Data for the trainer: store rows → shuffled image batches in a reproducible order, image
indices for the ζ context, and the SAE's data-dependent initialisation."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from hsae.sae import BaseSAE
from hsae.training.config import GEOMETRIC_MEDIAN_TOKENS, StoreLike, TrainConfig
from hsae.utils.splits import split_rows


def image_index_for_rows(store: StoreLike, rows: np.ndarray, split: str = "train") -> np.ndarray:
    """The image index the SAE was trained with for these store rows (rank within the split)."""
    idx = split_rows(store, split)
    rank = np.searchsorted(idx, rows)
    if np.any(rank >= len(idx)) or np.any(idx[np.minimum(rank, len(idx) - 1)] != rows):
        raise ValueError(f"some rows are not in split {split!r}; use image_index=None for them")
    return rank


def row_timesteps(meta: dict, rows: np.ndarray) -> np.ndarray:
    """The diffusion timestep of each store row: its resumed step's in a window store
    (hsae.data.window: S rows per image, image-major), else the store's single timestep."""
    window = meta.get("window")
    if not window:
        if meta.get("timestep") is None:
            raise ValueError("the store records no timestep; the timestep context needs one")
        return np.full(len(rows), int(meta["timestep"]), dtype=np.int64)
    ts = np.asarray(window["timesteps"], dtype=np.int64)
    return ts[np.asarray(rows, dtype=np.int64) % len(ts)]


class StoreBatches(Iterator[tuple[Tensor, Tensor]]):
    """Endless image batches (h float32 (B, C, K, K), image index (B,)) over `indices`.

    Epoch e visits the rows in a permutation that depends only on (seed, e); a short tail is
    dropped so every step sees the same number of tokens. `state_dict()` is the position.
    """

    def __init__(
        self,
        store: StoreLike,
        indices: np.ndarray,
        batch_images: int,
        seed: int,
        context: np.ndarray | None = None,
    ):
        if batch_images > len(indices):
            raise ValueError(
                f"batch of {batch_images} images is larger than the {len(indices)} training "
                "images in the store; lower --batch"
            )
        self.store, self.indices, self.batch, self.seed = store, indices, batch_images, seed
        # The ζ input per position (e.g. each row's timestep); None: the position itself, which is
        # the image index of the paper's context.
        self.context = context
        self.epoch, self.offset = 0, 0
        self._order: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        """Positions into `indices` for one epoch (cached: one permutation per epoch)."""
        if self._order is None or self._order[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.indices))
            self._order = (epoch, perm)
        return self._order[1]

    def __next__(self) -> tuple[Tensor, Tensor]:
        if self.offset + self.batch > len(self.indices):
            self.epoch, self.offset = self.epoch + 1, 0
        # Sorted rows read the memory maps front to back; the loss is a mean, order-free.
        pos = np.sort(self.order(self.epoch)[self.offset : self.offset + self.batch])
        self.offset += self.batch
        h = torch.from_numpy(np.asarray(self.store[self.indices[pos]], dtype=np.float32))
        ctx = pos if self.context is None else self.context[pos]
        return h, torch.from_numpy(np.asarray(ctx).astype(np.int64))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed, "n": len(self)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if (state["seed"], state["n"]) != (self.seed, len(self)):
            raise ValueError(
                f"checkpoint data position is for seed {state['seed']} over {state['n']} "
                f"images, this run has seed {self.seed} over {len(self)}"
            )
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])

    def __len__(self) -> int:
        return len(self.indices)


def sample_images(store: StoreLike, indices: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to n training images (float32), a fixed function of the seed, for init statistics."""
    rng = np.random.default_rng([seed, 0x1A17])
    pick = np.sort(rng.choice(len(indices), size=min(n, len(indices)), replace=False))
    return np.asarray(store[indices[pick]], dtype=np.float32)


def geometric_median(x: Tensor, iters: int = 50, tol: float = 1e-7) -> Tensor:
    """Weiszfeld iterations for argmin_y Σ‖x_i − y‖, started at the mean; x (n, d)."""
    x = x.double()
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-12)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        done = (y_new - y).norm() <= tol * max(float(y.norm()), 1.0)
        y = y_new
        if done:
            break
    return y.float()


def input_scale_of(h: np.ndarray) -> float:
    """s = sqrt(mean h²): dividing by s makes E‖token‖² = d_in for every token layout."""
    s = math.sqrt(float(np.mean(np.square(h, dtype=np.float64))))
    if not math.isfinite(s):
        raise ValueError("the activation sample holds NaN/inf values; cannot normalise")
    return s if s > 0 else 1.0


@torch.no_grad()
def init_sae(sae: BaseSAE, sample: np.ndarray, cfg: TrainConfig) -> float:
    """Set b_dec from the (scaled) sample and return the input scale the run trains with."""
    scale = input_scale_of(sample) if cfg.normalize else 1.0
    if cfg.b_dec_init != "zeros":
        h = torch.from_numpy(sample).to(sae.b_dec.device) / scale
        tokens = sae.target_tokens(h).reshape(-1, sae.cfg.d_in)
        if cfg.b_dec_init == "mean":
            stat = tokens.double().mean(0)
        else:  # Weiszfeld holds a few copies of its input: a token sample is plenty
            g = torch.Generator().manual_seed(cfg.seed)
            keep = torch.randperm(len(tokens), generator=g)[:GEOMETRIC_MEDIAN_TOKENS]
            stat = geometric_median(tokens[keep.to(tokens.device)])
        sae.init_decoder_bias(stat)
    if cfg.unit_norm_decoder:
        sae.normalize_decoder()
    return scale
