"""Paper Table 2 on the embedded toy model: every SAE and baseline fitted on the train split and
scored on held-out images, in distribution (test split) and out of distribution (shifted toyfaces).

    python scripts/table2.py --data data/toyfaces --ood-data data/toyfaces-shifted --out runs/table2

Stages (each skipped when its output exists, so a stopped run resumes where it was):
1. activation stores: the first --n train and --n-test test images of --data (CelebA partitions),
   and --n-ood images of --ood-data (made with `hsae data toyfaces --shifted` if missing);
2. SAEs with `hsae train`: the channel-aware λ sweep, its three context options, TopK-channel and
   spatial-TopK k sweeps, the flat SAE, β-VAE 16 and 512;
3. baselines fitted on the train split and saved: PCA-L for several L, random-512;
4. `hsae eval` on the test split (with spliced fidelity) and on the OOD store, then a summary
   table of both in OUT/table2.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from hsae.data.extract import check_store_model
from hsae.diffusion.backbone import DiffusionBackbone
from hsae.utils.io import atomic_write_text, read_json

# name -> `hsae train` flags (on top of --store/--out/--steps)
SWEEP: dict[str, list[str]] = {
    **{f"ca-l1-{lam:g}": ["--l1", f"{lam:g}"] for lam in (0.03, 0.1, 0.3, 1.0)},
    "ca-ctx-channel": ["--l1", "0.1", "--context", "channel"],
    "ca-ctx-none": ["--l1", "0.1", "--context", "none"],
    **{f"topk-k{k}": ["--architecture", "topk_channel", "--k", str(k)] for k in (4, 16)},
    **{f"spatial-k{k}": ["--architecture", "spatial_topk", "--k", str(k)] for k in (16, 64)},
    "flat": ["--architecture", "flat", "--l1", "0.1"],
    **{
        f"beta-vae-{n}": ["--architecture", "beta_vae", "--latents", str(n), "--l1", "1e-3"]
        for n in (16, 512)
    },
}
PCA_LATENTS = (16, 64, 256, 512, 1024)


def hsae(*args: str) -> None:
    cmd = [sys.executable, "-m", "hsae.cli", *args]
    print("+ hsae " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def store_ready(path: Path, toy: DiffusionBackbone) -> bool:
    """A complete store made with today's toy model (an older one stops the script)."""
    m = path / "manifest.json"
    check_store_model(path, toy)
    return m.is_file() and bool(read_json(m, what="store manifest").get("complete"))


def make_stores(a: argparse.Namespace) -> tuple[Path, Path, Path]:
    acts, test, ood = a.out / "acts", a.out / "acts-test", a.out / "acts-ood"
    toy = DiffusionBackbone.load("toy")
    if not store_ready(acts, toy):
        hsae("extract", "--data", str(a.data), "--out", str(acts), "--split", "train",
             "--limit", str(a.n))  # fmt: skip
    if not store_ready(test, toy):
        hsae("extract", "--data", str(a.data), "--out", str(test), "--split", "test",
             "--limit", str(a.n_test))  # fmt: skip
    if not a.ood_data.exists():
        hsae("data", "toyfaces", "--shifted", "--n", str(a.n_ood), "--out", str(a.ood_data))
    if not store_ready(ood, toy):
        hsae("extract", "--data", str(a.ood_data), "--out", str(ood), "--limit", str(a.n_ood))
    return acts, test, ood


def train_sweep(a: argparse.Namespace, acts: Path) -> list[Path]:
    outs = []
    for name, flags in SWEEP.items():
        out = a.out / "sae" / name
        outs.append(out)
        if (out / "sae.safetensors").is_file() and (out / "metrics.json").is_file():
            continue
        resume = ["--resume"] if (out / "checkpoint").exists() else []
        base = ["--store", str(acts), "--out", str(out), "--steps", str(a.steps), "--quiet"]
        hsae("train", *base, *flags, *resume)
    return outs


def fit_baselines(a: argparse.Namespace, acts: Path) -> list[Path]:
    """PCA-L and random, fitted/drawn once and saved, so the OOD eval uses the same models."""
    from hsae.data.store import ActivationStore
    from hsae.sae import PCABaseline, build_sae, make_config

    store = ActivationStore(acts)
    _, c, k, _ = store.shape
    train_rows = store.indices_for_split("train")
    outs = []
    for n in PCA_LATENTS:
        out = a.out / "baselines" / f"pca-{n}"
        outs.append(out)
        if not (out / "sae.safetensors").is_file():
            pca = PCABaseline(make_config("pca", c, k, n_latents=min(n, len(train_rows))))
            pca.fit(store.iter_batches(max(256, n), indices=train_rows))
            pca.save(out)
    out = a.out / "baselines" / "random-512"
    outs.append(out)
    if not (out / "sae.safetensors").is_file():
        torch.manual_seed(0)
        build_sae(make_config("random", c, k, n_latents=512)).save(out)
    return outs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/toyfaces"))
    p.add_argument("--ood-data", type=Path, default=Path("data/toyfaces-shifted"))
    p.add_argument("--out", type=Path, default=Path("runs/table2"))
    p.add_argument("--n", type=int, default=1536, help="train images of --data to extract")
    p.add_argument("--n-test", type=int, default=256, help="test images of --data to extract")
    p.add_argument("--n-ood", type=int, default=384, help="images of --ood-data to extract")
    p.add_argument("--steps", type=int, default=2000, help="training steps per SAE")
    p.add_argument("--spliced", type=int, default=16, help="images for spliced fidelity")
    a = p.parse_args()
    acts, test, ood = make_stores(a)
    saes = [str(s) for s in train_sweep(a, acts)]
    baselines = [str(b) for b in fit_baselines(a, acts)]
    ev = ["--sae", *saes, "--baseline", *baselines, "--k-store", str(acts)]
    hsae("eval", "--store", str(test), *ev, "--out", str(a.out / "eval"),
         "--spliced", str(a.spliced), "--data", str(a.data))  # fmt: skip
    hsae("eval", "--store", str(ood), "--split", "all", *ev, "--out", str(a.out / "eval-ood"))
    text = "\n".join(
        [
            f"# Table 2 on the toy model ({a.n} images, {a.steps} steps per SAE)\n",
            "## Held-out test split (in distribution)\n",
            (a.out / "eval" / "table.md").read_text(),
            f"\n## Out of distribution: shifted toyfaces ({a.n_ood} images)\n",
            (a.out / "eval-ood" / "table.md").read_text(),
        ]
    )
    atomic_write_text(a.out / "table2.md", text)
    print(f"wrote {a.out / 'table2.md'}")


if __name__ == "__main__":
    main()
