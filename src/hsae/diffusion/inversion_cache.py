"""On-disk cache of DDIM inversions, so a κ sweep or a repeated edit inverts each image once.

One file per image: `<root>/<key[:2]>/<key>.safetensors` holding z_t (in the backbone's dtype,
so a cached z_t is bit-identical to a fresh one from the same batch) and, as metadata, the key's
inputs for inspection. The key is the sha256 of

- the preprocessed image tensor's bytes (float32, (3, H, W) in [-1, 1]: what is inverted, not the
  file, so two files decoding to the same pixels share an entry),
- the model: `backbone.describe()`, which includes a fingerprint of the weights (a strided sample
  of every parameter: "toy" alone would name any retrained toy model), and the dtype,
- t, steps and the prompt.

Root: `cache_root(explicit)` = the explicit folder, else $HSAE_CACHE, else ~/.cache/hsae/inversions.
Writes are atomic (temp file + rename). An unreadable or inconsistent file is treated as a miss and
rewritten with a warning, never an error: the cache can always be deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from hsae.diffusion.backbone import DiffusionBackbone
from hsae.diffusion.invert import Inversion, ddim_grid, invert
from hsae.utils.io import atomic_write_bytes

ENV_VAR = "HSAE_CACHE"
DEFAULT_ROOT = Path("~/.cache/hsae/inversions")
FORMAT = "hsae-inversion-v1"


def cache_root(explicit: Path | str | None = None) -> Path:
    """--cache-dir, else $HSAE_CACHE, else ~/.cache/hsae/inversions (user-expanded)."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else DEFAULT_ROOT.expanduser()


def model_key(backbone: DiffusionBackbone) -> dict[str, Any]:
    """The model part of a cache key: describe() (which carries the weights fingerprint), dtype."""
    return {**backbone.describe(), "dtype": str(backbone.dtype)}


def cache_key(image: Tensor, model: dict[str, Any], t: float, steps: int, prompt: str) -> str:
    """sha256 over the preprocessed image bytes and the run settings (see module docstring)."""
    if image.ndim != 3:
        raise ValueError(f"cache_key takes one image (3, H, W), got shape {tuple(image.shape)}")
    h = hashlib.sha256()
    x = image.detach().to("cpu", torch.float32).contiguous()
    h.update(repr(tuple(x.shape)).encode())
    h.update(x.numpy().tobytes())
    settings = {"model": model, "t": float(t), "steps": int(steps), "prompt": prompt}
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


@dataclass
class InversionCache:
    """A cache folder plus hit/miss counters; `enabled=False` makes every lookup a miss."""

    root: Path
    enabled: bool = True
    hits: int = 0
    misses: int = 0
    recomputed: int = 0  # corrupt or inconsistent files that were replaced

    @classmethod
    def open(cls, explicit: Path | str | None = None, enabled: bool = True) -> InversionCache:
        return cls(cache_root(explicit), enabled)

    def path_for(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def load(self, key: str, t_index: int, timestep: int, shape: tuple[int, ...]) -> Tensor | None:
        """z_t (1, *shape) for key, or None on a miss; a bad file is reported and counted."""
        path = self.path_for(key)
        if not self.enabled or not path.is_file():
            return None
        try:
            tensors = st_load(path.read_bytes())
            z = tensors["z_t"]
            meta = tensors["meta"].tolist()
            if meta != [t_index, timestep]:
                raise ValueError(f"stored (t_index, timestep) {meta} != {[t_index, timestep]}")
            if tuple(z.shape) != tuple(shape) or not torch.isfinite(z).all():
                raise ValueError(f"stored z_t of shape {tuple(z.shape)} is not a finite {shape}")
        except Exception as e:  # any damage means "recompute", never a failed edit
            print(f"inversion cache: recomputing {path} ({type(e).__name__}: {e})", file=sys.stderr)
            self.recomputed += 1
            return None
        return z[None]

    def save(self, key: str, z_t: Tensor, inv: Inversion, info: dict[str, Any]) -> None:
        if not self.enabled:
            return
        meta = torch.tensor([inv.t_index, inv.timestep], dtype=torch.int64)
        text = {"format": FORMAT, "info": json.dumps(info, sort_keys=True)}
        data = st_save({"z_t": z_t.detach().cpu().contiguous(), "meta": meta}, metadata=text)
        atomic_write_bytes(self.path_for(key), data)


@torch.no_grad()
def invert_cached(
    backbone: DiffusionBackbone,
    images: Tensor,
    t: float = 0.7,
    steps: int = 50,
    prompt: str = "",
    cache: InversionCache | None = None,
    progress: bool = False,
) -> Inversion:
    """`invert(backbone, backbone.encode(images), t, steps, prompt)` with a per-image disk cache.

    images: (B, 3, H, W) in [-1, 1]. Cached rows are read back; the others are encoded and
    inverted together in one batch, then written. cache=None inverts everything (no disk access).
    """
    grid = ddim_grid(backbone, steps)
    t_index = grid.index_for(t)
    timestep = grid.timesteps[t_index]
    if cache is None:
        return invert(backbone, backbone.encode(images), t, steps, prompt, progress)
    model = model_key(backbone)
    keys = [cache_key(x, model, t, steps, prompt) for x in images]
    shape = tuple(backbone.latent_shape)
    rows: list[Tensor | None] = [cache.load(k, t_index, timestep, shape) for k in keys]
    missing = [i for i, z in enumerate(rows) if z is None]
    cache.hits += len(keys) - len(missing)
    cache.misses += len(missing)
    if missing:
        fresh = invert(backbone, backbone.encode(images[missing]), t, steps, prompt, progress)
        info = {"model": model, "t": t, "steps": steps, "prompt": prompt}
        for j, i in enumerate(missing):
            rows[i] = fresh.z_t[j : j + 1]
            cache.save(keys[i], fresh.z_t[j], fresh, info)
    z_t = torch.cat([z.to(backbone.device, backbone.dtype) for z in rows if z is not None])
    return Inversion(z_t=z_t, t_index=t_index, timestep=timestep, grid=grid)
