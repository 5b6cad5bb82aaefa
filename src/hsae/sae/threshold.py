"""Post-training thresholding of SAE codes (paper §3.3, eq. 9).

For one image, A = [α_1 … α_M]ᵀ (M tokens, e.g. channels, × L latents). Ā = [TopK(α_1) … TopK(α_M)]
holds each token's k largest codes and τ = min(Ā), i.e. the smallest of the per-token k-th largest
values. Every entry of A strictly below τ is set to 0, so each token keeps at least its top k and
tokens with strong codes keep more: one threshold per image, not per token.
"""

from __future__ import annotations

import torch
from torch import Tensor


def codes_as_tokens(codes: Tensor) -> Tensor:
    """View codes of any SAE layout as (B, M, L): (B, L) -> M = 1; (B, *axes, L) -> flattened."""
    if codes.ndim < 2:
        raise ValueError(f"codes need a batch and a latent axis, got shape {tuple(codes.shape)}")
    if codes.ndim == 2:
        return codes[:, None, :]
    return codes.reshape(codes.shape[0], -1, codes.shape[-1])


def _check(codes: Tensor, k: int) -> None:
    if codes.ndim != 3:
        raise ValueError(
            f"codes must be (B, M, L), got shape {tuple(codes.shape)}; "
            "see codes_as_tokens for other layouts"
        )
    if not 1 <= k <= codes.shape[-1]:
        raise ValueError(f"k must be in [1, L={codes.shape[-1]}], got {k}")


def image_thresholds(codes: Tensor, k: int) -> Tensor:
    """τ per image, shape (B,): min over tokens of each token's k largest codes."""
    _check(codes, k)
    if codes.shape[1] == 0:
        raise ValueError("codes have no tokens (M = 0)")
    return codes.topk(k, dim=-1).values.amin(dim=(1, 2))


def threshold_codes(codes: Tensor, k: int) -> Tensor:
    """Eq. 9 on a batch (B, M, L): zero every code below its image's τ. Returns a new tensor."""
    _check(codes, k)
    if codes.shape[0] == 0:
        return codes.clone()
    tau = image_thresholds(codes, k)[:, None, None]
    return codes.masked_fill(codes < tau, 0.0)


def sparsity(codes: Tensor) -> float:
    """Fraction of exactly-zero entries."""
    if codes.numel() == 0:
        raise ValueError("sparsity of an empty tensor is undefined")
    return float((codes == 0).sum()) / codes.numel()


def choose_k_for_sparsity(codes: Tensor, target: float = 0.95) -> int:
    """The k whose thresholded sparsity over the batch is closest to `target` (ties: smaller k).

    Sparsity never increases with k (τ can only fall, so more entries survive), which makes the
    smallest k reaching sparsity <= target findable by bisection in O(log L) thresholdings;
    the answer is that k or the one before it.
    """
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target sparsity must be in [0, 1], got {target}")
    _check(codes, 1)

    def s(k: int) -> float:
        return sparsity(threshold_codes(codes, k))

    lo, hi = 1, codes.shape[-1]
    if s(hi) > target:
        return hi
    while lo < hi:  # invariant: s(hi) <= target
        mid = (lo + hi) // 2
        if s(mid) <= target:
            hi = mid
        else:
            lo = mid + 1
    if hi > 1 and abs(s(hi - 1) - target) <= abs(s(hi) - target):
        return hi - 1
    return hi


@torch.no_grad()
def sparsity_curve(codes: Tensor, ks: list[int]) -> list[float]:
    """Thresholded sparsity for each k, e.g. to plot the sparsity/reconstruction trade-off."""
    return [sparsity(threshold_codes(codes, k)) for k in ks]
