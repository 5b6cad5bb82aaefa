"""Unconditional DDIM sampling from a backbone (the toy model's checks and figures)."""

from __future__ import annotations

import torch

from hsae.diffusion.backbone import DiffusionBackbone


@torch.no_grad()
def ddim_samples(
    backbone: DiffusionBackbone,
    n: int,
    steps: int = 50,
    seed: int = 0,
    spacing: str = "trailing",
    eta: float = 0.0,
) -> torch.Tensor:
    """Unconditional DDIM samples: resume from pure noise at the top of the grid, clipping x0
    when the model's scheduler config asks for it (clip_sample), as diffusers' pipelines do.
    The grid's spacing defaults to "trailing", which starts from noise at t = T (see ddim_grid);
    eta > 0 adds DDIM's fresh noise per step (1 = ancestral sampling), drawn from `seed` too."""
    from hsae.diffusion.invert import ddim_grid, resume, sampling_clip

    grid = ddim_grid(backbone, steps, spacing)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, *backbone.latent_shape), generator=g).to(backbone.device, backbone.dtype)
    z0, _ = resume(
        backbone,
        z,
        len(grid.timesteps) - 1,
        grid,
        clip_x0=sampling_clip(backbone),
        eta=eta,
        generator=g,
    )
    return backbone.decode(z0)
