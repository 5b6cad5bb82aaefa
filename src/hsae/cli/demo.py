"""`hsae demo`: the whole method on the embedded toy model, in minutes on a CPU.

data → extract → train → eval → features → probe → editbench → edit → counterfactual →
interpolate → report, each stage through its own `hsae` sub-command (so the demo exercises exactly
what a user runs), all in one run folder. A stage whose output exists is skipped, so a stopped demo
resumes. Sizes are chosen to finish in about ten minutes on two cores; every stage's command is
printed and recorded in `demo_summary.json`, to be rerun at full size.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hsae.cli.options import add_device_arguments
from hsae.data.extract import check_store_model
from hsae.diffusion.backbone import DiffusionBackbone
from hsae.diffusion.sampling import ddim_samples
from hsae.utils.io import atomic_write_json, read_json
from hsae.utils.viz import save_grid

# The toy model's single-step h edits barely reach the pixels (docs/results.md, "Editing"): edits
# in the demo act on every resumed step, the intervention window this project adds to Algorithm 2.
EDIT_ATTRIBUTES = ("Eyeglasses", "Wearing_Hat", "Blond_Hair")


def _hsae(argv: list[str]) -> None:
    from hsae.cli import main

    print("\n$ hsae " + " ".join(argv), flush=True)
    code = main(argv)
    if code != 0:
        raise RuntimeError(f"demo stage `hsae {argv[0]}` failed with exit code {code}")


def _best_component(run: Path, attribute: str) -> tuple[str, list[str]]:
    """features.json's best component for `attribute` and its max-activating image ids."""
    doc = read_json(run / "features" / "features.json", what="features summary")
    best = doc["attributes"][attribute]["best"]
    return str(best["component"]), list(best["top_ids"])


def _test_ids(data: Path, n: int) -> list[str]:
    from hsae.data.images import parse_partition

    parts = parse_partition(data / "list_eval_partition.txt")
    return sorted(f for f, s in parts.items() if s == 2)[:n]


def _cmd(command: str, *positional: object, **flags: object) -> list[str]:
    """argv of `hsae COMMAND`: flag=value → --flag value, True → --flag, a list → its values."""
    argv = [command, *map(str, positional)]
    for key, value in flags.items():
        argv.append("--" + key.replace("_", "-"))
        if isinstance(value, list | tuple):
            argv.extend(map(str, value))
        elif value is not True:
            argv.append(str(value))
    return argv


def demo_stages(
    run: Path,
    n_images: int,
    steps: int,
    t: float,
    sae_steps: int = 1500,
    device: dict[str, str] | None = None,
) -> list[tuple[str, Callable[[], object]]]:
    """(name, action) per stage; each action runs one `hsae` command (or the data generator).
    `device` ({"device": ..., "dtype": ...}) is passed to every command that runs a model."""
    dev = device or {}
    from hsae.data.images import parse_partition
    from hsae.toy.toyfaces import write_dataset

    data, acts, sae = run / "data", run / "acts", run / "sae"
    img = data / "img_align_celeba"
    both = {"store": acts, "sae": sae}

    def edit() -> None:
        comp, ids = _best_component(run, "Eyeglasses")
        images = [img / ids[0], img / _test_ids(data, 1)[0]]
        kappas = [0, 1, 2, 4, 8]
        mode = "error_preserving"
        _hsae(_cmd("edit", **dev, image=images, sae=sae, component=comp, kappa=kappas, mode=mode,
                   window="all", out=run / "edit"))  # fmt: skip

    def counterfactual() -> None:
        comp, _ = _best_component(run, "Eyeglasses")
        _hsae(_cmd("counterfactual", **dev, data=data, split="test", n=6, sae=sae, component=comp,
                   kappa=4, attribute="Eyeglasses", window="all",
                   out=run / "counterfactual"))  # fmt: skip

    def interpolate() -> None:
        a, b = _test_ids(data, 2)
        _hsae(_cmd("interpolate", **dev, a=img / a, b=img / b, sae=sae, frames=7, h_baseline=True,
                   out=run / "interpolate"))  # fmt: skip

    bench = {
        "attributes": EDIT_ATTRIBUTES,
        "n_test": 12,
        "n_val": 8,
        "sizes": [0.5, 1.0],
        "windows": "all",
        "candidates": 3,
        "effect_images": 4,
        "no_components": True,  # single components do not flip (docs/editing.md); kept small
    }

    # The feature atlas of the demo's SAE, small: 4 latents edited on 8 validation images at 10
    # DDIM steps (docs/editing.md: 10 steps tell the same story as 50), about half a minute.
    atlas = {
        "atlas": True,
        "atlas_latents": 4,
        "atlas_images": 8,
        "atlas_stats": 512,
        "atlas_steps": min(steps, 10),
    }

    def pca() -> dict[str, object]:  # PCA-L needs L train images; tiny test runs have fewer
        n_train = sum(
            1 for v in parse_partition(data / "list_eval_partition.txt").values() if v == 0
        )
        return {"fit_pca": sorted({min(n, n_train) for n in (64, 256)}), "random": True}

    return [
        ("data", lambda: write_dataset(data, n_images, seed=1)),
        ("extract", lambda: _hsae(_cmd("extract", **dev, data=data, out=acts, t=t, steps=steps))),
        ("sae", lambda: _hsae(_cmd("train", **dev, store=acts, out=sae, steps=sae_steps))),
        (
            "eval",
            lambda: _hsae(
                _cmd("eval", **dev, **both, **pca(), spliced=8, data=data, out=run / "eval")
            ),
        ),
        (
            "features",
            lambda: _hsae(
                _cmd("features", **dev, **both, **atlas, data=data, out=run / "features")
            ),
        ),
        ("probe", lambda: _hsae(_cmd("probe", **dev, **both, out=run / "probe"))),
        (
            "editbench",
            lambda: _hsae(
                _cmd("editbench", **dev, **both, **bench, data=data, out=run / "editbench")
            ),
        ),
        ("edit", edit),
        ("counterfactual", counterfactual),
        ("interpolate", interpolate),
    ]


def _done(run: Path, stage: str) -> bool:
    marks = {
        "data": "data/list_eval_partition.txt",
        "extract": "acts/manifest.json",
        "sae": "sae/sae.safetensors",
        "features": "features/atlas.json",  # written after table.md: the features stage's end
    }
    path = run / marks.get(stage, f"{stage}/table.md")
    if stage == "extract":
        return path.is_file() and bool(read_json(path, what="store manifest").get("complete"))
    return path.is_file()


def run_demo(
    out: Path,
    n_images: int = 512,
    steps: int = 50,
    t: float = 0.7,
    sae_steps: int = 1500,
    device: dict[str, str] | None = None,
) -> dict:
    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    backbone = DiffusionBackbone.load("toy", **(device or {}))
    check_store_model(out / "acts", backbone)
    for name, action in demo_stages(out, n_images, steps, t, sae_steps, device):
        if _done(out, name):
            print(f"[demo] {name}: already done, skipped")
            continue
        t0 = time.time()
        action()
        timings[name] = round(time.time() - t0, 1)
    grid_path = _sample_grid(backbone, out, steps, t)
    report = _report(out)
    summary = {
        "run": str(out),
        "report": str(report),
        "grid": str(grid_path),
        "grid_rows": ["inputs", "invert→resume", "DDIM samples"],
        "stage_seconds": timings,
        "seconds": round(time.time() - start, 1),
    }
    atomic_write_json(out / "demo_summary.json", summary)
    return summary


def _sample_grid(backbone: DiffusionBackbone, out: Path, steps: int, t: float) -> Path:
    from hsae.data.images import ImageDataset
    from hsae.diffusion.invert import invert, resume

    ds = ImageDataset(out / "data", backbone.image_size, limit=8)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    inv = invert(backbone, backbone.encode(x), t=t, steps=steps)
    x_rec = backbone.decode(resume(backbone, inv.z_t, inv.t_index, inv.grid)[0])
    return save_grid([x, x_rec, ddim_samples(backbone, len(ds), steps)], out / "grid.png")


def _report(out: Path) -> Path:
    """The HTML report, checked in headless Chromium when one is installed."""
    check = ["--check"] if shutil.which("chromium") or shutil.which("chromium-browser") else []
    _hsae(["report", str(out), *check])
    return out / "report" / "index.html"


def demo_command(
    out: Path,
    n_images: int,
    steps: int,
    t: float,
    sae_steps: int = 1500,
    device: dict[str, str] | None = None,
) -> int:
    summary = run_demo(out, n_images, steps, t, sae_steps, device)
    print(json.dumps(summary, indent=2))
    print(f"\nreport: {summary['report']}")
    print(f"explore it in the browser: hsae serve {shlex.quote(str(out))}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the method end to end on the embedded toy model")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--n", type=int, default=512, help="toyfaces images to extract")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--t", type=float, default=0.7)
    p.add_argument("--sae-steps", type=int, default=1500, help="SAE training steps")
    add_device_arguments(p)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:

    device = {"device": args.device, "dtype": args.dtype}
    return demo_command(args.out, args.n, args.steps, args.t, args.sae_steps, device)


def register(sub: argparse._SubParsersAction) -> None:
    _add_demo(sub)
