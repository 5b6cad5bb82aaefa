"""`hsae data`, `hsae extract`, `hsae roundtrip`: data sets, the activation store, round trips."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from hsae.cli.options import add_device_arguments
from hsae.diffusion.backbone import DiffusionBackbone
from hsae.diffusion.roundtrip import roundtrip_errors
from hsae.diffusion.solvers import DEFAULT_CALLS, INVERSE_SCHEDULERS


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="generate a data set")
    dsub = p.add_subparsers(dest="generator", required=True)
    t = dsub.add_parser("toyfaces", help="procedural attribute-labelled faces, CelebA layout")
    t.add_argument("--n", type=int, default=20000, help="number of images (default 20000)")
    t.add_argument("--out", type=Path, default=Path("data/toyfaces"))
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    t.add_argument(
        "--shifted", action="store_true", help="shifted nuisance (position/scale/colour): OOD set"
    )
    p.set_defaults(func=_cmd_data)


def _cmd_data(args: argparse.Namespace) -> int:
    from hsae.toy.toyfaces import ToyFacesConfig, shifted_config, write_dataset

    cfg = shifted_config(args.size) if args.shifted else ToyFacesConfig(size=args.size)
    out = write_dataset(args.out, args.n, seed=args.seed, cfg=cfg)
    print(f"wrote {args.n} toyfaces to {out}")
    return 0


def _add_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="DDIM-invert images and store h_t (resumable)")
    p.add_argument("--data", type=Path, required=True, help="CelebA-layout folder or image folder")
    p.add_argument("--model", default="toy", help="'toy', a diffusers folder, or a hub id")
    p.add_argument("--out", type=Path, required=True, help="activation store folder")
    p.add_argument("--t", type=float, default=0.7, help="inversion depth as a fraction of T")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps over the full schedule")
    p.add_argument("--prompt", default="", help="conditioning prompt (latent models)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=256, help="images per shard")
    p.add_argument("--split", choices=["train", "val", "test", "all"], default="all")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (listed)")
    p.add_argument(
        "--store-dtype",
        choices=["float16", "float32"],
        default="float16",
        help="precision of h on disk (default float16)",
    )
    p.add_argument(
        "--channels-last",
        choices=["auto", "on", "off"],
        default="auto",
        help="U-Net memory format (auto: on for CPU and CUDA, measured faster there)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Net blocks")
    p.add_argument(
        "--capture",
        choices=["first", "window"],
        default="first",
        help="first: h_t at t (one row per image); window: h at every resumed step of the "
        "edit window (one row per image and step, for window SAEs)",
    )
    p.add_argument(
        "--inverse-scheduler",
        choices=sorted(INVERSE_SCHEDULERS),
        default="ddim",
        help="x0 -> z_t: ddim (one U-Net call per --steps grid step up to t) or DPM-Solver++ of "
        "order 1/2/3 (diffusers' inverse scheduler) in --inverse-calls calls to the same "
        "timestep; dpm++3m came closest to the finest inversion (docs/gpu.md)",
    )
    p.add_argument(
        "--inverse-calls",
        type=int,
        default=None,
        help=f"U-Net calls of a solver's inversion (default {DEFAULT_CALLS})",
    )
    add_device_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_extract)


def _cmd_extract(args: argparse.Namespace) -> int:
    from hsae.data.extract import extract_command

    return extract_command(args)


def _add_roundtrip(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("roundtrip", help="invert → resume error of a model, per step count")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--model", default="toy")
    p.add_argument("--n", type=int, default=64, help="number of images")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    p.add_argument("--t", type=float, default=0.7)
    p.add_argument("--split", choices=["train", "val", "test", "all"], default="test")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    add_device_arguments(p)
    p.set_defaults(func=_cmd_roundtrip)


def _cmd_roundtrip(args: argparse.Namespace) -> int:
    from hsae.diffusion.roundtrip import format_table
    from hsae.utils.io import atomic_write_json

    rows = roundtrip_command(
        args.data, args.model, args.n, args.steps, args.t, args.split, args.device, args.dtype
    )
    print(format_table(rows))
    if args.json:
        atomic_write_json(args.json, {"model": args.model, "n": args.n, "t": args.t, "rows": rows})
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    _add_data(sub)
    _add_extract(sub)
    _add_roundtrip(sub)


def roundtrip_command(
    data: Path,
    model: str,
    n: int,
    steps_list: Sequence[int],
    t: float,
    split: str,
    device: str = "cpu",
    dtype: str = "float32",
) -> list[dict[str, float]]:
    from hsae.data.images import ImageDataset

    backbone = DiffusionBackbone.load(model, dtype=dtype, device=device)
    ds = ImageDataset(data, backbone.image_size, split=split, limit=n)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    return roundtrip_errors(backbone, images, steps_list, t)
