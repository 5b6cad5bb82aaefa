"""Random baseline of Table 2 ("Random"): two fixed normal matrices, never trained.

codes = h · W_enc and ĥ = codes · W_dec with every entry of W_enc (C·K·K, L) and W_dec
(L, C·K·K) drawn i.i.d. N(0, 1) from the global torch RNG at construction (the paper's "two
normally distributed matrices"; the matrices are saved, so a loaded baseline is the same one).
Biases exist for the shared layout but are zero. Nothing is rescaled, so the error is huge on
purpose: for any fixed h, over the draw of the matrices (d = C·K·K),

    E‖ĥ‖² = d·L·‖h‖²,   E⟨ĥ, h⟩ = 0,   so   E‖ĥ − h‖² = (d·L + 1)·‖h‖²,

i.e. a per-element mean squared error of about L·‖h‖² (Table 2 reports MSE ~7e5).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from hsae.sae.base import SAEConfig
from hsae.sae.flat import FlatLayout
from hsae.sae.registry import register


@register("random")
class RandomBaseline(FlatLayout):
    """Linear encoder/decoder with fixed N(0, 1) entries; codes (B, L) dense and signed."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        d, n = cfg.d_in, cfg.n_latents
        # Buffers, not parameters: saved with the weights, invisible to an optimizer.
        self.register_buffer("W_enc", torch.randn(d, n))
        self.register_buffer("b_enc", torch.zeros(n))
        self.register_buffer("W_dec", torch.randn(n, d))
        self.register_buffer("b_dec", torch.zeros(d))

    @staticmethod
    def expected_sq_error_ratio(d_in: int, n_latents: int) -> float:
        """E‖ĥ − h‖² / ‖h‖² over the draw of the matrices: d·L + 1 (see the module docstring)."""
        return float(d_in * n_latents + 1)

    def activation(self, pre: Tensor) -> Tensor:
        return pre  # "two normal matrices": a purely linear map

    def fit(self, batches: Iterable[Any] = (), max_images: int | None = None) -> RandomBaseline:
        """No-op with `PCABaseline.fit`'s signature: nothing is learned, nothing is read (so an
        endless batch source is left untouched). Returns self."""
        return self
