"""Image helpers shared by every stage: tensors in [-1, 1] to uint8 arrays and PNG grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] → (B, H, W, 3) uint8."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_grid(rows: list[torch.Tensor], path: Path, scale: int = 3) -> Path:
    """Save rows of equally sized image batches as one PNG grid, upscaled for viewing."""
    arrays = [np.concatenate(list(to_uint8(r)), axis=1) for r in rows]
    grid = Image.fromarray(np.concatenate(arrays, axis=0))
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    grid.save(tmp)
    tmp.replace(path)
    return path
