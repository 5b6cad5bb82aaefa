"""h from every resumed step of the edit window, for SAEs trained on the whole window.

An edit over the window (`hsae edit --window all`) changes h at every resumed step, t = 0.7T down
to the last step, but an SAE trained on h_t at t = 0.7 only has never seen the h of the later
steps it re-encodes. A *window store* holds, per image, h at each of the S resumed steps: rows are
image-major (row r is image r // S at resumed step r % S, step 0 being the usual h_t), each row
carries its image's attributes and split, and its id is `<image id>@<step>`. The manifest's
`window` entry lists the S timesteps, so a trainer can feed each row's timestep to ζ
(`--context channel+timestep`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hsae.diffusion.backbone import DiffusionBackbone
from hsae.diffusion.hspace import hspace_hook
from hsae.diffusion.invert import ddim_grid, resume
from hsae.diffusion.solvers import DDIM_INVERSION, InverseSolver

CAPTURES = ("first", "window")


def window_timesteps(backbone: DiffusionBackbone, t: float, steps: int) -> list[int]:
    """The S timesteps of the resumed steps from t·T, in the order the resume visits them."""
    grid = ddim_grid(backbone, steps)
    k = grid.index_for(t)
    return [int(grid.timesteps[i]) for i in range(k, -1, -1)]


class WindowRows:
    """An image source seen as S rows per image (the rows a window store holds)."""

    def __init__(self, base: Any, per_image: int) -> None:
        if per_image < 1:
            raise ValueError(f"a window has at least one step, got {per_image}")
        self.base, self.per_image = base, per_image
        self.bad = getattr(base, "bad", [])
        self.attribute_names = getattr(base, "attribute_names", None)
        attrs = getattr(base, "attributes", None)
        self.attributes = None if attrs is None else np.repeat(attrs, per_image, axis=0)

    @property
    def ids(self) -> list[str]:
        return [f"{i}@{s}" for i in self.base.ids for s in range(self.per_image)]

    @property
    def records(self) -> list[Any] | None:
        recs = getattr(self.base, "records", None)
        return None if recs is None else [r for r in recs for _ in range(self.per_image)]

    def conversion_of(self, row: int) -> Any:
        return self.base.conversion_of(row // self.per_image)

    def __len__(self) -> int:
        return len(self.base) * self.per_image

    def __getitem__(self, row: int) -> tuple[torch.Tensor, int]:
        return self.base[row // self.per_image][0], row


@torch.no_grad()
def h_window(
    backbone: DiffusionBackbone,
    x: torch.Tensor,
    t: float,
    steps: int,
    prompt: str,
    inverse: InverseSolver = DDIM_INVERSION,
) -> torch.Tensor:
    """(B·S, C, K, K): h at each resumed step of each image, image-major, unedited resume."""
    inv = inverse.invert(backbone, backbone.encode(x), t, steps, prompt)
    with hspace_hook(backbone.unet, capture=True) as rec:
        resume(backbone, inv.z_t, inv.t_index, inv.grid, prompt)
    h = torch.stack(rec.captured, dim=1)  # (B, S, C, K, K)
    return h.flatten(0, 1).contiguous()
