"""Atomic checkpoints (a hidden temp folder swapped in by renames) and RNG state, for exact resume
of a run."""

from __future__ import annotations

import io
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hsae.sae import BaseSAE
from hsae.training.config import CHECKPOINT, STATE_FILE
from hsae.utils.io import atomic_write_bytes


def _replace(src: Path, dst: Path) -> None:
    os.replace(src, dst)  # one seam, so tests can make exactly this rename fail


def find_checkpoint(out_dir: Path | str) -> Path | None:
    """The last good checkpoint, read without touching the folder (what a reader may do):
    out_dir/checkpoint, or the previous one a kill left between the two renames of a swap."""
    out_dir = Path(out_dir)
    final, old = out_dir / CHECKPOINT, out_dir / f".{CHECKPOINT}.old"
    found = final if final.is_dir() else old
    return found if (found / STATE_FILE).is_file() else None


def checkpoint_dir(out_dir: Path | str) -> Path | None:
    """out_dir/checkpoint, first finishing a swap a kill interrupted; None if there is none.

    It renames and deletes in out_dir: call it only while holding the folder's lock (the trainer
    does; a command that only reads uses find_checkpoint)."""
    out_dir = Path(out_dir)
    final, old = out_dir / CHECKPOINT, out_dir / f".{CHECKPOINT}.old"
    if not final.is_dir() and old.is_dir():
        _replace(old, final)  # killed between the two renames: the old one is the last good
    shutil.rmtree(old, ignore_errors=True)
    for tmp in out_dir.glob(f".{CHECKPOINT}.*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    return final if (final / STATE_FILE).is_file() else None


def save_checkpoint(out_dir: Path, sae: BaseSAE, state: dict[str, Any]) -> Path:
    """Write SAE + trainer state into a temp folder, then swap it in for out_dir/checkpoint."""
    final, old = out_dir / CHECKPOINT, out_dir / f".{CHECKPOINT}.old"
    tmp = Path(tempfile.mkdtemp(prefix=f".{CHECKPOINT}.", suffix=".tmp", dir=out_dir))
    try:
        sae.save(tmp)
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(tmp / STATE_FILE, buf.getvalue())
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            _replace(final, old)
        _replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.exists() and old.is_dir():
            _replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return final


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    return torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    assert isinstance(keys, np.ndarray)  # the legacy form is (name, keys, pos, has_gauss, gauss)
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    kind, keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(s["python"])
