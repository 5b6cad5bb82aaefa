"""`hsae extract` against the loop a user would write, and the speed/fidelity trade of fewer steps.

    .venv/bin/python benchmarks/bench_extract.py --n 32 --batch 16 --steps 50 --repeats 3

The peer ("plain") is a plain diffusers loop: its own `from_pretrained` U-Net, the scheduler's
alphas, the same DDIM inversion to t and one more U-Net call at t with a forward hook on
`unet.mid_block` (the same U-Net calls and the same h). "hsae" is `extract()` end to end (PNG
decoding, inversion, capture, float16 conversion, checksummed atomic shards, manifest) with its
default fast path; "hsae-nchw" is the same without channels_last; "hsae-compile" (--compile)
adds torch.compile; "hsae-S-steps" extracts with an S-step DDIM grid instead. Repeats are
interleaved after a warm-up; min and median seconds per image are reported on the wall and the
process-CPU clock, with each variant's speed as a multiple of the peer's.

Fidelity: h of every variant against the peer's h (max |difference|, cosine), and for fewer
steps against the full-step h: cosine per image (min, mean) and the agreement of SAE codes
(Jaccard index of the active latents per image, mean) under an SAE trained here on the full-step
h of the same images (`--sae DIR` uses a trained one instead).
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from hsae.data.extract import extract, fast_path
from hsae.data.images import ImageDataset
from hsae.data.store import ActivationStore
from hsae.diffusion.backbone import DiffusionBackbone, toy_model_path
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


def load_backbone(model: str) -> tuple[DiffusionBackbone, torch.nn.Module]:
    """hsae's backbone and the peer's own copy of the same U-Net."""
    if model == "auto":
        model = "toy" if (toy_model_path() / "model_index.json").is_file() else "random"
    if model == "random":
        bb = random_toy_backbone()
        return bb, copy.deepcopy(bb.unet)
    from diffusers import UNet2DModel

    bb = DiffusionBackbone.load(model)
    source = str(toy_model_path()) if model == "toy" else model
    return bb, UNet2DModel.from_pretrained(source, subfolder="unet").eval()


def plain_loop(unet: torch.nn.Module, sched_cfg: dict, ds: ImageDataset, batch: int, steps: int,
               t: float) -> Callable[[], np.ndarray]:  # fmt: skip
    """The peer: what a user writes with diffusers alone (pixel DDPM, any prediction type)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(sched_cfg)
    sched.set_timesteps(steps)
    ts = sorted(int(s) for s in sched.timesteps)
    acp = [float(sched.alphas_cumprod[s]) for s in ts]
    k = min(range(len(ts)), key=lambda i: abs(ts[i] - t * sched.config.num_train_timesteps))
    kind = sched.config.prediction_type

    def eps_of(out: torch.Tensor, z: torch.Tensor, a: float) -> torch.Tensor:
        if kind == "epsilon":
            return out
        if kind == "v_prediction":
            return a**0.5 * out + (1 - a) ** 0.5 * z
        return (z - a**0.5 * out) / (1 - a) ** 0.5

    @torch.no_grad()
    def run() -> np.ndarray:
        seen: list[torch.Tensor] = []
        hook = unet.mid_block.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
        out = []
        try:
            for start in range(0, len(ds), batch):
                z = torch.stack([ds[i][0] for i in range(start, min(start + batch, len(ds)))])
                for i in range(k + 1):
                    a_from, a_to = (1.0 if i == 0 else acp[i - 1]), acp[i]
                    tt = torch.full((z.shape[0],), ts[i], dtype=torch.long)
                    eps = eps_of(unet(z, tt).sample, z, a_to)
                    z = a_to**0.5 * (z - (1 - a_from) ** 0.5 * eps) / a_from**0.5
                    z = z + (1 - a_to) ** 0.5 * eps
                seen.clear()
                unet(z, torch.full((z.shape[0],), ts[k], dtype=torch.long))
                out.append(seen[-1].float().numpy())
        finally:
            hook.remove()
        return np.concatenate(out)

    return run


def hsae_run(bb: DiffusionBackbone, ds: ImageDataset, tmp: Path, batch: int, steps: int,
             t: float, name: str) -> Callable[[], np.ndarray]:  # fmt: skip
    runs = iter(range(10**9))

    def run() -> np.ndarray:
        out = tmp / f"{name}-{next(runs)}"
        extract(ds, bb, out, t, steps, batch=batch, shard_size=len(ds), progress=False)
        h = ActivationStore(out)[:].astype(np.float32)
        shutil.rmtree(out)
        return h

    return run


def timed(fn: Callable[[], np.ndarray]) -> tuple[tuple[float, float], np.ndarray]:
    wall, cpu = time.perf_counter(), time.process_time()
    h = fn()
    return (time.perf_counter() - wall, time.process_time() - cpu), h


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def code_agreement(sae: torch.nn.Module, h: np.ndarray, ref: np.ndarray) -> float:
    """Mean over images of the Jaccard index of the active (non-zero) SAE codes."""
    with torch.no_grad():
        a = sae.encode(torch.from_numpy(h)).flatten(1) != 0
        b = sae.encode(torch.from_numpy(ref)).flatten(1) != 0
    inter, union = (a & b).sum(1).double(), (a | b).sum(1).double().clamp_min(1)
    return float((inter / union).mean())


def fit_sae(h: np.ndarray, tmp: Path, sae_dir: Path | None) -> torch.nn.Module:
    """The SAE whose codes are compared: `--sae`, or one trained here on the reference h."""
    from hsae.sae import build_sae, load_sae, make_config
    from hsae.training.config import TrainConfig
    from hsae.training.loop import train

    if sae_dir is not None:
        return load_sae(sae_dir).eval()

    class _Store:  # the trainer's StoreLike over an in-memory array
        def __init__(self, x: np.ndarray) -> None:
            self.x, self.shape, self.meta, self.splits = x, x.shape, {}, None

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, rows: object) -> np.ndarray:
            return self.x[rows]

    _, c, k, _ = h.shape
    torch.manual_seed(0)
    sae = build_sae(make_config("channel_aware", c, k, n_latents=64, n_train_images=len(h)))
    batch = min(8, len(h))
    cfg = TrainConfig(steps=300, batch_images=batch, split="all", checkpoint_every=300, seed=0)
    train(sae, _Store(h), cfg, tmp / "sae", progress=False)
    return sae.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="auto", help="'auto', 'toy', 'random' or a diffusers folder")
    p.add_argument("--n", type=int, default=32, help="images per timed run")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=50, help="the reference DDIM grid")
    p.add_argument("--fewer", type=int, nargs="*", default=[10, 20, 25], help="grids to compare")
    p.add_argument("--t", type=float, default=0.7)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow start)")
    p.add_argument("--sae", type=Path, default=None, help="SAE for the code agreement")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    try:
        figures = bench(a, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    figures["command"] = shlex.join([Path(sys.executable).name, *sys.argv])
    print(f"command: {figures['command']}")
    if a.json:
        a.json.write_text(json.dumps(figures, indent=2) + "\n")


def bench(a: argparse.Namespace, tmp: Path) -> dict:
    bb, peer_unet = load_backbone(a.model)
    write_dataset(tmp / "data", a.n, progress=False)
    ds = ImageDataset(tmp / "data", bb.image_size)
    nchw = bb
    fast = copy.copy(bb)  # same scheduler and encoders, its own U-Net in the fast layout
    fast.unet = copy.deepcopy(bb.unet)
    fast_path(fast, "auto")
    variants = {
        "plain": plain_loop(peer_unet, dict(bb.scheduler.config), ds, a.batch, a.steps, a.t),
        "hsae": hsae_run(fast, ds, tmp, a.batch, a.steps, a.t, "hsae"),
        "hsae-nchw": hsae_run(nchw, ds, tmp, a.batch, a.steps, a.t, "nchw"),
    }
    for s in a.fewer:
        variants[f"hsae-{s}-steps"] = hsae_run(fast, ds, tmp, a.batch, s, a.t, f"s{s}")
    compile_s = None
    if a.compile:
        comp = copy.copy(bb)
        comp.unet = copy.deepcopy(bb.unet)
        fast_path(comp, "auto", compile=True)
        variants["hsae-compile"] = hsae_run(comp, ds, tmp, a.batch, a.steps, a.t, "compile")
    h: dict[str, np.ndarray] = {}
    for name, fn in variants.items():  # warm-up (and the compile, timed once)
        sec, h[name] = timed(fn)
        if name == "hsae-compile":
            compile_s = sec[0]
    times: dict[str, dict[str, list[float]]] = {c: {k: [] for k in variants} for c in CLOCKS}
    for r in range(a.repeats):
        order = list(variants.items())
        for name, fn in order if r % 2 == 0 else order[::-1]:
            sec, _ = timed(fn)
            for clock, s in zip(CLOCKS, sec, strict=True):
                times[clock][name].append(s / a.n)
    sae = fit_sae(h["hsae"], tmp, a.sae)
    setup = (
        f"model {bb.model_id}, h-space {bb.hspace_shape()}, {torch.get_num_threads()} torch "
        f"thread(s); {a.n} images, batch {a.batch}, t={a.t}, {a.steps}-step reference grid; "
        f"{a.repeats} interleaved repeats after a warm-up"
    )
    return report(setup, times, h, sae, a, compile_s)


def report(setup: str, times: dict, h: dict[str, np.ndarray], sae: torch.nn.Module,
           a: argparse.Namespace, compile_s: float | None) -> dict:  # fmt: skip
    print(setup)
    figures: dict = {"setup": setup, "variants": {}}
    if compile_s is not None:
        figures["compile_warmup_s_per_run"] = compile_s
    print(
        f"{'variant':16s} {'wall min/med ms/img':>20s} {'cpu min/med':>16s} {'x plain':>9s} "
        f"{'cos to plain':>13s} {'cos to ref min/mean':>19s} {'code Jaccard':>13s}"
    )
    peer = min(times["cpu"]["plain"])
    for name in times["cpu"]:
        wall, cpu = times["wall"][name], times["cpu"][name]
        steps_variant = name.endswith("-steps")
        cos_plain = cosines(h[name], h["plain"])
        ref_cos = cosines(h[name], h["hsae"])
        row = {
            "wall_ms": {"min": min(wall) * 1e3, "median": statistics.median(wall) * 1e3},
            "cpu_ms": {"min": min(cpu) * 1e3, "median": statistics.median(cpu) * 1e3},
            "speed_vs_plain": peer / min(cpu),
            "speed_vs_plain_median": statistics.median(times["cpu"]["plain"])
            / statistics.median(cpu),
            "max_abs_diff_to_plain": float(np.abs(h[name] - h["plain"]).max()),
            "cos_to_plain_min": float(cos_plain.min()),
            "cos_to_ref_min": float(ref_cos.min()),
            "cos_to_ref_mean": float(ref_cos.mean()),
            "code_jaccard_to_ref": code_agreement(sae, h[name], h["hsae"]),
        }
        figures["variants"][name] = row
        cos = "" if steps_variant else f"{row['cos_to_plain_min']:.6f}"
        print(
            f"{name:16s} {row['wall_ms']['min']:10.1f} /{row['wall_ms']['median']:8.1f} "
            f"{row['cpu_ms']['min']:8.1f} /{row['cpu_ms']['median']:7.1f} "
            f"{row['speed_vs_plain']:8.2f}x {cos:>13s} "
            f"{row['cos_to_ref_min']:9.5f} /{row['cos_to_ref_mean']:8.5f} "
            f"{row['code_jaccard_to_ref']:13.3f}"
        )
    return figures


if __name__ == "__main__":
    main()
