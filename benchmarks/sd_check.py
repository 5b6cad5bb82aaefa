"""`make sd-check`: Stable Diffusion 2.1-base at its real size, through every CLI stage a user
runs, on random weights (nothing downloaded).

The real U-Net (866M parameters, h 1280×8×8 at 512²), VAE and a one-layer CLIP text encoder are
built from the committed configs (`benchmarks/sd_random.py`) and saved once as a diffusers
StableDiffusionPipeline folder (float16 on disk, loaded as float32 on the CPU). Then each stage
runs as its own `hsae` process, as a user would: data, extract (a short 2-step grid to t = 0.5),
train (channel-aware SAE), eval, features, probe, edit and counterfactual. Each stage's wall time
and peak resident memory (its own process, from wait4) go to OUT/sd_check.json and a markdown
table on stdout (docs/gpu.md quotes it). A failed stage stops the run with exit status 1. A
rerun reuses the saved pipeline (it is seeded) and redoes every other stage.

    python benchmarks/sd_check.py --out runs/sd-check            # ~6 GB RAM, minutes
    python benchmarks/sd_check.py --out runs/sd-check-tiny --tiny   # the same stages in seconds

Torch runs with --threads intra-op threads in every stage (default 2: this machine's cores).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling sd_random

N_IMAGES = 16  # enough for both classes of an attribute in the probe's train and val splits
GRID = ["--t", "0.5", "--steps", "2"]  # one inversion call, one resumed call per image


def save_pipeline(folder: Path, tiny: bool) -> None:
    """The random SD 2.1-base as a pipeline folder the CLI loads like any other."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from sd_random import config, sd21_random_backbone, write_byte_level_vocab

    bb = sd21_random_backbone(tiny=tiny)
    vocab = folder / "vocab"
    vocab.mkdir(parents=True, exist_ok=True)
    write_byte_level_vocab(vocab)
    tokenizer = CLIPTokenizer(
        str(vocab / "vocab.json"), str(vocab / "merges.txt"), model_max_length=77
    )
    pipe = StableDiffusionPipeline(
        vae=bb.vae,
        text_encoder=bb.text_encoder,
        tokenizer=tokenizer,
        unet=bb.unet,
        scheduler=DDIMScheduler.from_config(config("scheduler")),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    # float16 on disk halves the 3.5 GB write; the CLI loads it back as float32 on the CPU.
    pipe.to(torch.float16).save_pretrained(str(folder / "pipeline"))


def words(flags: str) -> list[str]:
    return flags.split()


def stages(out: Path, model: Path, n: int, sae_steps: int) -> list[tuple[str, list[str]]]:
    """(name, hsae argv) per stage, in order; each reads what the ones before it wrote."""
    data, acts, sae = str(out / "data"), str(out / "acts"), str(out / "sae")
    first = str(out / "data" / "img_align_celeba" / "000001.png")  # toyfaces' first image
    both = ["--store", acts, "--sae", sae]
    resume = [*both, "--model", str(model), *GRID]
    argv = {
        "data": ["data", "toyfaces", "--n", str(n), "--out", data, *words("--seed 1")],
        "extract": ["extract", "--model", str(model), "--data", data, "--out", acts, *GRID],
        "train": ["train", "--store", acts, "--out", sae, "--steps", str(sae_steps)],
        "eval": ["eval", *both, *words("--fit-pca 4 --random 64")],
        "features": ["features", *both, "--data", data, *words("--top 4 --n-images 4")],
        "probe": ["probe", *both, *words("--test-split val")],
        "edit": ["edit", "--image", first, *resume, *words("--latent 0 --strength 0 2")],
        "counterfactual": ["counterfactual", *resume, "--data", data, "--split", "val"],
    }
    argv["extract"] += words("--batch 4 --no-progress")
    argv["train"] += words("--architecture channel_aware --batch 8 --quiet")
    argv["features"] += ["--no-progress"]
    argv["edit"] += ["--no-progress"]
    argv["counterfactual"] += words("--n 2 --component 0:0 --kappa 4 --attribute Eyeglasses")
    for name in ("eval", "features", "probe", "edit", "counterfactual"):
        argv[name] += ["--out", str(out / name)]
    return list(argv.items())


def run_stage(argv: list[str], log: Path, threads: int) -> dict[str, float | int]:
    """One process; its own wall time, exit status and peak RSS (wait4's ru_maxrss, KiB)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    with open(log, "ab") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    # wait4 reaped the child: telling Popen so keeps it from waiting on the pid again.
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
        "exit_code": code,
    }


def run_check(out: Path, tiny: bool, n: int, sae_steps: int, threads: int) -> dict:
    from hsae.utils.io import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    log, model = out / "stages.log", out / "model" / "pipeline"
    hsae = [sys.executable, "-m", "hsae.cli"]
    build = [sys.executable, __file__, "--build", str(out / "model")] + (["--tiny"] * tiny)
    doc: dict = {"model": "sd21-base-random" + "-tiny" * tiny, "images": n, "stages": {}}
    todo = [("build", build)] + [(k, hsae + a) for k, a in stages(out, model, n, sae_steps)]
    if (model / "model_index.json").is_file():  # a saved pipeline is reused: it is seeded
        todo = todo[1:]
    for name, argv in todo:
        res = run_stage(argv, log, threads)
        doc["stages"][name] = res
        line = f"{name:15s} {res['seconds']:8.1f} s  peak RSS {res['peak_rss_gib']:.2f} GiB"
        print(line, flush=True)
        if res["exit_code"] != 0:
            doc["failed"] = name
            print(f"stage {name} failed (exit {res['exit_code']}); its output is in {log}")
            break
    doc["seconds"] = round(sum(s["seconds"] for s in doc["stages"].values()), 1)
    atomic_write_json(out / "sd_check.json", doc)
    return doc


def markdown(doc: dict) -> str:
    rows = ["| stage | wall s | peak RSS GiB |", "|---|---|---|"]
    for name, v in doc["stages"].items():
        rows.append(f"| {name} | {v['seconds']:.1f} | {v['peak_rss_gib']:.2f} |")
    peak = max(v["peak_rss_gib"] for v in doc["stages"].values())
    return "\n".join([*rows, f"| all | {doc['seconds']:.1f} | {peak:.2f} |"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/sd-check"))
    p.add_argument("--tiny", action="store_true", help="toy-sized SD parts: the same stages")
    p.add_argument("--n", type=int, default=N_IMAGES, help="toyfaces images to extract")
    p.add_argument("--sae-steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=2, help="torch threads per stage")
    p.add_argument("--build", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.build is not None:  # the build stage, in its own process like every other
        save_pipeline(args.build, args.tiny)
        return 0
    doc = run_check(args.out, args.tiny, args.n, args.sae_steps, args.threads)
    print(markdown(doc))
    return 1 if "failed" in doc else 0


if __name__ == "__main__":
    sys.exit(main())
