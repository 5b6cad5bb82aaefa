"""Paper Table 2 on the embedded toy model: every SAE and baseline fitted on the train split and
scored on held-out images, in distribution (test split) and out of distribution (shifted toyfaces).

    hsae table2 --data data/toyfaces --ood-data data/toyfaces-shifted --out runs/table2

Stages (each skipped when its output exists, so a stopped run resumes where it was):
1. activation stores: the first `n` train and `n_test` test images of `data` (CelebA partitions),
   and `n_ood` images of `ood_data` (made with `hsae data toyfaces --shifted` if missing);
2. SAEs with `hsae train`: the channel-aware λ sweep, its three context options, TopK-channel and
   spatial-TopK k sweeps, the flat SAE, β-VAE 16 and 512;
3. baselines fitted on the train split and saved: PCA-L for several L, random-512;
4. `hsae eval` on the test split (with spliced fidelity) and on the OOD store, then a summary
   table of both in OUT/table2.md.

The protocol runs `hsae` sub-commands through a `run(argv)` callable the caller supplies (the CLI
runs each in its own process), so this module never imports the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hsae.data.extract import check_store_model
from hsae.diffusion.backbone import DiffusionBackbone
from hsae.utils.io import atomic_write_text, read_json

Run = Callable[[list[str]], None]  # runs one `hsae` command line (without "hsae"); raises on error

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


@dataclass
class Table2Config:
    data: Path = Path("data/toyfaces")
    ood_data: Path = Path("data/toyfaces-shifted")
    out: Path = Path("runs/table2")
    n: int = 1536  # train images of `data` to extract
    n_test: int = 256  # test images of `data` to extract
    n_ood: int = 384  # images of `ood_data` to extract
    steps: int = 2000  # training steps per SAE
    spliced: int = 16  # images for spliced fidelity

    def __post_init__(self) -> None:
        if min(self.n, self.n_test, self.n_ood, self.steps, self.spliced) < 1:
            raise ValueError(
                f"--n {self.n}, --n-test {self.n_test}, --n-ood {self.n_ood}, --steps "
                f"{self.steps} and --spliced {self.spliced} must all be >= 1"
            )


def store_ready(path: Path, toy: DiffusionBackbone) -> bool:
    """A complete store made with today's toy model (one made with other weights is refused)."""
    m = path / "manifest.json"
    check_store_model(path, toy)
    return m.is_file() and bool(read_json(m, what="store manifest").get("complete"))


def make_stores(cfg: Table2Config, run: Run) -> tuple[Path, Path, Path]:
    """The train, test and OOD activation stores, extracted where missing or incomplete."""
    acts, test, ood = cfg.out / "acts", cfg.out / "acts-test", cfg.out / "acts-ood"
    toy = DiffusionBackbone.load("toy")
    if not store_ready(acts, toy):
        run(["extract", "--data", str(cfg.data), "--out", str(acts), "--split", "train",
             "--limit", str(cfg.n)])  # fmt: skip
    if not store_ready(test, toy):
        run(["extract", "--data", str(cfg.data), "--out", str(test), "--split", "test",
             "--limit", str(cfg.n_test)])  # fmt: skip
    if not cfg.ood_data.exists():
        run(["data", "toyfaces", "--shifted", "--n", str(cfg.n_ood), "--out", str(cfg.ood_data)])
    if not store_ready(ood, toy):
        run(["extract", "--data", str(cfg.ood_data), "--out", str(ood), "--limit", str(cfg.n_ood)])
    return acts, test, ood


def train_sweep(cfg: Table2Config, acts: Path, run: Run) -> list[Path]:
    """Every SAE of SWEEP, trained (or resumed) unless its weights and metrics exist."""
    outs = []
    for name, flags in SWEEP.items():
        out = cfg.out / "sae" / name
        outs.append(out)
        if (out / "sae.safetensors").is_file() and (out / "metrics.json").is_file():
            continue
        resume = ["--resume"] if (out / "checkpoint").exists() else []
        base = ["--store", str(acts), "--out", str(out), "--steps", str(cfg.steps), "--quiet"]
        run(["train", *base, *flags, *resume])
    return outs


def fit_baselines(cfg: Table2Config, acts: Path) -> list[Path]:
    """PCA-L and random, fitted/drawn once and saved, so the OOD eval uses the same models."""
    from hsae.data.store import ActivationStore
    from hsae.sae import PCABaseline, build_sae, make_config

    store = ActivationStore(acts)
    _, c, k, _ = store.shape
    train_rows = store.indices_for_split("train")
    outs = []
    for n in PCA_LATENTS:
        out = cfg.out / "baselines" / f"pca-{n}"
        outs.append(out)
        if not (out / "sae.safetensors").is_file():
            pca = PCABaseline(make_config("pca", c, k, n_latents=min(n, len(train_rows))))
            pca.fit(store.iter_batches(max(256, n), indices=train_rows))
            pca.save(out)
    out = cfg.out / "baselines" / "random-512"
    outs.append(out)
    if not (out / "sae.safetensors").is_file():
        torch.manual_seed(0)
        build_sae(make_config("random", c, k, n_latents=512)).save(out)
    return outs


def summary(cfg: Table2Config) -> str:
    """OUT/table2.md: the in-distribution and OOD eval tables under one heading."""
    return "\n".join(
        [
            f"# Table 2 on the toy model ({cfg.n} images, {cfg.steps} steps per SAE)\n",
            "## Held-out test split (in distribution)\n",
            (cfg.out / "eval" / "table.md").read_text(),
            f"\n## Out of distribution: shifted toyfaces ({cfg.n_ood} images)\n",
            (cfg.out / "eval-ood" / "table.md").read_text(),
        ]
    )


def run_table2(cfg: Table2Config, run: Run) -> Path:
    """All four stages; the path of the summary table."""
    acts, test, ood = make_stores(cfg, run)
    saes = [str(s) for s in train_sweep(cfg, acts, run)]
    baselines = [str(b) for b in fit_baselines(cfg, acts)]
    ev = ["--sae", *saes, "--baseline", *baselines, "--k-store", str(acts)]
    run(["eval", "--store", str(test), *ev, "--out", str(cfg.out / "eval"),
         "--spliced", str(cfg.spliced), "--data", str(cfg.data)])  # fmt: skip
    run(["eval", "--store", str(ood), "--split", "all", *ev, "--out", str(cfg.out / "eval-ood")])
    path = cfg.out / "table2.md"
    atomic_write_text(path, summary(cfg))
    return path
