"""H-space hook: capture or replace the output of `unet.mid_block`, for any diffusers U-Net.

Implemented as a PyTorch forward hook registered for the duration of a `with` block, so nothing in
diffusers is patched. A capture hook returns None (a hook returning a value *replaces* the module's
output: the classic silent bug); only the replace path returns a tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

# Receives the captured h (B, C, K, K) and returns the h to use instead.
HEdit = Callable[[torch.Tensor], torch.Tensor]


def mid_block_of(unet: nn.Module) -> nn.Module:
    mid = getattr(unet, "mid_block", None)
    if mid is None:
        raise ValueError(
            f"{type(unet).__name__} has no `mid_block`; H-space is defined as the output of "
            "unet.mid_block (UNet2DModel / UNet2DConditionModel)"
        )
    return mid


@dataclass
class HSpaceRecorder:
    """What a hooked forward saw: one entry per U-Net call inside the `with` block."""

    captured: list[torch.Tensor] = field(default_factory=list)
    calls: int = 0

    @property
    def last(self) -> torch.Tensor:
        if not self.captured:
            raise RuntimeError("no U-Net forward ran inside the hspace hook; nothing captured")
        return self.captured[-1]


@contextmanager
def hspace_hook(
    unet: nn.Module,
    capture: bool | set[int] = True,
    replace: HEdit | torch.Tensor | None = None,
    calls: set[int] | None = None,
) -> Iterator[HSpaceRecorder]:
    """Hook unet.mid_block for the duration of the block.

    capture: keep a detached copy of h (the *original* h, before any replacement): on every call
        (True), on none (False) or on the calls whose 0-based index is in the set.
    replace: a tensor (used as h) or a callable h -> h'; applied on the U-Net calls whose 0-based
        index is in `calls` (all calls when None), so an edit can target one timestep of a loop.
    """
    rec = HSpaceRecorder()

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        i = rec.calls
        rec.calls += 1
        if capture is True or (isinstance(capture, set) and i in capture):
            rec.captured.append(output.detach().clone())
        if replace is None or (calls is not None and i not in calls):
            return None
        new = replace(output) if callable(replace) else replace
        if new.shape != output.shape:
            raise ValueError(
                f"replacement h has shape {tuple(new.shape)}, expected {tuple(output.shape)}"
            )
        return new.to(dtype=output.dtype, device=output.device)

    handle = mid_block_of(unet).register_forward_hook(hook)
    try:
        yield rec
    finally:
        handle.remove()
