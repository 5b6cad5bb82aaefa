from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hsae.toy.augment import degrade, gaussian_blur, pixel_noise


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """(size, size) float64 Gaussian summing to 1, centred: the reference the blur must match."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def _images(b: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_blur_sigma_zero_is_identity() -> None:
    x = _images()
    assert torch.equal(gaussian_blur(x, 0.0), x)


def test_blur_matches_the_2d_gaussian_window() -> None:
    x = _images().double()
    w = gaussian_window(5, 0.7).expand(3, 1, 5, 5)
    ref = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), w, groups=3)
    torch.testing.assert_close(gaussian_blur(x, 0.7), ref)


def test_blur_takes_one_sigma_per_image() -> None:
    x = _images(3)
    out = gaussian_blur(x, torch.tensor([0.0, 0.5, 0.9]))
    assert torch.equal(out[0], x[0])
    for i, s in ((1, 0.5), (2, 0.9)):
        torch.testing.assert_close(out[i], gaussian_blur(x[i : i + 1], s)[0])
    # A blur keeps a constant image constant and lowers the variance of a random one.
    assert out[2].var() < out[1].var() < x[1].var()


@pytest.mark.parametrize("bad", [-0.1, torch.tensor([0.5, -1.0, 0.0, 0.0])])
def test_blur_rejects_negative_sigma(bad: float | torch.Tensor) -> None:
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        gaussian_blur(_images(), bad)


def test_blur_rejects_uint8_and_bad_taps() -> None:
    with pytest.raises(ValueError, match="float images"):
        gaussian_blur(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 0.5)
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(_images(), 0.5, taps=4)


def test_pixel_noise_has_the_requested_std_per_image() -> None:
    x = torch.zeros(2, 3, 64, 64)
    out = pixel_noise(x, torch.tensor([0.0, 0.1]), torch.Generator().manual_seed(0))
    assert torch.equal(out[0], x[0])
    assert abs(out[1].std().item() - 0.1) < 0.005


def test_degrade_touches_about_p_of_the_images_and_is_seeded() -> None:
    x = _images(400)
    out = degrade(x, 0.9, 8.0, 0.5, torch.Generator().manual_seed(1))
    again = degrade(x, 0.9, 8.0, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    changed = (out != x).flatten(1).any(1).float().mean().item()
    assert 0.65 < changed < 0.85  # blurred or noised: 1 - 0.5 * 0.5
    assert torch.equal(degrade(x, 0.9, 8.0, 0.0, torch.Generator()), x)
