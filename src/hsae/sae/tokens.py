"""Codes as tokens: every SAE's codes reshaped to (B, M, L), M tokens of L latents, whatever its
layout (channel tokens, spatial tokens or one flat token per image)."""

from __future__ import annotations

from torch import Tensor

from hsae.sae.base import BaseSAE
from hsae.sae.threshold import codes_as_tokens, threshold_codes


def n_tokens(sae: BaseSAE) -> int:
    """M, the number of code tokens per image (C for channel tokens, K·K spatial, 1 flat)."""
    axes = sae.code_axes
    if len(axes) <= 1:
        return 1
    if axes[0] == "channel":
        return sae.cfg.n_channels
    return sae.cfg.spatial * sae.cfg.spatial


def encode_tokens(sae: BaseSAE, h: Tensor, threshold_k: int | None = None) -> Tensor:
    """Codes of h as (B, M, L), thresholded by eq. 9 when k is given (test-time context)."""
    codes = codes_as_tokens(sae.encode(h.to(sae.W_enc.dtype)))
    return codes if threshold_k is None else threshold_codes(codes, threshold_k)


def decode_tokens(sae: BaseSAE, tokens: Tensor, like: Tensor) -> Tensor:
    """Inverse of `encode_tokens`' reshape, then decode; returns h in like's dtype."""
    codes = tokens[:, 0] if len(sae.code_axes) == 1 else tokens
    return sae.decode(codes).to(like.dtype)
