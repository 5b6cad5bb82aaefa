"""Data-parallel SAE training over processes started by `accelerate launch` (or torchrun).

Every rank reads the same global batch (the data order is a pure function of seed and epoch),
trains on its equal share of it, and the gradients are averaged across ranks before the
optimizer step (one flat all-reduce over the process group accelerate set up), which is what
DistributedDataParallel does: since each share's loss is a mean
over its rows, the averaged gradient is the gradient of the global batch, so N processes at a
global batch B follow one process at batch B to float tolerance. All ranks then hold the same
weights and optimizer state; rank 0 alone writes the run folder, so a checkpoint is the same
whatever the world size and resumes at any other (the global batch must divide by it).

The SAE's parameters are not wrapped in DDP because the trainer calls `sae.loss`, not
`forward`, and DDP only averages gradients of its wrapper's forward.
"""

from __future__ import annotations

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
from hsae.utils.device import launched_ranks


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
        import torch.distributed as dist

        grads = [p.grad for p in sae.parameters() if p.grad is not None]
        keys = sorted(values)
        scalars = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        flat = torch.cat([g.reshape(-1) for g in grads]) if grads else torch.zeros(0)
        scalars = scalars.to(flat.device)
        for t in (flat, scalars):
            dist.all_reduce(t)
            t /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        return {k: float(v) for k, v in zip(keys, scalars.cpu(), strict=True)}


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
    rank, world, barrier = launched_ranks()
    if world == 1:
        return train(sae, store, cfg, out_dir, resume, progress, compute_dtype)
    par = Parallel(rank, world)
    par.local(torch.zeros(cfg.batch_images))  # refuse an indivisible batch before any work
    out_dir = Path(out_dir)
    if rank == 0:
        checkpoint_dir(out_dir)  # finishes an interrupted checkpoint swap before others copy it
        barrier()
        try:
            return train(sae, store, cfg, out_dir, resume, progress, compute_dtype, par)
        finally:
            barrier()
    # Other ranks run the same steps into a private folder that is thrown away: rank 0's
    # checkpoint (copied in on resume) is the only state that persists.
    barrier()
    scratch = Path(tempfile.mkdtemp(prefix=f"hsae-rank{par.rank}-"))
    try:
        ckpt = checkpoint_dir(out_dir) if resume else None
        if ckpt is not None:
            shutil.copytree(ckpt, scratch / CHECKPOINT)
        return train(sae, store, cfg, scratch, resume, False, compute_dtype, par)
    finally:
        barrier()
        shutil.rmtree(scratch, ignore_errors=True)
