"""Inversion x0 → z_t in fewer U-Net calls, with diffusers' multistep inverse solver.

DDIM inversion (`hsae.diffusion.invert`) is a first-order step per U-Net call. This module
reaches the *same* timestep (the `steps`-step DDIM grid's timestep nearest t·T) with `calls`
U-Net calls of diffusers' `DPMSolverMultistepInverseScheduler` (DPM-Solver++, data prediction):
order 1 is DDIM's update with the model evaluated at the current point (the update of diffusers'
`DDIMInverseScheduler`), order 2 and 3 the multistep 2M and 3M solvers. The solver's grid runs
from the DDIM grid's first timestep to the target, uniform in log-SNR ("logsnr", the default:
on the toy model it was far closer to a 1000-step DDIM h than a grid uniform in time) or in time.

The first call serves twice: its ε (the U-Net at the clean image and the first timestep) takes
the clean image to that timestep, as DDIM's first step does, and is the solver's first model
output there (the two points differ by the first timestep's tiny noise level). Each
U-Net output is turned into ε by the backbone (any prediction_type), so the scheduler always
works on ε. The result is the same `Inversion` as `invert()`: its grid is the DDIM grid, so
capturing h at z_t and resuming from it work unchanged.

    solver = InverseSolver("dpm++3m", calls=8)
    inv = solver.invert(backbone, backbone.encode(x), t=0.7, steps=50)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from hsae.diffusion.backbone import DiffusionBackbone
from hsae.diffusion.invert import DDIMGrid, Inversion, ddim_grid, invert

# Name → solver order (0: hsae's own DDIM inversion on the --steps grid, no solver).
INVERSE_SCHEDULERS = {"ddim": 0, "dpm++1": 1, "dpm++2m": 2, "dpm++3m": 3}
SOLVER_SPACINGS = ("logsnr", "time")
DEFAULT_CALLS = 8


@dataclass(frozen=True)
class InverseSolver:
    """How x0 is inverted to z_t: "ddim" (the default) or a DPM-Solver++ order in `calls`."""

    name: str = "ddim"
    calls: int | None = None  # U-Net calls to reach t; None: DEFAULT_CALLS (ignored for ddim)
    spacing: str = "logsnr"

    def __post_init__(self) -> None:
        if self.name not in INVERSE_SCHEDULERS:
            raise ValueError(
                f"--inverse-scheduler must be one of {sorted(INVERSE_SCHEDULERS)}, "
                f"got {self.name!r}"
            )
        if self.spacing not in SOLVER_SPACINGS:
            raise ValueError(
                f"solver spacing must be one of {SOLVER_SPACINGS}, got {self.spacing!r}"
            )
        if self.calls is not None and self.calls < 1:
            raise ValueError(f"--inverse-calls must be >= 1, got {self.calls}")
        if self.name == "ddim" and self.calls is not None:
            raise ValueError(
                "--inverse-calls applies to a solver (--inverse-scheduler dpm++1/2m/3m); DDIM "
                "inversion takes one U-Net call per step of the --steps grid up to t"
            )

    @property
    def order(self) -> int:
        return INVERSE_SCHEDULERS[self.name]

    @property
    def n_calls(self) -> int:
        return DEFAULT_CALLS if self.calls is None else self.calls

    @classmethod
    def parse(cls, spec: str) -> InverseSolver:
        """ "ddim", "NAME" or "NAME:CALLS[:SPACING]", e.g. "dpm++3m:8" or "dpm++2m:12:time"."""
        name, *rest = spec.split(":")
        if len(rest) > 2 or (rest and not rest[0].isdigit()):
            raise ValueError(f"inverse solver {spec!r}: expected NAME[:CALLS[:SPACING]]")
        calls = int(rest[0]) if rest else None
        return cls(name, calls, rest[1] if len(rest) > 1 else "logsnr")

    def label(self) -> str:
        if self.order == 0:
            return "ddim"
        suffix = "" if self.spacing == "logsnr" else f":{self.spacing}"
        return f"{self.name}:{self.n_calls}{suffix}"

    def record(self) -> dict[str, Any]:
        """What a store's metadata records (nothing for DDIM, so older stores still resume)."""
        if self.order == 0:
            return {}
        return {"inverse_scheduler": self.name, "inverse_calls": self.n_calls} | (
            {} if self.spacing == "logsnr" else {"inverse_spacing": self.spacing}
        )

    def invert(
        self,
        backbone: DiffusionBackbone,
        z0: torch.Tensor,
        t: float = 0.7,
        steps: int = 50,
        prompt: str = "",
        progress: bool = False,
    ) -> Inversion:
        """invert()'s signature and result: z_t at the `steps`-step DDIM grid's timestep."""
        if self.order == 0:
            return invert(backbone, z0, t, steps, prompt, progress)
        return invert_solver(backbone, z0, self, t, steps, prompt)


DDIM_INVERSION = InverseSolver()  # the default everywhere: hsae.diffusion.invert.invert


def solver_timesteps(
    backbone: DiffusionBackbone, start: int, target: int, calls: int, spacing: str = "logsnr"
) -> list[int]:
    """calls + 1 increasing integer timesteps from start to target (both included)."""
    if calls > target - start:
        raise ValueError(
            f"{calls} solver calls need {calls + 1} distinct timesteps between {start} and "
            f"{target}; use at most {target - start} calls"
        )
    acp = backbone.scheduler.alphas_cumprod.double()
    if spacing == "time":
        points = [start + (target - start) * i / calls for i in range(calls + 1)]
    else:
        lam = 0.5 * torch.log(acp / (1 - acp))  # log-SNR, decreasing in t
        lo, hi = float(lam[start]), float(lam[target])
        wanted = [lo + (hi - lo) * i / calls for i in range(calls + 1)]
        points = [float(torch.argmin((lam - w).abs())) for w in wanted]
    ts = [start]
    for i, p in enumerate(points[1:-1], start=1):  # strictly increasing, room left for the rest
        ts.append(min(max(round(p), ts[-1] + 1), target - (calls - i)))
    return [*ts, target]


def inverse_scheduler(backbone: DiffusionBackbone, order: int, timesteps: list[int]) -> Any:
    """diffusers' DPMSolverMultistepInverseScheduler of the model, set to walk `timesteps`.

    set_timesteps only makes grids from 0 to the last training timestep; the state it sets
    (timesteps, their sigmas and the multistep history) is set here for our grid instead.
    """
    from diffusers import DPMSolverMultistepInverseScheduler

    sched = DPMSolverMultistepInverseScheduler.from_config(
        backbone.scheduler.config,
        solver_order=order,
        algorithm_type="dpmsolver++",
        prediction_type="epsilon",  # fed ε: the backbone converts every prediction_type
        lower_order_final=False,  # it guards steps to t = 0; inversion ends far from there
        thresholding=False,
    )
    acp = sched.alphas_cumprod.double()[timesteps]
    sched.timesteps = torch.tensor(timesteps[:-1], dtype=torch.int64)
    sched.sigmas = ((1 - acp) / acp).sqrt().float()
    sched.num_inference_steps = len(timesteps) - 1
    sched.model_outputs = [None] * order
    sched.lower_order_nums = 0
    sched._step_index = None
    return sched


def _solver_grid(
    backbone: DiffusionBackbone, solver: InverseSolver, t: float, steps: int
) -> tuple[DDIMGrid, int, list[int]]:
    """The DDIM grid, its index k nearest t·T, and the solver's timesteps up to grid[k]."""
    grid = ddim_grid(backbone, steps)
    k = grid.index_for(t)
    start, target = grid.timesteps[0], grid.timesteps[k]
    return grid, k, solver_timesteps(backbone, start, target, solver.n_calls, solver.spacing)


@torch.no_grad()
def invert_solver(
    backbone: DiffusionBackbone,
    z0: torch.Tensor,
    solver: InverseSolver,
    t: float = 0.7,
    steps: int = 50,
    prompt: str = "",
) -> Inversion:
    """Invert z0 with `solver` to the `steps`-step DDIM grid's timestep nearest t·T."""
    grid, k, ts = _solver_grid(backbone, solver, t, steps)
    sched = inverse_scheduler(backbone, solver.order, ts)
    cond = backbone.condition(prompt)
    z = z0.to(backbone.device, backbone.dtype)
    for i, timestep in enumerate(ts[:-1]):
        a = float(sched.alphas_cumprod[timestep])
        eps = backbone.split_output(backbone.predict(z, timestep, cond), z, a).eps
        if i == 0:  # DDIM's first step: the clean image at ᾱ = 1 hops to the first timestep
            z = math.sqrt(a) * z + math.sqrt(1 - a) * eps
        z = sched.step(eps, timestep, z).prev_sample
    return Inversion(z_t=z, t_index=k, timestep=grid.timesteps[k], grid=grid)


@torch.no_grad()
def resume_solver(
    backbone: DiffusionBackbone,
    z_t: torch.Tensor,
    solver: InverseSolver,
    t: float = 0.7,
    steps: int = 50,
    prompt: str = "",
) -> torch.Tensor:
    """z_t back to z0 on the solver's grid, reversed (diffusers' DPMSolverMultistepScheduler,
    ending at σ = 0): the solver's own round trip, with calls + 1 U-Net calls."""
    from diffusers import DPMSolverMultistepScheduler

    if solver.order == 0:
        raise ValueError("DDIM inversion resumes with hsae.diffusion.invert.resume")
    ts = _solver_grid(backbone, solver, t, steps)[2][::-1]
    sched = DPMSolverMultistepScheduler.from_config(
        backbone.scheduler.config,
        solver_order=solver.order,
        algorithm_type="dpmsolver++",
        prediction_type="epsilon",
        final_sigmas_type="zero",
        lower_order_final=True,
        thresholding=False,
    )
    acp = sched.alphas_cumprod.double()[ts]
    sched.timesteps = torch.tensor(ts, dtype=torch.int64)
    sched.sigmas = torch.cat([((1 - acp) / acp).sqrt(), torch.zeros(1, dtype=acp.dtype)]).float()
    sched.num_inference_steps = len(ts)
    sched.model_outputs = [None] * solver.order
    sched.lower_order_nums, sched._step_index, sched._begin_index = 0, None, None
    cond = backbone.condition(prompt)
    z = z_t.to(backbone.device, backbone.dtype)
    for timestep in ts:
        a = float(sched.alphas_cumprod[timestep])
        eps = backbone.split_output(backbone.predict(z, timestep, cond), z, a).eps
        z = sched.step(eps, timestep, z).prev_sample
    return z
