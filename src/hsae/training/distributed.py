"""Data-parallel SAE training over processes started by `accelerate launch` (or torchrun).

Every rank reads the same global batch (the data order is a pure function of seed and epoch),
trains on its equal share of it, and the gradients are averaged across ranks before the
optimizer step, which is what DistributedDataParallel does: since each share's loss is a mean
over its rows, the averaged gradient is the gradient of the global batch, so N processes at a
global batch B follow one process at batch B to float tolerance. All ranks then hold the same
weights and optimizer state; rank 0 alone writes the run folder, so a checkpoint is the same
whatever the world size and resumes at any other (the global batch must divide by it).

The SAE's parameters are not wrapped in DDP because the trainer calls `sae.loss`, not
`forward`; the averaging is one flat all-reduce per step through accelerate's `reduce`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hsae.sae import BaseSAE
from hsae.training.checkpoint import checkpoint_dir
from hsae.training.config import CHECKPOINT, StoreLike, TrainConfig
from hsae.training.loop import train


def world_size() -> int:
    """Processes of this run as the launcher set them (1 when not launched in parallel)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass(frozen=True)
class Parallel:
    """One rank's view of a data-parallel run."""

    rank: int
    world: int

    def local(self, x: Tensor) -> Tensor:
        """This rank's contiguous share of a global batch."""
        n = x.shape[0]
        if n % self.world:
            raise ValueError(
                f"a global batch of {n} images does not split over {self.world} processes; "
                f"use a --batch divisible by {self.world}"
            )
        per = n // self.world
        return x[self.rank * per : (self.rank + 1) * per]

    def average(self, sae: BaseSAE, values: dict[str, float]) -> dict[str, float]:
        """Average gradients (in place) and the logged scalars over ranks; returns the scalars."""
        from accelerate.utils import reduce

        grads = [p.grad for p in sae.parameters() if p.grad is not None]
        keys = sorted(values)
        scalars = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        flat = torch.cat([g.reshape(-1) for g in grads]) if grads else torch.zeros(0)
        flat = reduce(flat, reduction="mean")
        scalars = reduce(scalars.to(flat.device), reduction="mean").cpu()
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        return {k: float(v) for k, v in zip(keys, scalars, strict=True)}


def train_parallel(
    sae: BaseSAE,
    store: StoreLike,
    cfg: TrainConfig,
    out_dir: Path | str,
    resume: bool = False,
    progress: bool = True,
    compute_dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """`train` on every rank of the launched run (plain `train` when there is one process)."""
    if world_size() == 1:
        return train(sae, store, cfg, out_dir, resume, progress, compute_dtype)
    from accelerate import PartialState

    state = PartialState()
    par = Parallel(state.process_index, state.num_processes)
    par.local(torch.zeros(cfg.batch_images))  # refuse an indivisible batch before any work
    out_dir = Path(out_dir)
    if state.is_main_process:
        checkpoint_dir(out_dir)  # finishes an interrupted checkpoint swap before others copy it
        state.wait_for_everyone()
        try:
            return train(sae, store, cfg, out_dir, resume, progress, compute_dtype, par)
        finally:
            state.wait_for_everyone()
    # Other ranks run the same steps into a private folder that is thrown away: rank 0's
    # checkpoint (copied in on resume) is the only state that persists.
    state.wait_for_everyone()
    scratch = Path(tempfile.mkdtemp(prefix=f"hsae-rank{par.rank}-"))
    try:
        ckpt = checkpoint_dir(out_dir) if resume else None
        if ckpt is not None:
            shutil.copytree(ckpt, scratch / CHECKPOINT)
        return train(sae, store, cfg, scratch, resume, False, compute_dtype, par)
    finally:
        state.wait_for_everyone()
        shutil.rmtree(scratch, ignore_errors=True)
