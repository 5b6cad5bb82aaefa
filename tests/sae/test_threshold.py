"""Paper §3.3 thresholding: τ = min over tokens of each token's top-k codes, per image."""

from __future__ import annotations

import itertools

import pytest
import torch

from hsae.sae.threshold import (
    choose_k_for_sparsity,
    codes_as_tokens,
    image_thresholds,
    sparsity,
    sparsity_curve,
    threshold_codes,
)

# One image, M = 2 channels × L = 3 latents.
A = torch.tensor([[0.9, 0.1, 0.5], [0.3, 0.2, 0.0]])


def test_k1_by_hand() -> None:
    # TopK_1 per channel: 0.9 and 0.3, so τ = 0.3; the 0.3 itself is not below τ and stays.
    want = torch.tensor([[0.9, 0.0, 0.5], [0.3, 0.0, 0.0]])
    assert torch.equal(threshold_codes(A[None], 1)[0], want)


def test_k2_by_hand() -> None:
    # TopK_2 per channel: {0.9, 0.5} and {0.3, 0.2}, so τ = 0.2.
    want = torch.tensor([[0.9, 0.0, 0.5], [0.3, 0.2, 0.0]])
    assert torch.equal(threshold_codes(A[None], 2)[0], want)


def test_k_equal_L_keeps_everything() -> None:
    assert torch.equal(threshold_codes(A[None], 3)[0], A)


def test_tau_is_per_image() -> None:
    b = torch.tensor([[0.05, 0.04, 0.0], [0.02, 0.01, 0.03]])
    out = threshold_codes(torch.stack([A, b]), 1)
    # Image 2's τ is min(0.05, 0.03) = 0.03; image 1's τ (0.3) would have zeroed all of it.
    assert torch.equal(out[1], torch.tensor([[0.05, 0.04, 0.0], [0.0, 0.0, 0.03]]))
    assert torch.equal(out[0], torch.tensor([[0.9, 0.0, 0.5], [0.3, 0.0, 0.0]]))
    assert torch.allclose(image_thresholds(torch.stack([A, b]), 1), torch.tensor([0.3, 0.03]))


def test_input_not_modified() -> None:
    codes = A[None].clone()
    threshold_codes(codes, 1)
    assert torch.equal(codes[0], A)


def _reference(codes: torch.Tensor, k: int) -> torch.Tensor:
    """Eq. 9 written literally, one image and one channel at a time."""
    out = codes.clone()
    for b in range(codes.shape[0]):
        a_bar = [sorted(row.tolist(), reverse=True)[:k] for row in codes[b]]
        tau = min(min(top) for top in a_bar)
        out[b][codes[b] < tau] = 0.0
    return out


def test_matches_literal_reference_and_keeps_topk_per_channel() -> None:
    g = torch.Generator().manual_seed(0)
    codes = torch.relu(torch.randn(5, 7, 11, generator=g))
    for k in (1, 2, 4, 11):
        out = threshold_codes(codes, k)
        assert torch.equal(out, _reference(codes, k))
        # Every channel keeps at least its own top k (counting only nonzero codes).
        kept = (out != 0).sum(-1)
        assert torch.all(kept >= (codes != 0).sum(-1).clamp(max=k))


def test_sparsity_by_hand() -> None:
    assert sparsity(A) == pytest.approx(1 / 6)
    assert sparsity(threshold_codes(A[None], 1)) == pytest.approx(3 / 6)
    assert sparsity(threshold_codes(A[None], 2)) == pytest.approx(2 / 6)
    assert sparsity_curve(A[None], [1, 2, 3]) == pytest.approx([3 / 6, 2 / 6, 1 / 6])


@pytest.mark.parametrize(
    ("target", "k"),
    [(0.5, 1), (0.4, 2), (0.42, 1), (1 / 3, 2), (0.25, 2), (0.24, 3), (0.0, 3), (1.0, 1)],
)
def test_choose_k_by_hand(target: float, k: int) -> None:
    # Sparsity for k = 1, 2, 3 is 1/2, 1/3, 1/6; ties (0.25) go to the smaller k.
    assert choose_k_for_sparsity(A[None], target) == k


def test_choose_k_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(1)
    codes = torch.relu(torch.randn(4, 16, 40, generator=g))
    curve = sparsity_curve(codes, list(range(1, 41)))
    assert all(a >= b for a, b in itertools.pairwise(curve))  # monotone in k
    for target in (0.5, 0.8, 0.9, 0.95, 0.99):
        errs = [abs(s - target) for s in curve]
        best = errs.index(min(errs)) + 1  # first minimum = smallest k among ties
        assert choose_k_for_sparsity(codes, target) == best


def test_errors() -> None:
    with pytest.raises(ValueError, match="k must be"):
        threshold_codes(A[None], 0)
    with pytest.raises(ValueError, match="k must be"):
        threshold_codes(A[None], 4)
    with pytest.raises(ValueError, match=r"\(B, M, L\)"):
        threshold_codes(A, 1)
    with pytest.raises(ValueError, match="target"):
        choose_k_for_sparsity(A[None], 1.5)
    with pytest.raises(ValueError, match="empty"):
        sparsity(torch.zeros(0))


def test_codes_as_tokens_layouts() -> None:
    assert codes_as_tokens(torch.zeros(2, 5)).shape == (2, 1, 5)  # flat SAE
    assert codes_as_tokens(torch.zeros(2, 3, 5)).shape == (2, 3, 5)  # channel / position
    assert codes_as_tokens(torch.zeros(2, 3, 4, 5)).shape == (2, 12, 5)
    assert threshold_codes(torch.zeros(0, 2, 3), 1).shape == (0, 2, 3)
