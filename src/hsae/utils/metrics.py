"""Image metrics shared by every stage (images in [-1, 1], data range 2)."""

from __future__ import annotations

import math


def psnr(mse: float, data_range: float = 2.0) -> float:
    """PSNR in dB for images in [-1, 1] (range 2)."""
    return float("inf") if mse == 0 else 10 * math.log10(data_range**2 / mse)
