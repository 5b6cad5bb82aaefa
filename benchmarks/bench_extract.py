"""Overhead of the extraction stage over the bare U-Net work it needs, measured in one run.

    .venv/bin/python benchmarks/bench_extract.py --n 64 --batch 32 --steps 50 --repeats 3

"extract" is `hsae.data.extract.extract()` end to end (PNG decoding, inversion, the mid-block hook,
float16 conversion, checksummed atomic shard writes, manifest). "bare" is the same number of
`unet(z, t)` calls at the same batch sizes and timesteps under torch.no_grad, with no hook, no
image loading and no store. Repeats are interleaved (alternating order) after a warm-up; min and
median seconds per image are reported, wall-clock and process CPU time (steadier when the machine
is shared), with the ratio extract/bare for each (target <= 1.05).

The model is the bundled toy DDPM when src/hsae/assets/toy-ddpm exists, else a random-init
UNet2DModel with hsae.toy.ddpm_training's UNET_CONFIG (same cost; weights do not matter).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from hsae.data.extract import extract
from hsae.data.images import ImageDataset
from hsae.data.store import num_shards, shard_bounds
from hsae.diffusion.backbone import DiffusionBackbone, toy_model_path
from hsae.diffusion.invert import ddim_grid
from hsae.toy.toyfaces import write_dataset

CLOCKS = ("wall", "cpu")


def random_toy_backbone() -> DiffusionBackbone:
    """Random-init U-Net with the toy DDPM's architecture and scheduler."""
    from diffusers import UNet2DModel

    from hsae.toy.ddpm_training import UNET_CONFIG, build_scheduler

    torch.manual_seed(0)
    unet = UNet2DModel(**UNET_CONFIG)
    sched = build_scheduler("epsilon")
    return DiffusionBackbone(unet, dict(sched.config), model_id="random-toy-architecture")


def load_backbone(model: str) -> DiffusionBackbone:
    if model == "auto":
        model = "toy" if (toy_model_path() / "model_index.json").is_file() else "random"
    return random_toy_backbone() if model == "random" else DiffusionBackbone.load(model)


def batch_sizes(n: int, batch: int, shard_size: int) -> list[int]:
    """The batch sizes extract() uses: batches never straddle a shard."""
    sizes = []
    for i in range(num_shards(n, shard_size)):
        a, b = shard_bounds(i, n, shard_size)
        sizes += [min(batch, b - s) for s in range(a, b, batch)]
    return sizes


def make_bare(backbone: DiffusionBackbone, sizes: list[int], steps: int, t: float):
    """A closure doing exactly the U-Net calls of extract(): inversion to t, then one capture."""
    grid = ddim_grid(backbone, steps)
    k = grid.index_for(t)
    timesteps = [*grid.timesteps[: k + 1], grid.timesteps[k]]
    gen = torch.Generator().manual_seed(0)
    zs = [torch.randn((b, *backbone.latent_shape), generator=gen) for b in sizes]
    ts = {b: [torch.full((b,), s, dtype=torch.long) for s in timesteps] for b in set(sizes)}

    @torch.no_grad()
    def run() -> None:
        for z in zs:
            for tt in ts[z.shape[0]]:
                backbone.unet(z, tt)

    return run, len(timesteps)


def timed(fn) -> tuple[float, float]:
    """(wall, process CPU) seconds of fn(); CPU time is steadier on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="auto", help="'auto', 'toy', 'random' or a diffusers folder")
    p.add_argument("--n", type=int, default=64, help="images per timed run")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--t", type=float, default=0.7)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    backbone = load_backbone(a.model)
    tmp = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    write_dataset(tmp / "data", a.n, progress=False)
    ds = ImageDataset(tmp / "data", backbone.image_size)
    sizes = batch_sizes(a.n, a.batch, a.shard_size)
    bare, calls = make_bare(backbone, sizes, a.steps, a.t)
    runs = iter(range(10**9))

    def run_extract() -> None:
        out = tmp / f"store-{next(runs)}"
        opts = {"batch": a.batch, "shard_size": a.shard_size, "progress": False}
        extract(ds, backbone, out, a.t, a.steps, **opts)

    run_extract()  # warm-up
    bare()
    times: dict[str, dict[str, list[float]]] = {c: {"extract": [], "bare": []} for c in CLOCKS}
    for r in range(a.repeats):
        order = [("extract", run_extract), ("bare", bare)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            for clock, sec in zip(CLOCKS, timed(fn), strict=True):
                times[clock][name].append(sec / a.n)
    setup = (
        f"model {backbone.model_id}, h-space {backbone.hspace_shape()}, "
        f"{torch.get_num_threads()} torch threads\n"
        f"{a.n} images, {len(sizes)} batches of <= {a.batch}, {calls} U-Net calls per batch "
        f"({a.steps}-step grid, t={a.t}), {a.repeats} interleaved repeats after a warm-up"
    )
    shutil.rmtree(tmp, ignore_errors=True)
    report(setup, times, a.json)


def report(setup: str, times: dict[str, dict[str, list[float]]], json_path: Path | None) -> None:
    print(setup)
    figures: dict = {"setup": setup}
    for clock, by_run in times.items():
        stats = {k: {"min": min(v), "median": statistics.median(v)} for k, v in by_run.items()}
        ratio = {s: stats["extract"][s] / stats["bare"][s] for s in ("min", "median")}
        figures[clock] = {"stats": stats, "ratio": ratio}
        for k, s in stats.items():
            print(
                f"  {clock:4s} {k:8s} min {s['min'] * 1e3:8.2f} ms/img   "
                f"median {s['median'] * 1e3:8.2f} ms/img"
            )
        verdict = "OK" if ratio["min"] <= 1.05 else "ABOVE TARGET"
        print(
            f"  {clock:4s} ratio extract/bare: min {ratio['min']:.3f}  "
            f"median {ratio['median']:.3f}  (target <= 1.05: {verdict})"
        )
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    print(f"command: {command}")
    if json_path:
        figures["command"] = command
        json_path.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
