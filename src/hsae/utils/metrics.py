"""Image metrics shared by every stage; images are tensors in [-1, 1] (data range 2).

- `psnr(mse)`: PSNR in dB from an MSE, the formula of scikit-image's `peak_signal_noise_ratio`
  (10 log10(range² / MSE)); it takes the MSE because callers average MSE over a batch first.
- `ssim(a, b)`: per-image SSIM by scikit-image's `structural_similarity` with the Gaussian window
  of Wang et al. 2004 (σ = 1.5, 11 taps, K1 = 0.01, K2 = 0.03, population covariance; the mean
  over windows that lie inside the image), averaged over RGB. Images smaller than 11 pixels use
  the largest odd window that fits.
- `mse`, `image_metrics` (per-image MSE / PSNR / SSIM), `pixel_metrics` (MSE / PSNR / max |Δ| /
  fraction of pixels changed) and `pixel_change` (mean |Δpixel| inside and outside a mask).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

PIXEL_CHANGE_TOL = 0.02  # |Δ| in [-1, 1] units (1% of the range) that counts a pixel as changed
SSIM_SIGMA, SSIM_WINDOW = 1.5, 11


def psnr(mse: float, data_range: float = 2.0) -> float:
    """PSNR in dB for images in [-1, 1] (range 2); inf for identical images."""
    return float("inf") if mse == 0 else 10 * math.log10(data_range**2 / mse)


def mse(a: Tensor, b: Tensor) -> float:
    """Mean squared pixel difference over everything in a and b."""
    return float((a.float() - b.to(a.device).float()).pow(2).mean())


def ssim(a: Tensor, b: Tensor, data_range: float = 2.0) -> Tensor:
    """SSIM per image of two (B, C, H, W) batches (see the module docstring), shape (B,)."""
    from skimage.metrics import structural_similarity

    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) batches, got {a.shape} and {b.shape}")
    side = min(a.shape[-2:])
    window = min(SSIM_WINDOW, side - (1 - side % 2))  # odd, so the window has a centre
    if window < 3:
        raise ValueError(f"ssim needs images of at least 3×3 pixels, got {tuple(a.shape[-2:])}")
    x = a.detach().double().permute(0, 2, 3, 1).cpu().numpy()
    y = b.detach().double().permute(0, 2, 3, 1).cpu().numpy()
    scores = [
        structural_similarity(
            p, q, data_range=data_range, channel_axis=-1, gaussian_weights=True,
            sigma=SSIM_SIGMA, use_sample_covariance=False, win_size=window,
        )
        for p, q in zip(x, y, strict=True)
    ]  # fmt: skip
    return torch.tensor(scores, dtype=torch.float32)


def image_metrics(x: Tensor, y: Tensor) -> dict[str, list[float]]:
    """Per-image MSE, PSNR (dB, range 2) and SSIM of x against y, both (B, 3, H, W) in [-1, 1]."""
    per_image = (x.float() - y.float()).pow(2).flatten(1).mean(dim=1)
    return {
        "mse": [float(v) for v in per_image],
        "psnr_db": [psnr(float(v)) for v in per_image],
        "ssim": [float(v) for v in ssim(x, y)],
    }


def pixel_metrics(a: Tensor, b: Tensor, tol: float = PIXEL_CHANGE_TOL) -> dict[str, float]:
    """MSE / PSNR / max |Δ| / fraction of pixels changed (any channel |Δ| > tol) of two (3, H, W)
    images in [-1, 1]."""
    d = (a.float() - b.float()).abs()
    err = float(d.pow(2).mean())
    changed = float((d.amax(dim=0) > tol).float().mean())
    return {"mse": err, "psnr_db": psnr(err), "max_abs": float(d.max()), "changed_frac": changed}


def pixel_change(x_edit: Tensor, x_ref: Tensor, mask: Tensor | None) -> dict[str, np.ndarray]:
    """Per image mean |Δpixel| in [0, 1] units: whole image, outside and inside `mask`."""
    diff = ((x_edit - x_ref).abs() / 2).mean(dim=1)  # (B, S, S), channels averaged
    out = {"change": diff.flatten(1).mean(1).double().numpy()}
    if mask is None:
        nan = np.full(len(diff), np.nan)
        return {**out, "change_outside": nan, "change_inside": nan.copy()}
    m = mask.to(diff.device).bool()
    for key, sel in (("change_outside", ~m), ("change_inside", m)):
        n = sel.flatten(1).sum(1).double()
        total = (diff * sel).flatten(1).sum(1).double()
        out[key] = torch.where(n > 0, total / n.clamp_min(1), torch.nan).numpy()
    return out
