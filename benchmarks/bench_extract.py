"""`hsae extract` against the loop a user would write, and the speed/fidelity trade of fewer steps.

    .venv/bin/python benchmarks/bench_extract.py --n 32 --batch 16 --steps 50 --repeats 3
    .venv/bin/python benchmarks/bench_extract.py --model sd21-random --solvers-only --n 1 \
        --batch 1 --repeats 0 --threads 2 --finest-calls 0 --no-roundtrip    # SD 2.1-base sized

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

Inverse solvers (`--solvers NAME:CALLS ...`, hsae.diffusion.solvers): "path S" is extraction's
compute path (encode, invert, capture h: what `hsae extract` does per batch, without the store)
with inversion S: "path ddim" the --steps DDIM grid, "path dpm++3m:8" DPM-Solver++(3M) in 8
U-Net calls to the same timestep. Each is compared with the DDIM h ("cos to ref") and with h of
the finest first-order inversion, one DDIM step per training timestep up to t ("cos to
finest", --finest-calls; 0 skips it), and timed with the rest. "rt dB" is the round trip
invert → resume → decode against the input (DDIM variants resume on their grid, solvers with
their own reverse, hsae.diffusion.solvers.resume_solver). `--model sd21-random` (SD 2.1-base's
real U-Net and VAE with random weights) has no plain peer: there the ratios are to "path ddim".
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

from hsae.data.extract import capture_mid, extract, fast_path
from hsae.data.images import ImageDataset
from hsae.data.store import ActivationStore
from hsae.diffusion.backbone import DiffusionBackbone, toy_model_path
from hsae.diffusion.invert import ddim_grid, resume
from hsae.diffusion.solvers import InverseSolver, resume_solver
from hsae.toy.toyfaces import write_dataset
from hsae.utils.metrics import mse, psnr

CLOCKS = ("wall", "cpu")


def random_toy_backbone() -> DiffusionBackbone:
    """Random-init U-Net with the toy DDPM's architecture and scheduler."""
    from diffusers import UNet2DModel

    from hsae.toy.ddpm_training import UNET_CONFIG, build_scheduler

    torch.manual_seed(0)
    unet = UNet2DModel(**UNET_CONFIG)
    sched = build_scheduler("epsilon")
    return DiffusionBackbone(unet, dict(sched.config), model_id="random-toy-architecture")


def load_backbone(model: str) -> tuple[DiffusionBackbone, torch.nn.Module | None]:
    """hsae's backbone and the peer's own copy of the same U-Net (None: no plain peer)."""
    if model == "auto":
        model = "toy" if (toy_model_path() / "model_index.json").is_file() else "random"
    if model == "random":
        bb = random_toy_backbone()
        return bb, copy.deepcopy(bb.unet)
    if model == "sd21-random":
        from sd_random import sd21_random_backbone

        return sd21_random_backbone(), None
    from diffusers import UNet2DModel

    bb = DiffusionBackbone.load(model)
    source = str(toy_model_path()) if model == "toy" else model
    return bb, UNet2DModel.from_pretrained(source, subfolder="unet").eval()


def plain_loop(unet: torch.nn.Module, sched_cfg: dict, ds: ImageDataset, batch: int, steps: int,
               t: float, vae: torch.nn.Module | None = None,
               cond: torch.Tensor | None = None) -> Callable[[], np.ndarray]:  # fmt: skip
    """The peer: what a user writes with diffusers alone (any prediction type; a latent model
    with its VAE, whose posterior mean is z0, and the prompt's text states `cond`)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(sched_cfg)
    sched.set_timesteps(steps)
    ts = sorted(int(s) for s in sched.timesteps)
    acp = [float(sched.alphas_cumprod[s]) for s in ts]
    k = min(range(len(ts)), key=lambda i: abs(ts[i] - t * sched.config.num_train_timesteps))
    kind = sched.config.prediction_type
    param = next(unet.parameters())

    def eps_of(out: torch.Tensor, z: torch.Tensor, a: float) -> torch.Tensor:
        if kind == "epsilon":
            return out
        if kind == "v_prediction":
            return a**0.5 * out + (1 - a) ** 0.5 * z
        return (z - a**0.5 * out) / (1 - a) ** 0.5

    def call(z: torch.Tensor, timestep: int) -> torch.Tensor:
        tt = torch.full((z.shape[0],), timestep, dtype=torch.long, device=z.device)
        if cond is None:
            return unet(z, tt).sample
        return unet(z, tt, encoder_hidden_states=cond.expand(z.shape[0], -1, -1)).sample

    @torch.no_grad()
    def run() -> np.ndarray:
        seen: list[torch.Tensor] = []
        hook = unet.mid_block.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
        out = []
        try:
            for start in range(0, len(ds), batch):
                z = torch.stack([ds[i][0] for i in range(start, min(start + batch, len(ds)))])
                z = z.to(param.device, param.dtype)
                if vae is not None:
                    z = vae.encode(z).latent_dist.mean * float(vae.config.scaling_factor)
                for i in range(k + 1):
                    a_from, a_to = (1.0 if i == 0 else acp[i - 1]), acp[i]
                    eps = eps_of(call(z, ts[i]), z, a_to)
                    z = a_to**0.5 * (z - (1 - a_from) ** 0.5 * eps) / a_from**0.5
                    z = z + (1 - a_to) ** 0.5 * eps
                seen.clear()
                call(z, ts[k])
                out.append(seen[-1].float().cpu().numpy())
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


def solver_run(bb: DiffusionBackbone, ds: ImageDataset, batch: int, steps: int, t: float,
               solver: InverseSolver) -> Callable[[], np.ndarray]:  # fmt: skip
    """Extraction's compute path with `solver`'s inversion: encode, invert, capture h."""

    @torch.no_grad()
    def run() -> np.ndarray:
        out = []
        for start in range(0, len(ds), batch):
            x = torch.stack([ds[i][0] for i in range(start, min(start + batch, len(ds)))])
            z0 = bb.encode(x)
            if bb.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last):
                z0 = z0.contiguous(memory_format=torch.channels_last)
            inv = solver.invert(bb, z0, t, steps)
            out.append(capture_mid(bb, inv).float().cpu().numpy())
        return np.concatenate(out)

    return run


def roundtrip_db(bb: DiffusionBackbone, ds: ImageDataset, batch: int, steps: int, t: float,
                 solver: InverseSolver) -> float:  # fmt: skip
    """PSNR of decode(resume(invert(encode(x)))) against x over the images, in dB."""
    errs = []
    with torch.no_grad():
        for start in range(0, len(ds), batch):
            x = torch.stack([ds[i][0] for i in range(start, min(start + batch, len(ds)))])
            inv = solver.invert(bb, bb.encode(x), t, steps)
            if solver.order == 0:
                z, _ = resume(bb, inv.z_t, inv.t_index, inv.grid)
            else:
                z = resume_solver(bb, inv.z_t, solver, t, steps)
            errs.append(mse(bb.decode(z), x) * len(x))
    return psnr(sum(errs) / len(ds))


def finest_solver(bb: DiffusionBackbone, steps: int, t: float, calls: int) -> InverseSolver:
    """First-order inversion with one step per training timestep up to t (calls < 0: all)."""
    grid = ddim_grid(bb, steps)
    span = grid.timesteps[grid.index_for(t)] - grid.timesteps[0]
    return InverseSolver("dpm++1", span if calls < 0 else min(calls, span), "time")


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
    p.add_argument(
        "--model",
        default="auto",
        help="'auto', 'toy', 'random', 'sd21-random' (SD 2.1-base sized) or a diffusers folder",
    )
    p.add_argument("--n", type=int, default=32, help="images per timed run")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=50, help="the reference DDIM grid")
    p.add_argument("--fewer", type=int, nargs="*", default=[10, 20, 25], help="grids to compare")
    p.add_argument("--t", type=float, default=0.7)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow start)")
    p.add_argument(
        "--solvers",
        nargs="*",
        default=["dpm++3m:8", "dpm++2m:8", "dpm++1:8", "dpm++3m:6"],
        help="inverse solvers NAME:CALLS[:SPACING] (hsae.diffusion.solvers) to compare",
    )
    p.add_argument(
        "--finest-calls",
        type=int,
        default=-1,
        help="U-Net calls of the finest reference inversion (-1: one per timestep; 0: none)",
    )
    p.add_argument("--solvers-only", action="store_true", help="no plain peer and store runs")
    p.add_argument("--no-roundtrip", action="store_true", help="skip the round-trip dB")
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


def store_variants(a: argparse.Namespace, bb: DiffusionBackbone, peer_unet: torch.nn.Module,
                   ds: ImageDataset, tmp: Path) -> tuple[dict, DiffusionBackbone]:  # fmt: skip
    """The plain peer and `extract()` end to end (fast path, NCHW, fewer steps, compile)."""
    fast = copy.copy(bb)  # same scheduler and encoders, its own U-Net in the fast layout
    fast.unet = copy.deepcopy(bb.unet)
    fast_path(fast, "auto")
    variants = {
        "plain": plain_loop(peer_unet, dict(bb.scheduler.config), ds, a.batch, a.steps, a.t),
        "hsae": hsae_run(fast, ds, tmp, a.batch, a.steps, a.t, "hsae"),
        "hsae-nchw": hsae_run(bb, ds, tmp, a.batch, a.steps, a.t, "nchw"),
    }
    for s in a.fewer:
        variants[f"hsae-{s}-steps"] = hsae_run(fast, ds, tmp, a.batch, s, a.t, f"s{s}")
    if a.compile:
        comp = copy.copy(bb)
        comp.unet = copy.deepcopy(bb.unet)
        fast_path(comp, "auto", compile=True)
        variants["hsae-compile"] = hsae_run(comp, ds, tmp, a.batch, a.steps, a.t, "compile")
    return variants, fast


def run_all(variants: dict, a: argparse.Namespace) -> tuple[dict, dict, float | None]:
    """A warm-up pass (h of every variant), then interleaved timed repeats (0: the warm-up's)."""
    h: dict[str, np.ndarray] = {}
    first: dict[str, tuple[float, float]] = {}
    for name, fn in variants.items():  # warm-up (and the compile, timed once)
        first[name], h[name] = timed(fn)
    compile_s = first["hsae-compile"][0] if "hsae-compile" in first else None
    times: dict[str, dict[str, list[float]]] = {c: {k: [] for k in variants} for c in CLOCKS}
    for r in range(a.repeats):
        order = list(variants.items())
        for name, fn in order if r % 2 == 0 else order[::-1]:
            sec, _ = timed(fn)
            for clock, s in zip(CLOCKS, sec, strict=True):
                times[clock][name].append(s / a.n)
    if a.repeats == 0:
        for name, sec in first.items():
            for clock, s in zip(CLOCKS, sec, strict=True):
                times[clock][name].append(s / a.n)
    return h, times, compile_s


def bench(a: argparse.Namespace, tmp: Path) -> dict:
    bb, peer_unet = load_backbone(a.model)
    write_dataset(tmp / "data", a.n, progress=False)
    ds = ImageDataset(tmp / "data", bb.image_size)
    if a.solvers_only or peer_unet is None:
        fast_path(bb, "auto")
        variants, fast = {}, bb
    else:
        variants, fast = store_variants(a, bb, peer_unet, ds, tmp)
    trips = {name: (a.steps, InverseSolver()) for name in variants}
    trips |= {
        f"hsae-{s}-steps": (s, InverseSolver()) for s in a.fewer if f"hsae-{s}-steps" in trips
    }
    for spec in ["ddim", *a.solvers]:
        solver = InverseSolver.parse(spec)
        variants[f"path {solver.label()}"] = solver_run(fast, ds, a.batch, a.steps, a.t, solver)
        trips[f"path {solver.label()}"] = (a.steps, solver)
    h, times, compile_s = run_all(variants, a)
    if a.finest_calls:
        finest = finest_solver(fast, a.steps, a.t, a.finest_calls)
        h["finest"] = solver_run(fast, ds, a.batch, a.steps, a.t, finest)()
    db: dict[tuple[int, str], float] = {}
    if not a.no_roundtrip:
        for steps, solver in trips.values():
            if (steps, solver.label()) not in db:
                db[steps, solver.label()] = roundtrip_db(fast, ds, a.batch, steps, a.t, solver)
    rt = {name: db.get((steps, solver.label())) for name, (steps, solver) in trips.items()}
    ref = "hsae" if "hsae" in h else "path ddim"
    sae = fit_sae(h[ref], tmp, a.sae)
    setup = (
        f"model {bb.model_id}, h-space {bb.hspace_shape()}, {torch.get_num_threads()} torch "
        f"thread(s); {a.n} images, batch {a.batch}, t={a.t}, {a.steps}-step reference grid; "
        f"{a.repeats} interleaved repeats after a warm-up"
        + (f"; finest: {h_finest_label(a, fast)}" if "finest" in h else "")
    )
    return report(setup, times, h, sae, ref, rt, compile_s)


def h_finest_label(a: argparse.Namespace, bb: DiffusionBackbone) -> str:
    solver = finest_solver(bb, a.steps, a.t, a.finest_calls)
    return f"first-order inversion in {solver.n_calls} U-Net calls (one per timestep)"


def report(setup: str, times: dict, h: dict[str, np.ndarray], sae: torch.nn.Module, ref: str,
           rt: dict[str, float | None], compile_s: float | None) -> dict:  # fmt: skip
    """One row per variant; ratios to the plain peer (or, without one, to "path ddim")."""
    print(setup)
    figures: dict = {"setup": setup, "reference": ref, "variants": {}}
    if compile_s is not None:
        figures["compile_warmup_s_per_run"] = compile_s
    base = "plain" if "plain" in times["cpu"] else "path ddim"
    print(
        f"{'variant':20s} {'wall min/med ms/img':>20s} {'cpu min/med':>16s} {'x ' + base:>11s} "
        f"{'cos to plain':>13s} {'cos to ref min/mean':>19s} {'cos to finest':>17s} "
        f"{'rt dB':>6s} {'code Jaccard':>13s}"
    )
    for name in times["cpu"]:
        row = figure_row(name, times, h, sae, ref, base)
        row["roundtrip_db"] = rt.get(name)
        figures["variants"][name] = row
        print(format_row(name, row, base))
    return figures


def figure_row(name: str, times: dict, h: dict[str, np.ndarray], sae: torch.nn.Module, ref: str,
               base: str) -> dict:  # fmt: skip
    wall, cpu = times["wall"][name], times["cpu"][name]
    ref_cos = cosines(h[name], h[ref])
    row: dict = {
        "wall_ms": {"min": min(wall) * 1e3, "median": statistics.median(wall) * 1e3},
        "cpu_ms": {"min": min(cpu) * 1e3, "median": statistics.median(cpu) * 1e3},
        f"speed_vs_{base}": min(times["cpu"][base]) / min(cpu),
        f"speed_vs_{base}_median": statistics.median(times["cpu"][base]) / statistics.median(cpu),
        "cos_to_ref_min": float(ref_cos.min()),
        "cos_to_ref_mean": float(ref_cos.mean()),
        "code_jaccard_to_ref": code_agreement(sae, h[name], h[ref]),
    }
    if "plain" in h:
        cos_plain = cosines(h[name], h["plain"])
        row["max_abs_diff_to_plain"] = float(np.abs(h[name] - h["plain"]).max())
        row["cos_to_plain_min"] = float(cos_plain.min())
    if "finest" in h:
        fine = cosines(h[name], h["finest"])
        row["cos_to_finest_min"], row["cos_to_finest_mean"] = float(fine.min()), float(fine.mean())
    return row


def format_row(name: str, row: dict, base: str) -> str:
    same_grid = not name.endswith("-steps") and not name.startswith("path dpm")
    cos = f"{row['cos_to_plain_min']:.6f}" if same_grid and "cos_to_plain_min" in row else ""
    fine = (
        f"{row['cos_to_finest_min']:.5f} /{row['cos_to_finest_mean']:.5f}"
        if "cos_to_finest_min" in row
        else ""
    )
    db = f"{row['roundtrip_db']:.1f}" if row.get("roundtrip_db") is not None else ""
    return (
        f"{name:20s} {row['wall_ms']['min']:10.1f} /{row['wall_ms']['median']:8.1f} "
        f"{row['cpu_ms']['min']:8.1f} /{row['cpu_ms']['median']:7.1f} "
        f"{row[f'speed_vs_{base}']:10.2f}x {cos:>13s} "
        f"{row['cos_to_ref_min']:9.5f} /{row['cos_to_ref_mean']:8.5f} {fine:>17s} {db:>6s} "
        f"{row['code_jaccard_to_ref']:13.3f}"
    )


if __name__ == "__main__":
    main()
