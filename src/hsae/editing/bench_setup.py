"""The edit benchmark's inputs: its configuration, the runner protocol, and the validation and
test images inverted once and shared by every feature, size and window (`hsae.editing.bench`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from hsae.editing.units import EDIT_MODES

DEFAULT_SIZES = (0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5)
DIRECTIONS = ("add", "remove")
TEST_SIZES = ("swept", "matched", "validated")
SIDE_WINDOWS = ("all", "selected")


@dataclass
class EditBenchConfig:
    attributes: list[str] | None = None
    n_test: int = 200
    n_val: int = 64
    n_stats: int = 2000  # train rows for the SAE statistics, PCA and the direction
    sizes: tuple[float, ...] = DEFAULT_SIZES
    windows: tuple[int | str, ...] = ("all",)
    mode: str = "error_preserving"
    n_candidates: int = 8
    effect_images: int = 16
    effect_size: float = 0.5
    top_channels: int | None = 16
    pca_components: int = 64
    min_keep: float = 0.95
    components: bool | str = True  # True / "all", "channel" (channel-token SAEs only), False
    top_positions: int | None = None  # spatial-token SAEs: a latent@N family on its top positions
    max_group: int | None = None  # test/validation images per add or remove group (None: all)
    test_sizes: str = "swept"  # "swept": every size; "matched": validated + largest; "validated"
    side_windows: str = "all"  # windows before the last: "all" features, or "selected" ones
    n_examples: int = 4
    batch: int = 64
    seed: int = 0
    progress: bool = True

    def check(self) -> None:
        if self.mode not in EDIT_MODES:
            raise ValueError(f"--mode must be one of {EDIT_MODES}, got {self.mode!r}")
        if self.n_test < 1 or self.n_val < 1:
            raise ValueError(f"--n-test and --n-val must be >= 1: {self.n_test}, {self.n_val}")
        if not self.sizes or min(self.sizes) <= 0:
            raise ValueError(f"--sizes must be positive magnitudes, got {list(self.sizes)}")
        if not self.windows:
            raise ValueError("--windows needs at least one window (1, N or all)")
        if not 0 <= self.min_keep <= 1:
            raise ValueError(f"--min-keep must be in [0, 1], got {self.min_keep}")
        if self.test_sizes not in TEST_SIZES:
            raise ValueError(f"--test-sizes must be one of {TEST_SIZES}, got {self.test_sizes!r}")
        if self.side_windows not in SIDE_WINDOWS:
            raise ValueError(
                f"--side-windows must be one of {SIDE_WINDOWS}, got {self.side_windows!r}"
            )
        if self.max_group is not None and self.max_group < 1:
            raise ValueError(f"--max-group must be >= 1, got {self.max_group}")
        if self.batch < 1 or self.n_candidates < 1:
            raise ValueError(f"--batch and --candidates must be >= 1: {self.batch}")


class EditRunner(Protocol):
    """Inverts images once and resumes them with an H-space edit (tests use a fake)."""

    def invert(self, x: Tensor) -> tuple[Any, Tensor, Tensor]:
        """(state, unedited resume in [-1, 1], h_t at the first resumed step) for images x."""
        ...

    def resume(self, state: Any, idx: np.ndarray, edit: Callable, window: int | str) -> Tensor:
        """Images of rows `idx` of `state` resumed with h → edit(h) on the window's steps."""
        ...


@dataclass
class ImageSet:
    name: str
    rows: np.ndarray
    ids: list[str]
    x: Tensor
    x_clean: Tensor
    h: Tensor
    pred: Tensor  # (B, A) bool
    logit: Tensor | None
    state: Any
    masks: dict[str, Tensor | None] = field(default_factory=dict)


@dataclass
class BenchInputs:
    store: Any
    saes: dict[str, Any]  # name → BaseSAE
    classifier: Any
    runner: EditRunner
    load_images: Callable[[np.ndarray], Tensor]
    masks: Callable[[list[str], str], Tensor | None] | None = None
    check_h: Callable[[np.ndarray, Tensor], None] | None = None
    cache_dir: Path | None = None  # keeps finished parts for a resumed run (bench_cache)


def classify(clf: Any, x: Tensor) -> tuple[Tensor, Tensor | None]:
    if hasattr(clf, "predict_logits"):
        logit = torch.as_tensor(clf.predict_logits(x)).float()
        return logit > 0, logit
    return torch.as_tensor(clf.predict(x)).bool(), None


def prepare_images(name: str, rows: np.ndarray, inputs: BenchInputs, names: list[str]) -> ImageSet:
    store = inputs.store
    ids = [store.ids[int(r)] for r in rows]
    x = inputs.load_images(rows)
    state, x_clean, h = inputs.runner.invert(x)
    if inputs.check_h is not None:
        inputs.check_h(rows, h)
    pred, logit = classify(inputs.classifier, x_clean)
    masks = {a: (inputs.masks(ids, a) if inputs.masks else None) for a in names}
    return ImageSet(name, rows, ids, x, x_clean, h.float(), pred, logit, state, masks)
