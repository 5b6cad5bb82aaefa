"""`hsae train`: train an SAE on an activation store (resumable)."""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from hsae.cli.options import add_device_arguments
from hsae.sae import BaseSAE, build_sae, make_config
from hsae.sae.base import read_config
from hsae.training.checkpoint import find_checkpoint, read_trainer_state
from hsae.training.config import B_DEC_INITS, RESUMABLE_CHANGES, StoreLike, TrainConfig
from hsae.training.distributed import train_parallel
from hsae.utils.device import device_options, launched_ranks
from hsae.utils.lock import FolderLock
from hsae.utils.splits import split_rows

CLI_FIELDS: dict[str, tuple[str, str, Any]] = {
    "architecture": ("sae", "architecture", "channel_aware"),
    "latents": ("sae", "n_latents", 512),
    "l1": ("sae", "l1_coeff", 0.1),
    "context": ("sae", "context", None),  # None: the architecture's first (paper: channel+image)
    "k": ("sae", "k", None),
    "batch": ("train", "batch_images", 32),
    "lr": ("train", "lr", 1e-3),
    "warmup": ("train", "warmup_steps", 100),
    "l1_warmup": ("train", "l1_warmup", 0),
    "seed": ("train", "seed", 0),
    "b_dec_init": ("train", "b_dec_init", "geometric_median"),
    "normalize": ("train", "normalize", True),
    "unit_norm_decoder": ("train", "unit_norm_decoder", True),
    "split": ("train", "split", "train"),
    "steps": ("train", "steps", 2000),
    "checkpoint_every": ("train", "checkpoint_every", 500),
    "log_every": ("train", "log_every", 10),
}


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """`hsae train` flags; defaults in CLI_FIELDS (on --resume: from the checkpoint)."""
    d = {k: v[2] for k, v in CLI_FIELDS.items()}
    p.add_argument("--store", type=Path, required=True, help="activation store folder")
    p.add_argument("--out", type=Path, required=True, help="run folder (SAE, checkpoint, logs)")
    p.add_argument(
        "--architecture",
        choices=["channel_aware", "flat", "topk_channel", "spatial_topk", "beta_vae"],
        help=f"SAE architecture (default {d['architecture']})",
    )
    p.add_argument("--latents", type=int, help=f"number of latents L (default {d['latents']})")
    p.add_argument("--l1", type=float, help=f"L1 coefficient λ (default {d['l1']})")
    p.add_argument(
        "--context",
        choices=["channel+image", "channel", "channel+timestep", "none"],
        help="ζ context of channel tokens (default channel+image, the paper's; "
        "channel+timestep for a window store: each row's timestep)",
    )
    p.add_argument("--k", type=int, help="nonzero codes per token (TopK architectures)")
    p.add_argument("--steps", type=int, help=f"total optimizer steps (default {d['steps']})")
    p.add_argument("--batch", type=int, help=f"images per step (default {d['batch']})")
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {d['lr']})")
    p.add_argument("--warmup", type=int, help=f"lr warm-up steps (default {d['warmup']})")
    p.add_argument("--l1-warmup", type=int, help="λ warm-up steps (default 0)")
    p.add_argument("--seed", type=int, help="seed of SAE init and data order (default 0)")
    p.add_argument(
        "--b-dec-init",
        choices=list(B_DEC_INITS),
        help=f"decoder bias init (default {d['b_dec_init']})",
    )
    p.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        help="train on h scaled to E‖token‖² = d_in, folded into the saved SAE (default on)",
    )
    p.add_argument(
        "--unit-norm-decoder",
        action=argparse.BooleanOptionalAction,
        help="keep decoder rows at unit norm during training (default on)",
    )
    p.add_argument(
        "--split",
        choices=["train", "val", "test", "all"],
        help="store split to train on (default train)",
    )
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 500)")
    p.add_argument("--log-every", type=int, help="steps between log rows (default 10)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_arguments(p)


def train_command(args: argparse.Namespace) -> int:
    from hsae.data.store import ActivationStore

    store = ActivationStore(args.store)
    ckpt = find_checkpoint(args.out) if args.resume else None  # read only: no lock needed
    if ckpt is not None:
        sae, tcfg = _configs_from_checkpoint(args, ckpt)
    else:
        sae, tcfg = _fresh_configs(args, store)
    device, dtype = device_options(args)
    sae.to(device)  # float32 master weights; --dtype only sets the autocast precision
    progress = not args.quiet
    # Rank 0 holds the run folder's lock before anything tidies an interrupted checkpoint swap
    # in it (the trainer's own lock is reentrant and shares this one).
    rank = launched_ranks()[0]
    with FolderLock(args.out, "SAE run folder", reentrant=True) if rank == 0 else nullcontext():
        metrics = train_parallel(sae, store, tcfg, args.out, args.resume, progress, dtype)
    final = metrics["final"]
    print(
        f"trained {sae.cfg.architecture} SAE ({sae.cfg.n_latents} latents) for {metrics['steps']} "
        f"steps: loss {final['loss']}, mse {final['mse']}, L0 {final['l0']}, "
        f"dead {final['dead_pct']}% -> {args.out}"
    )
    return 0


def _fresh_configs(args: argparse.Namespace, store: StoreLike) -> tuple[BaseSAE, TrainConfig]:
    val = {d: getattr(args, d) for d in CLI_FIELDS}
    val = {d: spec[2] if val[d] is None else val[d] for d, spec in CLI_FIELDS.items()}
    tkw = {f: val[d] for d, (kind, f, _) in CLI_FIELDS.items() if kind == "train"}
    tcfg = TrainConfig(**tkw)
    if val["architecture"] in ("topk_channel", "spatial_topk") and val["k"] is None:
        raise ValueError(f"--architecture {val['architecture']} needs --k (codes per token)")
    skw = {f: val[d] for d, (kind, f, _) in CLI_FIELDS.items() if kind == "sae"}
    skw = {k: v for k, v in skw.items() if v is not None and k != "architecture"}
    _, c, k, _ = store.shape
    n_train = len(split_rows(store, tcfg.split))
    cfg = make_config(val["architecture"], c, k, n_train_images=n_train, **skw)
    torch.manual_seed(tcfg.seed)
    return build_sae(cfg), tcfg


def _configs_from_checkpoint(args: argparse.Namespace, ckpt: Path) -> tuple[BaseSAE, TrainConfig]:
    saved = {"sae": read_config(ckpt).to_dict(), "train": read_trainer_state(ckpt)["train_config"]}
    tkw = dict(saved["train"])
    conflicts = []
    for dest, (kind, f, _) in CLI_FIELDS.items():
        value = getattr(args, dest)
        if value is None or value == saved[kind][f]:
            continue
        if f in RESUMABLE_CHANGES:
            tkw[f] = value
        else:
            conflicts.append(f"--{dest.replace('_', '-')} {value} (checkpoint: {saved[kind][f]})")
    if conflicts:
        raise ValueError(
            f"--resume continues {ckpt} with its own settings; these flags disagree: "
            f"{', '.join(conflicts)}. Drop them, or train into a new --out folder"
        )
    return build_sae(read_config(ckpt)), TrainConfig(**tkw)


# argparse dest -> (config it belongs to, field, default for a fresh run). Defaults live here, not
# in the parser, so a resumed run can tell an explicit flag (checked against the checkpoint) from
# an omitted one (taken from the checkpoint).


def _add_train(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser("train", help="train an SAE on an activation store")
    add_train_arguments(p)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:

    return train_command(args)


def register(sub: argparse._SubParsersAction) -> None:
    _add_train(sub)
