"""Argument groups shared by several sub-commands, declared once."""

from __future__ import annotations

import argparse

from hsae.sae.selection import TARGET_SPARSITY
from hsae.utils.device import DEVICE_CHOICES_HELP, DTYPE_NAMES


def add_threshold_arguments(p: argparse.ArgumentParser) -> None:
    """--threshold-k / --target-sparsity, shared by every command that thresholds codes (eq. 9)."""
    p.add_argument(
        "--threshold-k",
        default="auto",
        help="eq. 9's k: auto (the k giving --target-sparsity on a train sample), an int, or none",
    )
    p.add_argument(
        "--target-sparsity",
        type=float,
        default=TARGET_SPARSITY,
        help=f"for --threshold-k auto (default {TARGET_SPARSITY})",
    )


def add_device_arguments(p: argparse.ArgumentParser, dtype_default: str = "float32") -> None:
    """--device / --dtype, shared by every command that runs a model (hsae.utils.device)."""
    p.add_argument(
        "--device",
        default="auto",
        help=f"where the models run: {DEVICE_CHOICES_HELP} (default auto: the launcher's GPU, "
        "else cuda, else mps, else cpu)",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        default=dtype_default,
        help=f"diffusion-model precision (default {dtype_default}; auto = float16 on CUDA/MPS, "
        "float32 on CPU); SAEs keep float32 weights and use it through autocast",
    )
