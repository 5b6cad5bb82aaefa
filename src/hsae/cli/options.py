"""Argument groups shared by several sub-commands, declared once."""

from __future__ import annotations

import argparse
from pathlib import Path

from hsae.editing.intervene import MODES, parse_edit_steps
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


def add_setup_arguments(p: argparse.ArgumentParser, edit_options: bool = True) -> None:
    """Options every SAE-edit command shares (model, SAE, store, inversion, threshold, cache)."""
    p.add_argument("--sae", type=Path, required=True, help="SAE folder (cfg.json, sae.safetensors)")
    p.add_argument(
        "--store",
        type=Path,
        default=None,
        help="activation store: t/steps/prompt/model defaults and --threshold-k auto "
        "(default: the store the SAE was trained on, if it still exists)",
    )
    p.add_argument("--model", default=None, help="'toy', a diffusers folder or hub id")
    p.add_argument("--t", type=float, default=None, help="inversion depth (default: store's, 0.7)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: store's, 50)")
    p.add_argument("--prompt", default=None, help="conditioning prompt (default: store's, '')")
    add_threshold_arguments(p)
    add_device_arguments(p)
    p.add_argument(
        "--threshold-codes",
        action="store_true",
        help="edit eq. 9-thresholded codes (default: raw codes, as Algorithm 2; --threshold-k "
        "then only decides the note on components below τ)",
    )
    p.add_argument(
        "--window",
        type=parse_edit_steps,
        default=1,
        help="edit the h of the first N resumed steps, or 'all' (default 1: the paper's)",
    )
    if edit_options:
        p.add_argument("--mode", choices=MODES, default="reconstruction")
        p.add_argument(
            "--mask",
            action="extend",
            nargs="+",
            default=None,
            metavar="R0:R1,C0:C1",
            help="edit only this box of the K×K map (half-open; several are united)",
        )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="inversion cache (default: $HSAE_CACHE or ~/.cache/hsae/inversions)",
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
