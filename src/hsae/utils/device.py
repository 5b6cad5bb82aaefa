"""The one place that turns `--device` / `--dtype` into torch objects, with one-line errors.

Every stage that runs a model (U-Net, VAE, text encoder, SAE, classifier) resolves its options
here, so a device torch cannot use fails the same way, before minutes of loading.

- `auto` device: the process's accelerator under `accelerate launch` / `torchrun` (cuda:LOCAL_RANK),
  else cuda:0, else mps, else cpu.
- `--dtype` is the compute precision of the diffusion model (weights cast on load). The SAE and
  the classifier keep float32 parameters ("master weights"); half precision reaches them only
  through `autocast`, so optimiser steps and checkpoints stay float32.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

DEVICE_CHOICES_HELP = "auto, cpu, cuda, cuda:N or mps"
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
DTYPE_NAMES = ("auto", *DTYPES)


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """`--device` value -> torch.device, with one message when torch cannot use it here."""
    if spec is None or str(spec) == "auto":
        return _auto_device()
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"--device {spec!r}: expected a torch device such as {DEVICE_CHOICES_HELP}"
        ) from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(
                f"--device {spec}: this torch ({torch.__version__}) sees no CUDA device; "
                "install a CUDA build of torch on a GPU machine, or use --device cpu"
            )
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"--device {spec}: only {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {spec}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {spec}: unsupported device type {dev.type!r} (cpu, cuda, mps)")
    return dev


def _auto_device() -> torch.device:
    if torch.cuda.is_available():
        # Under a multi-process launcher each rank owns the GPU of its local rank.
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local % torch.cuda.device_count())
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(
    spec: str | torch.dtype | None, device: torch.device | str = "cpu"
) -> torch.dtype:
    """`--dtype` value -> torch.dtype for the diffusion model on `device`.

    auto is float16 on CUDA and MPS and float32 on the CPU, where half precision is slower
    (no half-precision arithmetic units on most CPUs) and not needed for memory.
    """
    dev = torch.device(device)
    if isinstance(spec, torch.dtype):
        name = str(spec).removeprefix("torch.")
    else:
        name = "auto" if spec is None else str(spec)
    if name == "auto":
        return torch.float16 if dev.type in ("cuda", "mps") else torch.float32
    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r}: expected one of {', '.join(DTYPE_NAMES)}")
    dtype = DTYPES[name]
    if dtype == torch.bfloat16 and dev.type == "mps" and not _mps_has_bf16():
        raise ValueError("--dtype bfloat16: this MPS device has no bfloat16; use float16")
    if dtype == torch.bfloat16 and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--dtype bfloat16: {dev} does not support bfloat16; use float16")
    return dtype


def _mps_has_bf16() -> bool:
    try:
        torch.zeros(1, dtype=torch.bfloat16, device="mps")
    except (RuntimeError, TypeError):
        return False
    return True


def resolve(device: str | torch.device | None, dtype: str | torch.dtype | None) -> tuple:
    """(torch.device, torch.dtype) of a stage's --device / --dtype pair."""
    dev = resolve_device(device)
    return dev, resolve_dtype(dtype, dev)


def device_options(args: Any) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of a parsed namespace; absent options mean auto."""
    return resolve(getattr(args, "device", "auto"), getattr(args, "dtype", "auto"))


@contextmanager
def autocast_for(device: torch.device | str, dtype: torch.dtype) -> Iterator[None]:
    """Mixed precision around float32 parameters (SAE, classifier); a no-op for float32."""
    dev = torch.device(device)
    if dtype == torch.float32:
        ctx: Any = nullcontext()
    else:
        ctx = torch.autocast(device_type=dev.type, dtype=dtype)
    with ctx:
        yield


def launched_ranks() -> tuple[int, int, Callable[[], None]]:
    """(rank, world size, barrier) of the processes `accelerate launch` / torchrun started
    (WORLD_SIZE > 1); (0, 1, no-op) for a single process.

    accelerate's PartialState sets up the process group (NCCL on GPUs, gloo on CPUs); rank and
    world are then read from torch.distributed itself, which stays right under launchers that
    do not export RANK (accelerate's CPU debug launcher reports every process as rank 0 of 1).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    from accelerate import PartialState

    state = PartialState()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), dist.barrier
    return state.process_index, state.num_processes, state.wait_for_everyone
