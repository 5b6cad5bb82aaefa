"""The GPU check: SD 2.1-sized extraction and SAE training against their peers, side by side in
one run, written to one JSON (docs/gpu.md).

    benchmarks/gpu_check.sh                       # = make gpu-check: CUDA, float16, SD 2.1 sizes
    benchmarks/gpu_check.sh --device cpu --tiny   # the same code at toy sizes, in seconds

1. Extraction, images/s: `hsae extract` end to end (hsae.data.extract.extract: its fast path,
   DDIM inversion to t, h at unet.mid_block, the float16 store) against the plain diffusers
   loop (the peer's own copy of the U-Net, the VAE's posterior mean, the same DDIM inversion and
   one more U-Net call with a forward hook on unet.mid_block: the same U-Net calls and the same
   h), and extraction's compute path with DPM-Solver++(3M) in 8 U-Net calls to the same
   timestep (hsae.diffusion.solvers; 3 calls with --tiny). The model is SD 2.1-base's real
   U-Net and VAE with random weights (benchmarks/sd_random.py) at 512² (h 1280×8×8), in --dtype
   (float16 on CUDA).
2. SAE training, tokens/s: one step of hsae's trainer (channel-aware SAE on SD's h: 1280 channel
   tokens of 8·8 + 2 values per image, fused Adam) against overcomplete's SAE, the fastest peer
   of benchmarks/bench_sae.py; where overcomplete is not installed the hand-written torch loop of
   the same math stands in, and the JSON says which ran.

Each contender's memory peak is recorded: on CUDA torch.cuda.max_memory_allocated over its own
runs; on the CPU the process's peak RSS so far (it only grows, so read it in order). Repeats are
interleaved after a warm-up; min and median are reported. --tiny shrinks every size (a two-level
U-Net, h 64×8×8, 4 images, a 10-step grid, 1024 tokens) so the CPU path cannot rot.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark modules

from bench_extract import cosines, hsae_run, plain_loop, solver_run
from hsae.data.extract import fast_path
from hsae.data.images import ImageDataset
from hsae.diffusion.solvers import InverseSolver
from hsae.toy.toyfaces import write_dataset
from hsae.utils.device import resolve_device, resolve_dtype
from sd_random import sd21_random_backbone

SIZES = {  # full (one H100-class GPU, <= 5 min) and --tiny (CPU, seconds)
    False: {"n": 32, "batch": 16, "steps": 50, "repeats": 3, "solver": "dpm++3m:8",
            "sae_images": 64, "latents": 512, "sae_steps": 20},
    True: {"n": 4, "batch": 2, "steps": 10, "repeats": 1, "solver": "dpm++3m:3",
           "sae_images": 16, "latents": 64, "sae_steps": 2},
}  # fmt: skip


# ----- measuring --------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"cuda_max_allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20}
    return {"process_peak_rss_mb_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device
                ) -> tuple[dict[str, list[float]], dict[str, dict], dict[str, Any]]:  # fmt: skip
    """Seconds per call of each fn (warm-up first, then `repeats` rounds, alternating order),
    each one's memory peak over its own calls, and its warm-up result."""
    secs: dict[str, list[float]] = {k: [] for k in fns}
    peaks: dict[str, dict] = {}
    first: dict[str, Any] = {}
    for name, fn in fns.items():
        reset_peak(device)
        first[name] = fn()
        sync(device)
        peaks[name] = peak_mb(device)
    for r in range(repeats):
        order = list(fns.items())
        for name, fn in order if r % 2 == 0 else order[::-1]:
            reset_peak(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            secs[name].append(time.perf_counter() - t0)
            peak = peak_mb(device)
            peaks[name] = {k: max(v, peaks[name].get(k, 0.0)) for k, v in peak.items()}
    return secs, peaks, first


def rates(secs: list[float], per_call: float) -> dict[str, float]:
    return {"max": per_call / min(secs), "median": per_call / statistics.median(secs)}


# ----- 1. extraction ----------------------------------------------------------------------------
def extraction(a: argparse.Namespace, sizes: dict, device: torch.device, dtype: torch.dtype,
               tmp: Path) -> dict[str, Any]:  # fmt: skip
    n, batch, steps = sizes["n"], sizes["batch"], sizes["steps"]
    bb = sd21_random_backbone(tiny=a.tiny).to(device, dtype)
    write_dataset(tmp / "data", n, progress=False)
    ds = ImageDataset(tmp / "data", bb.image_size)
    peer_unet = copy.deepcopy(bb.unet)  # the peer's own U-Net, in the default layout
    fast = copy.copy(bb)
    fast.unet = copy.deepcopy(bb.unet)
    record = fast_path(fast, "auto")
    sched_cfg, cond = dict(bb.scheduler.config), bb.condition("")
    solver = InverseSolver.parse(sizes["solver"])
    fns = {
        "plain diffusers": plain_loop(peer_unet, sched_cfg, ds, batch, steps, a.t, bb.vae, cond),
        "hsae extract": hsae_run(fast, ds, tmp, batch, steps, a.t, "hsae"),
        f"hsae {solver.label()}": solver_run(fast, ds, batch, steps, a.t, solver),
    }
    secs, peaks, h = interleaved(fns, sizes["repeats"], device)
    peer = secs["plain diffusers"]
    rows = {}
    for name, s in secs.items():
        cos = cosines(h[name], h["plain diffusers"])
        rows[name] = {
            "images_per_s": rates(s, n),
            "speed_vs_plain": {"min": min(peer) / min(s), "median": np.median(peer) / np.median(s)},
            "h_cos_to_plain": {"min": float(cos.min()), "mean": float(cos.mean())},
            "peak_memory": peaks[name],
            "seconds": s,
        }
    return {
        "model": bb.model_id,
        "h_shape": list(bb.hspace_shape()),
        "image_size": bb.image_size,
        "images": n,
        "batch": batch,
        "ddim_steps": steps,
        "t": a.t,
        "fast_path": record,
        "variants": rows,
    }


# ----- 2. SAE training --------------------------------------------------------------------------
def sae_training(a: argparse.Namespace, sizes: dict, device: torch.device) -> dict[str, Any]:
    from bench_sae import hsae_trainer_step, overcomplete_step, plain_step

    c, k = (128, 8) if a.tiny else (1280, 8)
    n_img, latents, l1, lr = sizes["sae_images"], sizes["latents"], 1e-3, 1e-4
    tokens = n_img * c
    flat = (tokens, k * k, 2, latents, l1, lr)
    steps: dict[str, Callable[[], None]] = {}
    with torch.device(device):  # every tensor and module the step builders make
        steps["hsae trainer"] = hsae_trainer_step(c, k, n_img, latents, l1, lr)
        try:
            steps["overcomplete SAE"] = overcomplete_step(*flat)
            peer, note = "overcomplete SAE", None
        except ImportError as e:
            steps["plain torch"] = plain_step(*flat)
            peer, note = "plain torch", f"overcomplete not installed ({e}); plain torch stands in"
    per = sizes["sae_steps"]

    def many(step: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(per):
                step()

        return run

    secs, peaks, _ = interleaved({k: many(v) for k, v in steps.items()}, 3, device)
    rows = {
        name: {
            "tokens_per_s": rates(s, tokens * per),
            "speed_vs_peer": {
                "min": min(secs[peer]) / min(s),
                "median": np.median(secs[peer]) / np.median(s),
            },
            "peak_memory": peaks[name],
        }
        for name, s in secs.items()
    }
    shape = {"images": n_img, "channels": c, "tokens": tokens, "d": k * k + 2, "latents": latents}
    return {"shape": shape, "steps_per_repeat": per, "peer": peer, "note": note, "contenders": rows}


# ----- running ----------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU ({torch.get_num_threads()} torch threads)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--dtype", default="auto", help="model precision (auto: float16 on CUDA)")
    p.add_argument("--tiny", action="store_true", help="toy sizes (the CPU smoke check)")
    p.add_argument("--t", type=float, default=0.7)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: 1 on CPU)")
    p.add_argument("--json", type=Path, default=Path("runs/gpu-check.json"))
    a = p.parse_args(argv)
    device = resolve_device(a.device)
    dtype = resolve_dtype(a.dtype, device)
    if a.threads or device.type == "cpu":  # tiny CPU models: extra threads only contend
        torch.set_num_threads(a.threads or 1)
    sizes = SIZES[a.tiny]
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "command": shlex.join(
            ["benchmarks/gpu_check.sh", *(argv if argv is not None else sys.argv[1:])]
        ),
        "device": device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "tiny": a.tiny,
        "torch": torch.__version__,
        "errors": {},
    }
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        for name, fn in (
            ("extraction", lambda: extraction(a, sizes, device, dtype, tmp)),
            ("sae_training", lambda: sae_training(a, sizes, device)),
        ):
            try:
                out[name] = fn()
            except Exception as e:  # one section failing still writes the other's figures
                out["errors"][name] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["wall_s"] = time.perf_counter() - t0
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(summary(out))
    print(f"wrote {a.json}")
    return 1 if out["errors"] else 0


def summary(out: dict[str, Any]) -> str:
    lines = [f"{out['command']}: {out['device']}, {out['dtype']}, {out['wall_s']:.0f} s"]
    ex = out.get("extraction")
    if ex:
        lines.append(f"extraction ({ex['model']}, h {ex['h_shape']}, {ex['images']} images):")
        for name, r in ex["variants"].items():
            mem = next(iter(r["peak_memory"].values()))
            lines.append(
                f"  {name:20s} {r['images_per_s']['median']:9.2f} img/s  "
                f"x plain {r['speed_vs_plain']['median']:5.2f}  h cos min "
                f"{r['h_cos_to_plain']['min']:.5f}  peak {mem:9.1f} MB"
            )
    tr = out.get("sae_training")
    if tr:
        lines.append(f"SAE training ({tr['shape']['tokens']} tokens/step, peer {tr['peer']}):")
        for name, r in tr["contenders"].items():
            mem = next(iter(r["peak_memory"].values()))
            lines.append(
                f"  {name:20s} {r['tokens_per_s']['median']:12,.0f} tok/s  x peer "
                f"{r['speed_vs_peer']['median']:5.2f}  peak {mem:9.1f} MB"
            )
    lines += [f"error in {k}: {v}" for k, v in out["errors"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
