"""Deterministic DDIM inversion x0 → z_t and resumption z_t → x0, with an optional h edit.

Both directions walk the *same* ascending timestep grid (diffusers' DDIM `set_timesteps`, so the
model's `timestep_spacing` and `steps_offset` are honoured), inversion upwards and resume
downwards; "clean" is ᾱ = 1 below the grid's first timestep. Inversion evaluates the U-Net at the
current point with the *target* timestep (the usual ε(x_t) ≈ ε(x_{t-1}) approximation), and resume
evaluates it at the current point with the current timestep, so the first resumed call at t sees
exactly z_t: that is where h_t is captured or replaced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from hsae.diffusion.backbone import DiffusionBackbone
from hsae.diffusion.hspace import HEdit, hspace_hook


@dataclass(frozen=True)
class DDIMGrid:
    timesteps: tuple[int, ...]  # ascending
    alphas: tuple[float, ...]  # ᾱ at each timestep

    def alpha_before(self, i: int) -> float:
        return 1.0 if i == 0 else self.alphas[i - 1]

    def index_for(self, t_frac: float) -> int:
        """Grid index whose timestep is nearest to t_frac · T."""
        if not 0.0 < t_frac <= 1.0:
            raise ValueError(f"--t must be a fraction of T in (0, 1], got {t_frac}")
        target = t_frac * self.num_train_timesteps
        return min(range(len(self.timesteps)), key=lambda i: abs(self.timesteps[i] - target))

    num_train_timesteps: int = 1000


SPACINGS = ("leading", "trailing", "linspace")


def ddim_grid(backbone: DiffusionBackbone, steps: int, spacing: str | None = None) -> DDIMGrid:
    """The `steps`-step grid of the model's scheduler; `spacing` overrides its timestep_spacing.

    Sampling from pure noise should use "trailing", whose top timestep is the last training one:
    "leading" starts lower, where the model expects a little signal that pure noise lacks, and
    that mismatch biases the overall brightness of samples (Lin et al., 2023, "Common Diffusion
    Noise Schedules and Sample Steps are Flawed"); on the toy model it cost 7 points of Pale_Skin.
    """
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    sched = backbone.scheduler
    if spacing is not None:
        if spacing not in SPACINGS:
            raise ValueError(f"timestep spacing must be one of {SPACINGS}, got {spacing!r}")
        sched = type(sched).from_config(sched.config, timestep_spacing=spacing)
    sched.set_timesteps(steps)
    ts = sorted(int(t) for t in sched.timesteps)
    acp = sched.alphas_cumprod
    return DDIMGrid(
        timesteps=tuple(ts),
        alphas=tuple(float(acp[t]) for t in ts),
        num_train_timesteps=int(sched.config.num_train_timesteps),
    )


def sampling_clip(backbone: DiffusionBackbone) -> float | None:
    """The x0 clamp diffusers' pipelines apply when sampling (scheduler clip_sample), or None."""
    cfg = backbone.scheduler.config
    return float(cfg.clip_sample_range) if cfg.get("clip_sample", False) else None


@dataclass
class Inversion:
    z_t: torch.Tensor
    t_index: int
    timestep: int
    grid: DDIMGrid


@torch.no_grad()
def invert(
    backbone: DiffusionBackbone,
    z0: torch.Tensor,
    t: float = 0.7,
    steps: int = 50,
    prompt: str = "",
    progress: bool = False,
) -> Inversion:
    """DDIM-invert z0 up to the grid timestep nearest t·T (inclusive)."""
    grid = ddim_grid(backbone, steps)
    k = grid.index_for(t)
    cond = backbone.condition(prompt)
    z = z0.to(backbone.device, backbone.dtype)
    for i in tqdm(range(k + 1), desc="invert", disable=not progress, leave=False):
        a_from, a_to = grid.alpha_before(i), grid.alphas[i]
        out = backbone.split_output(backbone.predict(z, grid.timesteps[i], cond), z, a_to)
        # Re-derive x0 at the current point with the same eps, then jump to the target alpha.
        x0 = (z - (1 - a_from) ** 0.5 * out.eps) / a_from**0.5
        z = a_to**0.5 * x0 + (1 - a_to) ** 0.5 * out.eps
    return Inversion(z_t=z, t_index=k, timestep=grid.timesteps[k], grid=grid)


@torch.no_grad()
def resume(
    backbone: DiffusionBackbone,
    z_t: torch.Tensor,
    t_index: int,
    grid: DDIMGrid,
    prompt: str = "",
    h_edit: HEdit | torch.Tensor | None = None,
    edit_steps: int = 1,
    progress: bool = False,
    clip_x0: float | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoise z_t (at grid index t_index) to z0; return (z0, h_t as first seen, before edits).

    h_edit replaces h on the first `edit_steps` resumed U-Net calls (1 = the paper's single step).
    clip_x0 clamps each predicted x0 to [-clip_x0, clip_x0], as diffusers' `clip_sample` does when
    sampling from noise; it breaks exact inversion, so resuming an inverted image leaves it off.
    eta > 0 is DDIM's stochastic variant (eta = 1: ancestral sampling), drawing fresh noise from
    `generator` at every step: for sampling from noise only, since it forgets an inverted image.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if not 0 <= t_index < len(grid.timesteps):
        raise ValueError(f"t_index {t_index} outside the {len(grid.timesteps)}-step grid")
    if edit_steps < 1:
        raise ValueError(f"edit_steps must be >= 1, got {edit_steps}")
    cond = backbone.condition(prompt)
    z = z_t.to(backbone.device, backbone.dtype)
    hook = hspace_hook(backbone.unet, capture={0}, replace=h_edit, calls=set(range(edit_steps)))
    with hook as rec:
        for i in tqdm(range(t_index, -1, -1), desc="resume", disable=not progress, leave=False):
            a = grid.alphas[i]
            out = backbone.split_output(backbone.predict(z, grid.timesteps[i], cond), z, a)
            x0, eps = out.x0, out.eps
            if clip_x0 is not None:
                x0 = x0.clamp(-clip_x0, clip_x0)
                eps = (z - a**0.5 * x0) / (1 - a) ** 0.5
            a_to = grid.alpha_before(i)
            sigma = eta * ((1 - a_to) / (1 - a) * (1 - a / a_to)) ** 0.5  # DDIM eq. 16
            z = a_to**0.5 * x0 + (1 - a_to - sigma**2) ** 0.5 * eps
            if sigma > 0:
                noise = torch.randn(z.shape, generator=generator, dtype=z.dtype)
                z = z + sigma * noise.to(z.device)
    return z, rec.captured[0]


@torch.no_grad()
def capture_h(backbone: DiffusionBackbone, inv: Inversion, prompt: str = "") -> torch.Tensor:
    """h_t = unet.mid_block output for the first resumed step from z_t: one U-Net call."""
    with hspace_hook(backbone.unet) as rec:
        backbone.predict(inv.z_t, inv.timestep, backbone.condition(prompt))
    return rec.last
