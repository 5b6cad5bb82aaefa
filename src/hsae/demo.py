"""`hsae demo`: the method end to end on the embedded toy model, in minutes on a CPU.

For now (foundation stage): toyfaces → extract h_t → store summary, a grid of inputs beside their
invert → resume reconstructions, and DDIM samples of the toy model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hsae.backbone import DiffusionBackbone
from hsae.io_utils import atomic_write_json


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


@torch.no_grad()
def ddim_samples(
    backbone: DiffusionBackbone, n: int, steps: int = 50, seed: int = 0
) -> torch.Tensor:
    """Unconditional DDIM samples: resume from pure noise at the top of the grid, clipping x0
    when the model's scheduler config asks for it (clip_sample), as diffusers' pipelines do."""
    from hsae.invert import ddim_grid, resume

    grid = ddim_grid(backbone, steps)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, *backbone.latent_shape), generator=g).to(backbone.device, backbone.dtype)
    cfg = backbone.scheduler.config
    clip = float(cfg.clip_sample_range) if cfg.get("clip_sample", False) else None
    z0, _ = resume(backbone, z, len(grid.timesteps) - 1, grid, clip_x0=clip)
    return backbone.decode(z0)


def run_demo(out: Path, n_images: int = 512, steps: int = 50, t: float = 0.7) -> dict:
    from hsae.data import ImageDataset
    from hsae.extract import extract
    from hsae.invert import invert, resume
    from hsae.store import ActivationStore
    from hsae.toyfaces import write_dataset

    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    data_dir = write_dataset(out / "data", n_images, seed=1)
    backbone = DiffusionBackbone.load("toy")
    ds = ImageDataset(data_dir, backbone.image_size)
    store_dir = extract(ds, backbone, out / "acts", t=t, steps=steps)
    store = ActivationStore(store_dir)

    x = torch.stack([ds[i][0] for i in range(8)])
    inv = invert(backbone, backbone.encode(x), t=t, steps=steps)
    x_rec = backbone.decode(resume(backbone, inv.z_t, inv.t_index, inv.grid)[0])
    grid_path = save_grid([x, x_rec, ddim_samples(backbone, 8, steps)], out / "grid.png")
    size_mb = sum(f.stat().st_size for f in store_dir.iterdir()) / 1e6
    summary = {
        "store": str(store_dir),
        "shape": list(store.shape),
        "dtype": str(store.dtype),
        "size_mb": round(size_mb, 2),
        "timestep": store.meta["timestep"],
        "t": t,
        "steps": steps,
        "grid": str(grid_path),
        "grid_rows": ["inputs", "invert→resume", "DDIM samples"],
        "seconds": round(time.time() - start, 1),
    }
    atomic_write_json(out / "demo_summary.json", summary)
    return summary


def demo_command(out: Path, n_images: int, steps: int, t: float) -> int:
    summary = run_demo(out, n_images, steps, t)
    print(json.dumps(summary, indent=2))
    return 0
