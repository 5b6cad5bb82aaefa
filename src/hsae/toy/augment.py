"""Label-preserving image degradations: the mild blur and pixel noise that separate DDPM samples
from the renders they learned. The classifier trains on them (`hsae toy train-classifier`) and
`hsae toy robustness` measures how its verdicts move under them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_blur(x: torch.Tensor, sigma: float | torch.Tensor, taps: int = 5) -> torch.Tensor:
    """Blur float (B, C, H, W) images by a separable `taps`-tap Gaussian, edges replicated.

    `sigma` is one value or one per image (B,); sigma 0 leaves an image unchanged.
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"expected float images (B, C, H, W), got {x.dtype} {tuple(x.shape)}")
    if taps < 1 or taps % 2 == 0:
        raise ValueError(f"taps must be a positive odd number, got {taps}")
    b, c, h, w = x.shape
    sig = torch.as_tensor(sigma, dtype=x.dtype).expand(b)
    if (sig < 0).any():
        raise ValueError(f"blur sigma must be >= 0, got {sig.min().item()}")
    r = torch.arange(taps, dtype=x.dtype) - taps // 2
    # Clamping sigma lets exp() put all the weight on the centre tap: sigma 0 is the identity.
    k = torch.exp(-(r**2) / (2 * sig.clamp_min(1e-3)[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # one kernel per (image, channel)
    p = taps // 2
    y = F.pad(x.reshape(1, b * c, h, w), (p, p, p, p), mode="replicate")
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    return F.conv2d(y, k[:, None, None, :], groups=b * c).reshape(b, c, h, w)


def pixel_noise(
    x: torch.Tensor, std: float | torch.Tensor, gen: torch.Generator | None = None
) -> torch.Tensor:
    """Float images plus Gaussian noise of std `std` (one value, or one per image)."""
    std = torch.as_tensor(std, dtype=x.dtype).expand(x.shape[0])
    return x + std[:, None, None, None] * torch.randn(x.shape, generator=gen, dtype=x.dtype)


def degrade(
    x: torch.Tensor, max_sigma: float, max_noise: float, p: float, gen: torch.Generator
) -> torch.Tensor:
    """Blur a random share `p` of a batch in [-1, 1] (sigma ~ U(0, max_sigma) px) and add pixel
    noise to an independent share `p` (std ~ U(0, max_noise) in 0-255 units)."""
    b = x.shape[0]

    def pick(scale: float) -> torch.Tensor:
        v = torch.rand(b, generator=gen) * scale
        return torch.where(torch.rand(b, generator=gen) < p, v, torch.zeros(b))

    if max_sigma > 0:
        x = gaussian_blur(x, pick(max_sigma))
    if max_noise > 0:
        x = pixel_noise(x, pick(2 * max_noise / 255), gen)  # [-1, 1] spans 2, not 255
    return x
