"""Extraction stage: images → DDIM inversion to t → h_t at unet.mid_block → activation store.

Work is done shard by shard, and batches never straddle a shard, so a killed run resumes by
redoing only the shards the manifest does not list, with exactly the same batches as an
uninterrupted run (hence bit-identical rows).

Several processes (`accelerate launch -m hsae extract ...`, or torchrun) split the pending shards
by rank: rank r takes every world-th one. Rank 0 alone owns the manifest; the others write each
finished shard and its entry file atomically, and rank 0 adopts the entries at the end (or, after
a kill, when the command is run again), so the store is the single-process one bit for bit.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from hsae.data.images import conversion_summary, count_conversions
from hsae.data.store import SPLIT_CODES, ActivationStore
from hsae.data.store_writer import ActivationStoreWriter
from hsae.data.window import CAPTURES, WindowRows, h_window, window_timesteps
from hsae.diffusion.backbone import DiffusionBackbone
from hsae.diffusion.hspace import mid_block_of
from hsae.diffusion.invert import Inversion, ddim_grid
from hsae.diffusion.solvers import DDIM_INVERSION, InverseSolver
from hsae.utils.device import launched_ranks

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


@dataclass(frozen=True)
class Ranks:
    """This process's place among the extraction processes (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    barrier: Callable[[], None] = field(default=lambda: None, compare=False)

    @classmethod
    def from_launcher(cls) -> Ranks:
        """The ranks `accelerate launch` / torchrun set up (WORLD_SIZE > 1), else one process."""
        return cls(*launched_ranks())


class _Captured(Exception):
    """Raised by the capture hook: the U-Net's up blocks are not needed for h."""


@torch.no_grad()
def capture_mid(backbone: DiffusionBackbone, inv: Inversion, prompt: str = "") -> torch.Tensor:
    """h_t of the first resumed step from z_t, stopping the U-Net right after its mid block
    (the same h as hsae.diffusion.invert.capture_h, without the decoder half of the call)."""
    seen: list[torch.Tensor] = []

    def stop(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        seen.append(output.detach())
        raise _Captured

    handle = mid_block_of(backbone.unet).register_forward_hook(stop)
    try:
        backbone.predict(inv.z_t, inv.timestep, backbone.condition(prompt))
    except _Captured:
        pass
    finally:
        handle.remove()
    return seen[0]


def h_for_images(
    backbone: DiffusionBackbone,
    x: torch.Tensor,
    t: float,
    steps: int,
    prompt: str,
    inverse: InverseSolver = DDIM_INVERSION,
) -> torch.Tensor:
    """h_t (B, C, K, K) of a batch of images in [-1, 1], inverted by `inverse` (DDIM)."""
    z0 = backbone.encode(x)
    if _is_channels_last(backbone.unet):
        z0 = z0.contiguous(memory_format=torch.channels_last)
    inv = inverse.invert(backbone, z0, t, steps, prompt)
    return capture_mid(backbone, inv, prompt).contiguous()


def _is_channels_last(unet: torch.nn.Module) -> bool:
    w = getattr(getattr(unet, "conv_in", None), "weight", None)
    return w is not None and w.is_contiguous(memory_format=torch.channels_last)


def fast_path(
    backbone: DiffusionBackbone, channels_last: str = "auto", compile: bool = False
) -> dict:
    """Apply the U-Net speed-ups; return what the store's metadata records of them.

    channels_last ("auto", "on", "off"): NHWC convolutions, on by default for CPU and CUDA where
    benchmarks/bench_extract.py measures it faster with h equal to float tolerance; MPS stays
    NCHW (not measured here). compile: torch.compile the down and up blocks (the hooked mid
    block stays eager, so capture works unchanged); the compile time pays off on long runs only.
    """
    if channels_last not in ("auto", "on", "off"):
        raise ValueError(f"--channels-last must be auto, on or off, got {channels_last!r}")
    on = channels_last == "on" or (
        channels_last == "auto" and backbone.device.type in ("cpu", "cuda")
    )
    if on:
        backbone.unet.to(memory_format=torch.channels_last)
    if compile:
        for blocks in (backbone.unet.down_blocks, backbone.unet.up_blocks):
            for block in blocks:
                block.compile()
    return {"channels_last": True} if on else {}


def _shard_h(
    dataset: ImageSource,
    backbone: DiffusionBackbone,
    rows: tuple[int, int],
    batch: int,
    opts: dict[str, Any],
    bar: tqdm,
) -> np.ndarray:
    per = dataset.per_image if isinstance(dataset, WindowRows) else 1
    h_of = h_window if isinstance(dataset, WindowRows) else h_for_images
    parts = []
    for start in range(rows[0], rows[1], batch * per):
        idx = range(start, min(start + batch * per, rows[1]), per)  # one row per image
        x = torch.stack([dataset[i][0] for i in idx])
        parts.append(h_of(backbone, x, **opts).float().cpu().numpy())
        bar.update(len(idx) * per)
    return np.concatenate(parts)


def _shard_conversions(dataset: ImageSource, rows: tuple[int, int]) -> dict[str, int] | None:
    """How the shard's images were converted on loading (mode, size, frames), from headers."""
    of = getattr(dataset, "conversion_of", None)
    return None if of is None else count_conversions(of(i) for i in range(*rows))


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
    ranks: Ranks | None = None,
    meta_extra: dict[str, Any] | None = None,
    capture: str = "first",
    inverse: InverseSolver = DDIM_INVERSION,
) -> Path:
    """Fill (or finish) the activation store at `out` with h_t of every image; return `out`.

    dtype is the store's (h on disk); `ranks` makes this one of several extraction processes;
    meta_extra (e.g. fast_path's record) joins the run metadata a resumed run must match.
    capture "window" stores h at every resumed step instead (hsae.data.window); `inverse` is how
    x0 is inverted to z_t (DDIM on the `steps` grid, or a solver: hsae.diffusion.solvers)."""
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    if capture not in CAPTURES:
        raise ValueError(f"--capture must be one of {CAPTURES}, got {capture!r}")
    ranks = ranks or Ranks()
    meta = {**run_meta(backbone, t, steps, prompt), **inverse.record(), **(meta_extra or {})}
    if capture == "window":
        ts = window_timesteps(backbone, t, steps)
        meta["window"] = {"timesteps": ts, "rows_per_image": len(ts)}
        dataset = WindowRows(dataset, len(ts))
        shard_size = -(-shard_size // len(ts)) * len(ts)  # whole images per shard
    shape = backbone.hspace_shape()
    if ranks.rank == 0:
        writer = _open_writer(dataset, out, meta, shape, dtype, shard_size)
        ranks.barrier()  # the manifest exists (and stale files are gone) before others read it
    else:
        ranks.barrier()
        writer = ActivationStoreWriter.attach(out)
    try:  # rank 0's writer holds the store's lock (hsae.utils.lock) until the end
        mine = writer.pending_shards()[ranks.rank :: ranks.world]
        run = (t, steps, prompt, inverse)
        _extract_shards(dataset, backbone, writer, mine, batch, run, progress, ranks)
        ranks.barrier()
        if ranks.world > 1 and ranks.rank == 0:
            writer.adopt_entries()
        ranks.barrier()
    finally:
        writer.close()
    return Path(out)


def _open_writer(
    dataset: ImageSource,
    out: Path,
    meta: dict[str, Any],
    shape: tuple[int, ...],
    dtype: str,
    shard_size: int,
) -> ActivationStoreWriter:
    return ActivationStoreWriter.open(
        out,
        meta=meta,
        shape=shape,
        dtype=dtype,
        shard_size=shard_size,
        ids=dataset.ids,
        attributes=getattr(dataset, "attributes", None),
        attribute_names=getattr(dataset, "attribute_names", None),
        splits=_splits(dataset),
        skipped=getattr(dataset, "bad", []),
    )


def _extract_shards(
    dataset: ImageSource,
    backbone: DiffusionBackbone,
    writer: ActivationStoreWriter,
    shards: list[int],
    batch: int,
    run: tuple[float, int, str, InverseSolver],
    progress: bool,
    ranks: Ranks,
) -> None:
    todo = sum(b - a for a, b in map(writer.shard_rows, shards))
    opts = {"t": run[0], "steps": run[1], "prompt": run[2], "inverse": run[3]}
    desc = "extract" if ranks.world == 1 else f"extract [rank {ranks.rank}/{ranks.world}]"
    with tqdm(total=todo, unit="img", desc=desc, disable=not progress, dynamic_ncols=True) as bar:
        for i in shards:
            rows = writer.shard_rows(i)
            h = _shard_h(dataset, backbone, rows, batch, opts, bar)
            conversions = _shard_conversions(dataset, rows)
            writer.write_shard(i, h, record=ranks.world == 1, conversions=conversions)


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
        f"  converted       {conversion_summary(store.conversions(), len(store))}",
        f"  timestep        {m['timestep']} of {model.get('kind', '?')} model "
        f"{model.get('model_id', '?')!r}  (t={m['t']}, DDIM grid of {m['steps']} steps"
        + (
            f", inverted by {m['inverse_scheduler']} in {m['inverse_calls']} U-Net calls)"
            if m.get("inverse_scheduler")
            else ")"
        ),
        f"  shards          {n_shards} x <= {store.manifest['shard_size']} rows",
        *(
            [
                f"  window          {len(m['window']['timesteps'])} rows per image, timesteps "
                f"{m['window']['timesteps']}"
            ]
            if m.get("window")
            else []
        ),
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
    inverse = InverseSolver(args.inverse_scheduler, args.inverse_calls)  # checked before loading
    ranks = Ranks.from_launcher()
    backbone = DiffusionBackbone.load(args.model, dtype=args.dtype, device=args.device)
    record = fast_path(backbone, args.channels_last, args.compile)
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
        dtype=args.store_dtype,
        progress=not getattr(args, "no_progress", False),
        ranks=ranks,
        meta_extra=record,
        capture=args.capture,
        inverse=inverse,
    )
    if ranks.rank == 0:
        print(summary(ActivationStore(out)))
    return 0
