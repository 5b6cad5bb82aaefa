"""Cost of a κ sweep with a cached inversion against n independent edits, measured in one run.

    .venv/bin/python benchmarks/bench_edit.py --n 5 --steps 20 --repeats 3 [--sae runs/x/sae]

Variants, all on the same image and SAE component(s), on the real toy model:

- `sweep (cached)`: `invert_cached` with a warm cache (a file read) + `edit_batch` with n κ values
  and no reference row: ONE batched resume of n rows.
- `sweep (cold)`: the same with an empty cache: inversion + cache write + the batched resume.
- `independent`: n × (invert + resume with one κ), no cache: what a loop of `hsae edit` calls costs.
- `floor`: one inversion + one batched resume of n rows with no hook and no SAE ("one inversion +
  one batched resume pass"): the sweep's targets are cold <= floor and cached < floor.

Repeats are interleaved (rotating order) after a warm-up; median and min wall-clock and process
CPU seconds are reported, ratios are taken of medians within this run. The SAE is `--sae` or a
tiny channel-aware SAE trained for a few hundred steps on the h of a few generated toyfaces
(timing does not depend on its quality).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hsae.diffusion.backbone import DiffusionBackbone
from hsae.diffusion.inversion_cache import InversionCache, invert_cached
from hsae.diffusion.invert import invert, resume
from hsae.editing.edit import edit_batch, top_components
from hsae.editing.intervene import Component
from hsae.sae import build_sae, load_sae, make_config
from hsae.sae.base import BaseSAE

VARIANTS = ("sweep (cached)", "sweep (cold)", "independent", "floor")


def toy_images(n: int, folder: Path) -> torch.Tensor:
    """n generated toyfaces in [-1, 1] (written to a temporary folder)."""
    from hsae.data.images import ImageDataset
    from hsae.toy.toyfaces import write_dataset

    ds = ImageDataset(write_dataset(folder, n, seed=7, progress=False), 32)
    return torch.stack([ds[i][0] for i in range(n)])


def train_tiny_sae(backbone: DiffusionBackbone, x: torch.Tensor, t: float, steps: int) -> BaseSAE:
    """A channel-aware SAE fitted briefly to the h_t of the images x."""
    inv = invert(backbone, backbone.encode(x), t, steps)
    h = resume(backbone, inv.z_t, inv.t_index, inv.grid)[1]
    c, k, _ = h.shape[1:]
    torch.manual_seed(0)
    sae = build_sae(make_config("channel_aware", c, k, n_latents=64, n_train_images=len(x)))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    for _ in range(300):
        opt.zero_grad()
        sae.loss(h)["loss"].backward()
        opt.step()
    return sae.eval()


def make_variants(
    backbone: DiffusionBackbone,
    sae: BaseSAE,
    x: torch.Tensor,
    comp: Component,
    kappas: list[float],
    args: argparse.Namespace,
    cache_dir: Path,
) -> dict[str, Callable[[], object]]:
    t, steps = args.t, args.steps
    warm = InversionCache.open(cache_dir / "warm")

    def sweep(cache: InversionCache) -> object:
        inv = invert_cached(backbone, x, t, steps, cache=cache)
        return edit_batch(backbone, sae, inv, [comp], kappas, args.mode, reference=False)

    def cold() -> object:
        cold_dir = Path(tempfile.mkdtemp(dir=cache_dir))
        return sweep(InversionCache.open(cold_dir))

    def independent() -> object:
        for kappa in kappas:
            inv = invert(backbone, backbone.encode(x), t, steps)
            edit_batch(backbone, sae, inv, [comp], [kappa], args.mode, reference=False)
        return None

    def floor() -> object:
        inv = invert(backbone, backbone.encode(x), t, steps)
        z = inv.z_t.repeat_interleave(len(kappas), dim=0)
        return backbone.decode(resume(backbone, z, inv.t_index, inv.grid)[0])

    return dict(zip(VARIANTS, (lambda: sweep(warm), cold, independent, floor), strict=True))


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def measure(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict]:
    for fn in variants.values():  # warm-up (also fills the warm cache)
        fn()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed(variants[name]))
    out = {}
    for name, ts in times.items():
        wall, cpu = [w for w, _ in ts], [c for _, c in ts]
        out[name] = {
            "wall_median": statistics.median(wall),
            "wall_min": min(wall),
            "cpu_median": statistics.median(cpu),
            "cpu_min": min(cpu),
        }
    return out


def unet_calls(n: int, resumed: int) -> dict[str, str]:
    """U-Net calls (× batch size) of each variant, for reading the ratios."""
    return {
        "sweep (cached)": f"{resumed}×{n}",
        "sweep (cold)": f"{resumed}×1 + {resumed}×{n}",
        "independent": f"{n}×({resumed}×1 + {resumed}×1)",
        "floor": f"{resumed}×1 + {resumed}×{n}",
    }


def format_table(res: dict) -> str:
    floor = res["timings"]["floor"]
    lines = [
        f"κ sweep of n={res['n']} on the toy model, {res['steps']} DDIM steps, t={res['t']} "
        f"({res['resumed_steps']} resumed steps), {res['repeats']} repeats, "
        f"{res['threads']} thread(s).",
        "",
        "| variant | U-Net calls × batch | wall median (s) | wall min (s) | CPU median (s) "
        "| wall / floor | CPU / floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in res["timings"].items():
        lines.append(
            f"| {name} | {res['unet_calls'][name]} | {t['wall_median']:.3f} | "
            f"{t['wall_min']:.3f} | {t['cpu_median']:.3f} | "
            f"{t['wall_median'] / floor['wall_median']:.2f} | "
            f"{t['cpu_median'] / floor['cpu_median']:.2f} |"
        )
    r = res["ratios"]
    lines += [
        "",
        f"independent / sweep (cached): {r['independent_over_cached']:.2f}× (wall), "
        f"{r['independent_over_cached_cpu']:.2f}× (CPU)",
        f"sweep (cold) / floor: {r['cold_over_floor']:.2f} (wall), "
        f"{r['cold_over_floor_cpu']:.2f} (CPU); target <= 1",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=5, help="κ values in the sweep")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--t", type=float, default=0.7)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--mode", choices=["reconstruction", "error_preserving"], default="reconstruction"
    )
    p.add_argument("--sae", type=Path, default=None, help="SAE folder (default: train a tiny one)")
    p.add_argument("--model", default="toy")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from hsae.utils.io import atomic_write_json

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    backbone = DiffusionBackbone.load(args.model)
    kappas = [float(v) for v in torch.linspace(-10, 10, args.n)]
    with tempfile.TemporaryDirectory() as tmp:
        images = toy_images(8, Path(tmp) / "data")
        sae = (
            load_sae(args.sae).eval()
            if args.sae
            else train_tiny_sae(backbone, images, args.t, args.steps)
        )
        x = images[:1]
        inv = invert(backbone, backbone.encode(x), args.t, args.steps)
        h = resume(backbone, inv.z_t, inv.t_index, inv.grid)[1]
        comp = top_components(sae, h, None, 1)[0][0][0]
        variants = make_variants(backbone, sae, x, comp, kappas, args, Path(tmp))
        timings = measure(variants, args.repeats)
    med = {k: (v["wall_median"], v["cpu_median"]) for k, v in timings.items()}
    res = {
        "n": args.n,
        "steps": args.steps,
        "t": args.t,
        "resumed_steps": inv.t_index + 1,
        "repeats": args.repeats,
        "threads": args.threads,
        "mode": args.mode,
        "component": str(comp),
        "sae": str(args.sae) if args.sae else "tiny, trained on the fly",
        "command": " ".join(sys.argv),
        "unet_calls": unet_calls(args.n, inv.t_index + 1),
        "timings": timings,
        "ratios": {
            "independent_over_cached": med["independent"][0] / med["sweep (cached)"][0],
            "independent_over_cached_cpu": med["independent"][1] / med["sweep (cached)"][1],
            "cold_over_floor": med["sweep (cold)"][0] / med["floor"][0],
            "cold_over_floor_cpu": med["sweep (cold)"][1] / med["floor"][1],
            "cached_over_floor": med["sweep (cached)"][0] / med["floor"][0],
        },
    }
    print(format_table(res), end="")
    if args.json:
        atomic_write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
