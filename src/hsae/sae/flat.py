"""Flat baseline: one token per image, the whole C·K·K vector (what §3.1 says is too costly).

For Stable Diffusion 2.1 (C·K·K = 81920) with L = 512 this is ~8.4e7 parameters, against
~6.8e4 for the channel-aware SAE; it is here as the comparison point.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from hsae.sae.base import BaseSAE, SAEConfig
from hsae.sae.registry import register


class FlatLayout(BaseSAE):
    """Shared layout of every one-token-per-image model: the whole C·K·K vector in, codes (B, L),
    a linear encoder/decoder pair W_enc (d, L) / W_dec (L, d). Not registered itself."""

    code_axes: ClassVar[tuple[str, ...]] = ("latent",)
    contexts: ClassVar[tuple[str, ...]] = ("none",)

    @classmethod
    def token_dim(cls, n_channels: int, spatial: int) -> int:
        return n_channels * spatial * spatial

    def target_tokens(self, h: Tensor) -> Tensor:
        return h.flatten(1)

    def pre_activation(self, h: Tensor, image_index: Tensor | None = None) -> Tensor:
        self.check_input(h)
        return self.target_tokens(h) @ self.W_enc + self.b_enc

    def decode(self, codes: Tensor) -> Tensor:
        self.check_codes(codes, ())
        k = self.cfg.spatial
        out = codes @ self.W_dec + self.b_dec
        return out.reshape(codes.shape[0], self.cfg.n_channels, k, k)


@register("flat")
class FlatSAE(FlatLayout):
    """ReLU codes with an L1 penalty on the flattened h. Codes: (B, L)."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self._init_params(cfg.d_in)
