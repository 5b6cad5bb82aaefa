"""Configuration of a training run and the reader API the trainer needs of a store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

CHECKPOINT = "checkpoint"


STATE_FILE = "trainer_state.pt"


STATE_FORMAT = "hsae-trainer-state"


STATE_VERSION = 1


B_DEC_INITS = ("mean", "geometric_median", "zeros")


GEOMETRIC_MEDIAN_TOKENS = 16384


# TrainConfig fields a resumed run may change: they do not alter the weights' trajectory.
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "log_every")


class StoreLike(Protocol):
    """The reader API the trainer needs (`hsae.data.store.ActivationStore` has it)."""

    def __len__(self) -> int: ...
    def __getitem__(self, idx: np.ndarray) -> np.ndarray: ...
    @property
    def shape(self) -> tuple[int, int, int, int]: ...
    @property
    def meta(self) -> dict[str, Any]: ...
    def indices_for_split(self, split: str) -> np.ndarray: ...


class TrainingDivergedError(RuntimeError):
    """A loss, gradient or weight became NaN/inf; the last good checkpoint was left untouched."""


@dataclass
class TrainConfig:
    """Optimisation settings. Tokens per step = batch_images × tokens per image (C for the
    paper's channel tokens, K·K for spatial tokens, 1 for the flat SAE)."""

    steps: int = 2000
    batch_images: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100  # linear lr ramp from lr / warmup_steps to lr
    l1_warmup: int = 0  # linear λ ramp over this many steps (0: full λ from step 1)
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    b_dec_init: str = "geometric_median"
    normalize: bool = True  # train on h / s with s² = mean h², i.e. E‖token‖² = d_in
    unit_norm_decoder: bool = True
    split: str = "train"  # "all" also works; a store without a partition falls back to all
    init_images: int = 256  # images sampled for the input scale and b_dec statistics

    def __post_init__(self) -> None:
        if self.b_dec_init not in B_DEC_INITS:
            raise ValueError(f"b_dec_init must be one of {B_DEC_INITS}, got {self.b_dec_init!r}")
        for name in ("steps", "warmup_steps", "l1_warmup"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_images", "checkpoint_every", "log_every", "init_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
