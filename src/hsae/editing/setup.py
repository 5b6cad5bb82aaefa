"""Set-up shared by `hsae edit`, `hsae counterfactual` and `hsae interpolate`: their common
options, the loaded model / SAE / store / cache (`EditSetup`), and image loading."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hsae.diffusion.backbone import DiffusionBackbone
from hsae.diffusion.inversion_cache import InversionCache, invert_cached
from hsae.diffusion.invert import Inversion, capture_h
from hsae.sae.base import BaseSAE
from hsae.sae.selection import is_sparse, parse_threshold_k, resolve_threshold_k

# ----- command-line set-up shared by edit / counterfactual / interpolate --------------------------


@dataclass
class EditSetup:
    """Everything loaded from the shared options; `threshold_k` is resolved lazily."""

    backbone: DiffusionBackbone
    sae: BaseSAE
    store: Any
    t: float
    steps: int
    prompt: str
    threshold_spec: int | str | None
    target_sparsity: float
    cache: InversionCache | None
    progress: bool
    _k: tuple[int | None, dict[str, Any]] | None = field(default=None, repr=False)

    def invert(self, images: Tensor) -> Inversion:
        return invert_cached(
            self.backbone, images, self.t, self.steps, self.prompt, self.cache, self.progress
        )

    def threshold_k(self, inv: Inversion | None = None) -> int | None:
        """k for eq. 9; auto without a store looks at the h of `inv` (first call only)."""
        if self._k is None:
            need_h = self.threshold_spec == "auto" and self.store is None and is_sparse(self.sae)
            h = capture_h(self.backbone, inv, self.prompt) if need_h and inv is not None else None
            self._k = resolve_threshold_k(
                self.sae, self.threshold_spec, self.store, h, self.target_sparsity
            )
        return self._k[0]

    @property
    def k_note(self) -> str:
        return self._k[1]["how"] if self._k is not None else "unresolved"

    def settings(self) -> dict[str, Any]:
        return {
            "model": self.backbone.describe(),
            "t": self.t,
            "steps": self.steps,
            "prompt": self.prompt,
            "threshold_k": self._k[0] if self._k else None,
            "threshold_note": self.k_note,
            "store": str(self.store.path) if self.store is not None else None,
        }


def _open_store(explicit: Path | None, sae: BaseSAE) -> Any:
    from hsae.data.store import ActivationStore

    if explicit is not None:
        return ActivationStore(explicit)
    path = sae.cfg.store_path
    if path and (Path(path) / "manifest.json").is_file():
        try:
            return ActivationStore(path)
        except (OSError, ValueError) as e:
            print(f"note: ignoring the SAE's training store {path}: {e}", file=sys.stderr)
    return None


def check_hspace(backbone: DiffusionBackbone, sae: BaseSAE, sae_path: Path | str) -> None:
    want = (sae.cfg.n_channels, sae.cfg.spatial, sae.cfg.spatial)
    have = tuple(backbone.hspace_shape())
    if want != have:
        raise ValueError(
            f"SAE {sae_path} expects h of shape (C, K, K) = {want}, but model "
            f"{backbone.model_id!r} has H-space {have}"
        )


def load_setup(args: argparse.Namespace) -> EditSetup:
    from hsae.sae import load_sae

    spec = parse_threshold_k(args.threshold_k)
    if not 0.0 <= args.target_sparsity <= 1.0:
        raise ValueError(f"--target-sparsity must be in [0, 1], got {args.target_sparsity}")
    sae = load_sae(args.sae).eval()
    store = _open_store(args.store, sae)
    meta = store.meta if store is not None else {}
    model = args.model or (meta.get("model") or {}).get("model_id") or sae.cfg.model_id or "toy"
    backbone = DiffusionBackbone.load(model, dtype=args.dtype, device=args.device)
    sae.to(backbone.device)  # float32 weights: h is cast to them and back (intervene)
    check_hspace(backbone, sae, args.sae)
    cache = None if args.no_cache else InversionCache.open(args.cache_dir)
    return EditSetup(
        backbone=backbone,
        sae=sae,
        store=store,
        t=args.t if args.t is not None else float(meta.get("t", 0.7)),
        steps=args.steps if args.steps is not None else int(meta.get("steps", 50)),
        prompt=args.prompt if args.prompt is not None else str(meta.get("prompt", "")),
        threshold_spec=spec,
        target_sparsity=args.target_sparsity,
        cache=cache,
        progress=not args.no_progress,
    )


def warn_timestep(setup: EditSetup, inv: Inversion) -> None:
    """The SAE only knows h of the timestep it was trained on; say so when they differ."""
    trained = setup.sae.cfg.timestep
    if trained is not None and int(trained) != inv.timestep:
        print(
            f"warning: the SAE was trained on h at timestep {trained}, editing at {inv.timestep}",
            file=sys.stderr,
        )


def load_images(paths: Sequence[Path], size: int) -> tuple[Tensor, list[str]]:
    """Images (B, 3, size, size) in [-1, 1] and a unique short name for each."""
    from hsae.data.images import load_image

    images = torch.stack([load_image(Path(p), size) for p in paths])
    names, seen = [], set()
    for i, p in enumerate(paths):
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(p).stem) or "image"
        names.append(name if name not in seen else f"{name}-{i}")
        seen.add(names[-1])
    return images, names
