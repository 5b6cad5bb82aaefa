"""Invert images once, then resume them many times with an H-space edit over a window of steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from hsae.editing.intervene import edit_step_count


@dataclass
class Inverted:
    z_t: Tensor
    t_index: int
    grid: Any


@dataclass
class DiffusionRunner:
    """`hsae.diffusion.invert` on a backbone: invert in chunks, resume with an edit window."""

    backbone: Any
    t: float
    steps: int
    prompt: str = ""
    batch: int = 64
    progress: bool = False

    @torch.no_grad()
    def invert(self, x: Tensor) -> tuple[Inverted, Tensor, Tensor]:
        from hsae.diffusion.invert import invert, resume

        bb = self.backbone
        zs, xs, hs = [], [], []
        inv = None
        chunks = range(0, len(x), self.batch)
        for i in tqdm(chunks, desc="invert", disable=not self.progress, leave=False):
            inv = invert(bb, bb.encode(x[i : i + self.batch]), self.t, self.steps, self.prompt)
            z0, h = resume(bb, inv.z_t, inv.t_index, inv.grid, self.prompt)
            zs.append(inv.z_t)
            xs.append(bb.decode(z0).float().cpu())
            hs.append(h.float().cpu())
        if inv is None:
            raise ValueError("no images to invert")
        return Inverted(torch.cat(zs), inv.t_index, inv.grid), torch.cat(xs), torch.cat(hs)

    def window_steps(self, state: Inverted, window: int | str) -> int:
        return edit_step_count(window, state.t_index, "--windows")

    @torch.no_grad()
    def resume(
        self, state: Inverted, idx: np.ndarray, edit: Callable[[Tensor], Tensor], window: int | str
    ) -> Tensor:
        from hsae.diffusion.invert import resume

        z_t = state.z_t[torch.as_tensor(idx, dtype=torch.long)]
        n = self.window_steps(state, window)
        z0, _ = resume(self.backbone, z_t, state.t_index, state.grid, self.prompt, edit, n)
        return self.backbone.decode(z0).float().cpu()
