"""Argument groups shared by several sub-commands, declared once."""

from __future__ import annotations

import argparse

from hsae.sae.selection import TARGET_SPARSITY


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
