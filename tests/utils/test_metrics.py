"""Shared image metrics (hsae.utils.metrics): SSIM and PSNR through scikit-image, pixel change."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio

from hsae.utils.metrics import PIXEL_CHANGE_TOL, image_metrics, mse, pixel_metrics, psnr, ssim


def rand_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, size, size), generator=g) * 2 - 1


def wang_ssim(a: torch.Tensor, b: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Wang et al. 2004 written out: Gaussian window, valid windows, data range 2, RGB mean."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    w = (g[:, None] * g[None, :] / g.sum() ** 2).expand(3, 1, size, size)
    a, b = a.double(), b.double()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=3)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.02**2, 0.06**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return s.flatten(1).mean(1)


def test_ssim_is_wangs_gaussian_window_ssim() -> None:
    x = rand_images(3)
    y = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(-1, 1)
    np.testing.assert_allclose(ssim(x, y).numpy(), wang_ssim(x, y).numpy(), atol=1e-6)


def test_ssim_identity_symmetry_and_monotonic_in_noise() -> None:
    x = rand_images(2)
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    scores = [float(ssim(x, x + s * noise)[0]) for s in (0.05, 0.2, 0.8)]
    assert 1 > scores[0] > scores[1] > scores[2]
    y = x + 0.1 * noise
    torch.testing.assert_close(ssim(x, y), ssim(y, x))


def test_ssim_of_constant_images_has_its_closed_form() -> None:
    a, b = torch.full((1, 3, 16, 16), 0.2), torch.full((1, 3, 16, 16), -0.4)
    c1 = (0.01 * 2) ** 2
    want = (2 * 0.2 * -0.4 + c1) / (0.2**2 + 0.4**2 + c1)  # σ = 0: only the luminance term
    assert abs(float(ssim(a, b)[0]) - want) < 1e-6


def test_ssim_small_images_and_errors() -> None:
    x = rand_images(1, size=6)
    assert abs(float(ssim(x, x)[0]) - 1) < 1e-6  # window shrinks to 5×5
    with pytest.raises(ValueError, match="ssim"):
        ssim(x, x[0])
    with pytest.raises(ValueError, match="3×3"):
        ssim(rand_images(1, size=2), rand_images(1, size=2))


def test_psnr_is_scikit_images() -> None:
    x, y = rand_images(1), rand_images(1, seed=1)
    want = peak_signal_noise_ratio(x.double().numpy(), y.double().numpy(), data_range=2.0)
    assert abs(psnr(mse(x, y)) - want) < 1e-6
    assert psnr(0.0) == math.inf


def test_image_metrics() -> None:
    x = rand_images(2)
    m = image_metrics(x, x)
    assert m["mse"] == [0.0, 0.0] and m["psnr_db"] == [math.inf, math.inf]
    m = image_metrics(x, x + 0.1)
    assert abs(m["mse"][0] - 0.01) < 1e-6 and abs(m["psnr_db"][0] - 10 * math.log10(400)) < 1e-3


def test_pixel_metrics_count_pixels_over_the_tolerance() -> None:
    a = torch.zeros(3, 4, 4)
    b = a.clone()
    b[0, 0, :2] = 2 * PIXEL_CHANGE_TOL  # two pixels, one channel: changed
    b[1, 3, 3] = PIXEL_CHANGE_TOL / 2  # under the tolerance: not changed
    m = pixel_metrics(b, a)
    assert m["changed_frac"] == 2 / 16 and m["max_abs"] == pytest.approx(2 * PIXEL_CHANGE_TOL)
    assert m["mse"] == pytest.approx(float((b - a).pow(2).mean()))
