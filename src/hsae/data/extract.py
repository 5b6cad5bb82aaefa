"""Extraction stage: images → DDIM inversion to t → h_t at unet.mid_block → activation store.

Work is done shard by shard, and batches never straddle a shard, so a killed run resumes by
redoing only the shards the manifest does not list, with exactly the same batches as an
uninterrupted run (hence bit-identical rows).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from hsae.diffusion.backbone import DiffusionBackbone
from hsae.diffusion.invert import capture_h, ddim_grid, invert
from hsae.data.store import SPLIT_CODES, ActivationStore, ActivationStoreWriter

HOOK_POINT = "unet.mid_block"


class ImageSource(Protocol):
    """What extraction needs of a data set (hsae.data.images.ImageDataset provides it)."""

    @property
    def ids(self) -> list[str]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]: ...


def run_meta(backbone: DiffusionBackbone, t: float, steps: int, prompt: str) -> dict[str, Any]:
    """What identifies an extraction run: a resumed run must reproduce this exactly."""
    grid = ddim_grid(backbone, steps)
    k = grid.index_for(t)
    return {
        "model": backbone.describe(),
        "backbone_dtype": str(backbone.dtype).removeprefix("torch."),
        "hook": HOOK_POINT,
        "t": float(t),
        "timestep": int(grid.timesteps[k]),
        "t_index": k,
        "steps": int(steps),
        "prompt": prompt,
        "guidance_scale": 1.0,
        "scheduler": dict(backbone.scheduler.config),
    }


def check_store_model(path: Path, backbone: DiffusionBackbone) -> None:
    """Refuse a finished store whose h came from other weights (e.g. before the toy was retrained):
    everything fitted on it would silently describe another model."""
    manifest = Path(path) / "manifest.json"
    if not manifest.is_file():
        return
    recorded = ActivationStore(path).meta.get("model", {})
    current = backbone.describe()
    if recorded != current:
        raise ValueError(
            f"activation store {path} was extracted with model {recorded.get('model_id')!r} "
            f"(weights {recorded.get('weights', 'unrecorded')}), but {backbone.model_id!r} now has "
            f"weights {current['weights']}: delete the run folder (or pick another output) so "
            "it is made again with this model"
        )


def _splits(dataset: ImageSource) -> list[int | None] | None:
    records = getattr(dataset, "records", None)
    return None if records is None else [getattr(r, "split", None) for r in records]


def h_for_images(
    backbone: DiffusionBackbone, x: torch.Tensor, t: float, steps: int, prompt: str
) -> torch.Tensor:
    """h_t (B, C, K, K) of a batch of images in [-1, 1]."""
    z0 = backbone.encode(x)
    inv = invert(backbone, z0, t, steps, prompt)
    return capture_h(backbone, inv, prompt)


def _shard_h(
    dataset: ImageSource,
    backbone: DiffusionBackbone,
    rows: tuple[int, int],
    batch: int,
    opts: dict[str, Any],
    bar: tqdm,
) -> np.ndarray:
    parts = []
    for start in range(rows[0], rows[1], batch):
        idx = range(start, min(start + batch, rows[1]))
        x = torch.stack([dataset[i][0] for i in idx])
        parts.append(h_for_images(backbone, x, **opts).float().cpu().numpy())
        bar.update(len(idx))
    return np.concatenate(parts)


def extract(
    dataset: ImageSource,
    backbone: DiffusionBackbone,
    out: Path,
    t: float = 0.7,
    steps: int = 50,
    prompt: str = "",
    batch: int = 32,
    shard_size: int = 256,
    dtype: str = "float16",
    progress: bool = True,
) -> Path:
    """Fill (or finish) the activation store at `out` with h_t of every image; return `out`."""
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    writer = ActivationStoreWriter.open(
        out,
        meta=run_meta(backbone, t, steps, prompt),
        shape=backbone.hspace_shape(),
        dtype=dtype,
        shard_size=shard_size,
        ids=dataset.ids,
        attributes=getattr(dataset, "attributes", None),
        attribute_names=getattr(dataset, "attribute_names", None),
        splits=_splits(dataset),
        skipped=getattr(dataset, "bad", []),
    )
    pending = writer.pending_shards()
    todo = sum(b - a for a, b in map(writer.shard_rows, pending))
    opts = {"t": t, "steps": steps, "prompt": prompt}
    with tqdm(
        total=len(dataset),
        initial=len(dataset) - todo,
        unit="img",
        desc="extract",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        for i in pending:
            h = _shard_h(dataset, backbone, writer.shard_rows(i), batch, opts, bar)
            writer.write_shard(i, h)
    return Path(out)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


def summary(store: ActivationStore) -> str:
    m = store.meta
    model = m.get("model", {})
    n_shards = len(store.manifest["shards"])
    lines = [
        f"activation store  {store.path}",
        f"  h shape         {store.shape} {store.dtype}  ({HOOK_POINT})",
        f"  images          {len(store)}  (skipped unreadable: {len(store.skipped)})",
        f"  timestep        {m['timestep']} of {model.get('kind', '?')} model "
        f"{model.get('model_id', '?')!r}  (t={m['t']}, DDIM grid of {m['steps']} steps)",
        f"  shards          {n_shards} x <= {store.manifest['shard_size']} rows",
        f"  size on disk    {_human_bytes(store.nbytes_on_disk())}",
    ]
    if store.splits is not None and any(s is not None for s in store.splits):
        counts = {name: int(np.sum(np.array(store.splits) == c)) for name, c in SPLIT_CODES.items()}
        lines.append("  splits          " + "  ".join(f"{k} {v}" for k, v in counts.items()))
    return "\n".join(lines)


def extract_command(args: argparse.Namespace) -> int:
    """`hsae extract`: load the model and images, extract, print a one-screen summary."""
    from hsae.data.images import ImageDataset

    data = Path(args.data)
    if not data.is_dir():
        what = "does not exist" if not data.exists() else "is not a folder"
        raise FileNotFoundError(f"--data {data} {what}; expected an image or CelebA-layout folder")
    backbone = DiffusionBackbone.load(args.model, device=args.device)
    dataset = ImageDataset(
        data, backbone.image_size, split=args.split, limit=args.limit, skip_bad=args.skip_bad
    )
    for bad in dataset.bad:
        print(f"skipped unreadable image {bad['id']}: {bad['error']}")
    out = extract(
        dataset,
        backbone,
        args.out,
        t=args.t,
        steps=args.steps,
        prompt=args.prompt,
        batch=args.batch,
        shard_size=args.shard_size,
        dtype=args.dtype,
        progress=not getattr(args, "no_progress", False),
    )
    print(summary(ActivationStore(out)))
    return 0
