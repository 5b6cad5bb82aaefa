"""Spatial-token TopK SAE: the layout of SAeUron, sdxl-unbox and overcomplete.

h (B, C, K, K) is rearranged into B·K·K tokens of size C (one per spatial position), the
transpose of the paper's channel tokens. No context is appended. Codes: (B, K·K, L), positions in
row-major order (position p = row · K + col).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from hsae.sae.base import SAEConfig
from hsae.sae.registry import register
from hsae.sae.topk import TopKMixin


@register("spatial_topk")
class SpatialTopKSAE(TopKMixin):
    """TopK codes (k per position token) + AuxK, on C-dim spatial tokens."""

    code_axes: ClassVar[tuple[str, ...]] = ("position", "latent")
    contexts: ClassVar[tuple[str, ...]] = ("none",)

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self._init_params(cfg.d_in)
        self._init_topk(cfg)

    @classmethod
    def token_dim(cls, n_channels: int, spatial: int) -> int:
        return n_channels

    def target_tokens(self, h: Tensor) -> Tensor:
        return h.flatten(2).transpose(1, 2)

    def pre_activation(self, h: Tensor, image_index: Tensor | None = None) -> Tensor:
        self.check_input(h)
        return self.target_tokens(h) @ self.W_enc + self.b_enc

    def decode(self, codes: Tensor) -> Tensor:
        k = self.cfg.spatial
        self.check_codes(codes, (k * k,))
        out = codes @ self.W_dec + self.b_dec  # (B, K·K, C)
        return out.transpose(1, 2).reshape(codes.shape[0], self.cfg.n_channels, k, k)
