"""Invert → resume round trip of a backbone: how exactly DDIM inversion reproduces real images.

Without any edit, resuming from the inverted z_t should give back the input; what remains is the
error of the ε(x_t) ≈ ε(x_{t-1}) approximation, which shrinks with more steps. Every edit is
measured against this floor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hsae.diffusion.backbone import DiffusionBackbone
from hsae.diffusion.invert import invert, resume
from hsae.utils.metrics import mse, psnr


@torch.no_grad()
def roundtrip_errors(
    backbone: DiffusionBackbone,
    images: torch.Tensor,
    steps_list: Sequence[int] = (10, 25, 50),
    t: float = 0.7,
    prompt: str = "",
) -> list[dict[str, float]]:
    """Pixel MSE / PSNR of decode(resume(invert(encode(x)))) against x, per step count."""
    z0 = backbone.encode(images)
    rows = []
    for steps in steps_list:
        inv = invert(backbone, z0, t=t, steps=steps, prompt=prompt)
        z_rec, _ = resume(backbone, inv.z_t, inv.t_index, inv.grid, prompt=prompt)
        x_rec = backbone.decode(z_rec)
        err = mse(x_rec, images.to(x_rec))
        rows.append({"steps": steps, "timestep": inv.timestep, "mse": err, "psnr_db": psnr(err)})
    return rows


def format_table(rows: list[dict[str, float]]) -> str:
    lines = ["| DDIM steps | t (timestep) | pixel MSE | PSNR (dB) |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['steps']} | {r['timestep']} | {r['mse']:.2e} | {r['psnr_db']:.1f} |")
    return "\n".join(lines)
