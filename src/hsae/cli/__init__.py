"""`hsae`: one sub-command per stage of the H-space SAE method."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path


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
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    p.add_argument(
        "--device", default="cpu", help="where the model runs: cpu (default), cuda, cuda:N, mps"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _cmd_extract(args: argparse.Namespace) -> int:
    from hsae.data.extract import extract_command

    return extract_command(args)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from hsae.cli.train import add_train_arguments

    add_train_arguments(sub.add_parser("train", help="train an SAE on an activation store"))


def _cmd_train(args: argparse.Namespace) -> int:
    from hsae.cli.train import train_command

    return train_command(args)


def _add_roundtrip(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("roundtrip", help="invert → resume error of a model, per step count")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--model", default="toy")
    p.add_argument("--n", type=int, default=64, help="number of images")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    p.add_argument("--t", type=float, default=0.7)
    p.add_argument("--split", choices=["train", "val", "test", "all"], default="test")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")


def _cmd_roundtrip(args: argparse.Namespace) -> int:
    from hsae.diffusion.roundtrip import format_table, roundtrip_command
    from hsae.utils.io import atomic_write_json

    rows = roundtrip_command(args.data, args.model, args.n, args.steps, args.t, args.split)
    print(format_table(rows))
    if args.json:
        atomic_write_json(args.json, {"model": args.model, "n": args.n, "t": args.t, "rows": rows})
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the method end to end on the embedded toy model")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--n", type=int, default=512, help="toyfaces images to extract")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--t", type=float, default=0.7)
    p.add_argument("--sae-steps", type=int, default=1500, help="SAE training steps")


def _cmd_demo(args: argparse.Namespace) -> int:
    from hsae.cli.demo import demo_command

    return demo_command(args.out, args.n, args.steps, args.t, args.sae_steps)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from hsae.cli.options import add_threshold_arguments

    p = sub.add_parser("eval", help="Table 2: reconstruction metrics of SAEs and baselines")
    p.add_argument("--store", type=Path, required=True, help="activation store folder")
    p.add_argument("--sae", type=Path, nargs="+", default=[], help="SAE folder(s), e.g. a sweep")
    p.add_argument("--baseline", type=Path, nargs="+", default=[], help="saved baseline folder(s)")
    p.add_argument(
        "--fit-pca", type=int, nargs="+", default=[], metavar="L", help="fit PCA-L on train split"
    )
    p.add_argument(
        "--random",
        type=int,
        nargs="?",
        const=512,
        default=None,
        metavar="L",
        help="add the random baseline with L latents (default 512)",
    )
    add_threshold_arguments(p)
    p.add_argument(
        "--k-store",
        type=Path,
        default=None,
        help="store whose train split chooses k for --threshold-k auto (default --store)",
    )
    p.add_argument("--split", choices=["train", "val", "test", "all"], default="test")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: STORE/../eval)")
    p.add_argument("--batch", type=int, default=64, help="images per batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-image", action="store_true", help="keep active values of every image")
    p.add_argument(
        "--spliced", type=int, default=0, metavar="N", help="spliced fidelity on N images"
    )
    p.add_argument("--data", type=Path, default=None, help="image folder (for --spliced)")
    p.add_argument("--model", default="toy", help="diffusion model (for --spliced)")
    p.add_argument("--t", type=float, default=0.7, help="(--spliced) if the store lacks t")
    p.add_argument("--steps", type=int, default=50, help="(--spliced) if the store lacks steps")


def _cmd_eval(args: argparse.Namespace) -> int:
    from hsae.analysis.reconstruction import eval_command

    return eval_command(args)


COMMANDS = {
    "data": (_add_data, _cmd_data),
    "extract": (_add_extract, _cmd_extract),
    "train": (_add_train, _cmd_train),
    "roundtrip": (_add_roundtrip, _cmd_roundtrip),
    "demo": (_add_demo, _cmd_demo),
    "eval": (_add_eval, _cmd_eval),
}

# Stage modules that own their sub-command: `register(sub)` adds a parser whose defaults carry
# `func(args) -> int`. A module not written yet is skipped; any other import error is raised.
STAGE_MODULES = (
    "hsae.editing.edit",
    "hsae.analysis.features",
    "hsae.editing.bench",
    "hsae.editing.counterfactual",
    "hsae.editing.interpolate",
    "hsae.analysis.probe",
    "hsae.report.build",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    for name in STAGE_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command not in COMMANDS:
            return int(args.func(args))
        return COMMANDS[args.command][1](args)
    except (OSError, ValueError, KeyError) as e:
        # Input errors end with one clear line, not a traceback.
        print(f"hsae {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
