"""`hsae toy …`: the embedded toy world — train its DDPM and classifier, check them, measure them.

Each sub-command's work lives in hsae.toy (ddpm_training, classifier_training, model_check,
survival, robustness, render_judge); this module only parses flags and prints.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

from hsae.toy.render_judge import DEFAULT_BANK

# Namespace entries that are the command's own, not its settings (kept out of recorded args).
_NOT_SETTINGS = ("command", "toy_command")


def _settings(args: argparse.Namespace) -> dict[str, str]:
    return {k: str(v) for k, v in vars(args).items() if k not in _NOT_SETTINGS}


def _command(args: argparse.Namespace) -> str:
    """The command line that repeats this run, every setting spelled out (defaults included), so
    a recorded command stays exact when defaults change or the CLI is called from Python."""
    words = ["hsae", args.command, args.toy_command]
    for dest, value in vars(args).items():
        if dest in _NOT_SETTINGS or value is None or value is False:
            continue
        flag = "--" + dest.replace("_", "-")
        values = value if isinstance(value, list) else [] if value is True else [value]
        words += [flag, *map(str, values)]
    return shlex.join(words)


def _classifier(path: Path | None):  # -> AttributeClassifier (import kept lazy for --help)
    from hsae.toy.classifier import AttributeClassifier, load_default

    return AttributeClassifier.load(path) if path else load_default()


# ----- train-ddpm --------------------------------------------------------------------------------
def _add_train_ddpm(tsub: argparse._SubParsersAction) -> None:
    p = tsub.add_parser(
        "train-ddpm",
        help="train the toy DDPM on toyfaces (resumable)",
        description="Train the toy pixel DDPM on toyfaces' train split, on the CPU; re-running "
        "the same command resumes from OUT/checkpoint.pt. Exports the EMA weights as a diffusers "
        "DDPMPipeline folder with training_args.json, train_log.jsonl and loss_curve.png.",
    )
    p.add_argument("--data", type=Path, default=Path("data/toyfaces"))
    p.add_argument("--out", type=Path, default=Path("runs/toy-ddpm"))
    p.add_argument("--steps", type=int, default=3000, help="length of the lr schedule")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=100, help="lr warm-up steps")
    p.add_argument("--ema", type=float, default=0.998, help="EMA decay ceiling")
    p.add_argument("--ckpt-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument(
        "--stop-at",
        type=int,
        default=None,
        help="stop after this step of the --steps schedule and export the EMA weights then",
    )
    p.add_argument(
        "--export-at-checkpoint",
        action="store_true",
        help="save the checkpoint's EMA weights as the pipeline now, without training further",
    )
    p.add_argument(
        "--prediction-type",
        choices=["epsilon", "v_prediction"],
        default="epsilon",
        help="training target; v_prediction avoids ε's 1/sqrt(ᾱ) blow-up of x0 near t = T",
    )
    p.add_argument(
        "--block-out-channels",
        default="32,64,128",
        help="U-Net widths per level, comma-separated; the last is H-space's C "
        "(default %(default)s)",
    )
    p.set_defaults(func=_cmd_train_ddpm)


def _cmd_train_ddpm(args: argparse.Namespace) -> int:
    import torch

    from hsae.toy.ddpm_training import ToyDDPMConfig, parse_widths, train_toy_ddpm

    cfg = ToyDDPMConfig(
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        warmup=args.warmup,
        ema=args.ema,
        ckpt_every=args.ckpt_every,
        seed=args.seed,
        stop_at=args.stop_at,
        prediction_type=args.prediction_type,
        block_out_channels=parse_widths(args.block_out_channels),
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    train_toy_ddpm(args.data, args.out, cfg, args.export_at_checkpoint, _settings(args))
    return 0


# ----- train-classifier --------------------------------------------------------------------------
def _add_train_classifier(tsub: argparse._SubParsersAction) -> None:
    p = tsub.add_parser(
        "train-classifier",
        help="train the toyfaces attribute classifier",
        description="Train the toyfaces attribute classifier on partition 0 with shift/flip and "
        "blur/noise augmentation; keep the best-validation epoch; write model.safetensors, "
        "cfg.json, metrics.json and train_log.txt into --out.",
    )
    p.add_argument("--data", type=Path, required=True, help="CelebA-layout toyfaces folder")
    p.add_argument("--out", type=Path, required=True, help="output folder for the classifier")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--shift", type=int, default=2, help="max random translation in px")
    p.add_argument("--blur", type=float, default=0.9, help="max Gaussian blur sigma in px")
    p.add_argument("--noise", type=float, default=8.0, help="max pixel noise std (of 255)")
    p.add_argument("--degrade-p", type=float, default=0.5, help="share of blurred/noised images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.set_defaults(func=_cmd_train_classifier)


def _cmd_train_classifier(args: argparse.Namespace) -> int:
    from hsae.toy.classifier_training import ClassifierTrainConfig, train_classifier

    cfg = ClassifierTrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        channels=list(args.channels),
        shift=args.shift,
        blur=args.blur,
        noise=args.noise,
        degrade_p=args.degrade_p,
        seed=args.seed,
    )
    train_classifier(args.data, args.out, cfg, _command(args), args.threads)
    return 0


# ----- check -------------------------------------------------------------------------------------
def _add_check(tsub: argparse._SubParsersAction) -> None:
    p = tsub.add_parser(
        "check",
        help="judge a model's samples: attribute frequencies vs the data's",
        description="Sample the model (DDIM) and judge the samples with the classifier (and the "
        "render judge): every attribute's frequency must lie within 10 points of the data's. "
        "Writes samples.png and sample_check.json into --out.",
    )
    p.add_argument("--model", default="toy")
    p.add_argument("--data", type=Path, default=Path("data/toyfaces"))
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--spacing", default="trailing", help="DDIM timestep spacing (see ddim_grid)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta: 0 deterministic, 1 ancestral")
    p.add_argument("--classifier", type=Path, help="classifier folder (default: the committed one)")
    p.add_argument("--samples", type=Path, help="judge these saved samples instead of sampling")
    p.add_argument("--save-samples", type=Path, help="write the samples here (torch, uint8)")
    p.add_argument("--render-judge", action="store_true", help="add the classifier-free verdict")
    p.add_argument("--toyfaces-seed", type=int, default=0, help="seed of the data (render judge)")
    p.add_argument("--out", type=Path, default=Path("runs/figures/toy-check"))
    p.set_defaults(func=_cmd_check)


def _cmd_check(args: argparse.Namespace) -> int:
    from hsae.data.images import attribute_frequencies
    from hsae.diffusion.backbone import DiffusionBackbone
    from hsae.toy import model_check as mc

    t0 = time.time()
    data = attribute_frequencies(args.data)
    backbone = None if args.samples else DiffusionBackbone.load(args.model)
    if backbone is None:
        x = mc.load_samples(args.samples)
        provenance = {"samples": str(args.samples)}
    else:  # the fingerprint ties this verdict to the weights it judged (tests/test_toy_check.py)
        x = mc.sample(backbone, args.n, args.batch, args.steps, args.spacing, args.eta)
        provenance = {"model": args.model, "weights": backbone.weights_fingerprint()}
        provenance |= {"steps": args.steps, "spacing": args.spacing, "eta": args.eta}
    if args.save_samples:
        mc.save_samples(args.save_samples, x)
    provenance["classifier"] = str(args.classifier or "committed (src/hsae/assets/toy-classifier)")
    seed = args.toyfaces_seed if args.render_judge else None
    result = mc.check_samples(x, data, _classifier(args.classifier), seed, provenance)
    result |= {"command": _command(args), "seconds": time.time() - t0}
    mc.write_check(args.out, x, result)
    print(json.dumps(result, indent=2))
    return 0


# ----- survival ----------------------------------------------------------------------------------
def _add_survival(tsub: argparse._SubParsersAction) -> None:
    from hsae.diffusion.invert import SPACINGS

    p = tsub.add_parser(
        "survival",
        help="the noise level at which a model loses an attribute",
        description="Noise up to --n test images with the attribute and --n without to every "
        "--t, let the model denoise them, and print per t how often the classifier still reads "
        "the attribute (kept), reads it where it was absent (gained) and the frequency these "
        "imply, against the data's. --by adds the same rows per value of another attribute.",
    )
    p.add_argument("--data", type=Path, required=True, help="CelebA-layout folder")
    p.add_argument("--attribute", required=True, help="attribute to balance the images on")
    p.add_argument("--model", default="toy", help="model folder, hub id or 'toy'")
    p.add_argument("--classifier", type=Path, help="classifier folder (default: the committed one)")
    p.add_argument("--split", type=int, default=2, help="partition code (default 2 = test)")
    p.add_argument("--n", type=int, default=200, help="images with and without the attribute")
    p.add_argument("--t", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 1.0])
    p.add_argument("--steps", type=int, default=50, help="DDIM grid size")
    p.add_argument("--spacing", choices=SPACINGS, default="trailing")
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--by", help="also split kept / gained by this attribute's two values")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.set_defaults(func=_cmd_survival)


def _cmd_survival(args: argparse.Namespace) -> int:
    import torch

    from hsae.data.images import attribute_frequencies
    from hsae.diffusion.backbone import DiffusionBackbone
    from hsae.toy.classifier import load_labelled_split
    from hsae.toy.survival import attribute_survival, balanced_subset, format_table
    from hsae.utils.io import atomic_write_json

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if any(not 0.0 < t <= 1.0 for t in args.t):
        raise ValueError(f"--t values must be fractions of T in (0, 1], got {args.t}")
    torch.manual_seed(args.seed)
    clf = _classifier(args.classifier)
    for flag, name in (("--attribute", args.attribute), ("--by", args.by)):
        if name is not None and name not in clf.attribute_names:
            names = clf.attribute_names
            raise ValueError(f"{flag} {name!r} is not one of the classifier's {names}")
    images, labels = load_labelled_split(args.data, args.split, clf.attribute_names)
    keep = balanced_subset(labels, clf.attribute_names.index(args.attribute), args.n)
    backbone = DiffusionBackbone.load(args.model)
    freq = attribute_frequencies(args.data)
    rows = attribute_survival(
        backbone, clf, images[keep], labels[keep], freq, args.t, args.steps, args.spacing,
        args.eta, args.seed, args.batch, args.by,
    )  # fmt: skip
    print(f"{args.attribute}: {len(keep)} images, model {args.model}")
    print(format_table(rows, args.attribute))
    if args.json:
        atomic_write_json(args.json, {"args": _settings(args), "rows": [r.to_dict() for r in rows]})
    return 0


# ----- robustness --------------------------------------------------------------------------------
def _add_robustness(tsub: argparse._SubParsersAction) -> None:
    p = tsub.add_parser(
        "robustness",
        help="the classifier's verdicts under mild blur and pixel noise (markdown table)",
        description="Per attribute: the true frequency, the classifier's accuracy on the clean "
        "images, and its predicted frequency clean, after a 0.5 and 0.7 px Gaussian blur and "
        "after pixel noise of std 6 (of 255), on the first --n images of --split.",
    )
    p.add_argument("--data", type=Path, default=Path("data/toyfaces"))
    p.add_argument("--n", type=int, default=2000, help="images of the split to use")
    p.add_argument("--split", choices=["train", "val", "test", "all"], default="test")
    p.add_argument("--classifier", type=Path, help="classifier folder (default: the committed one)")
    p.set_defaults(func=_cmd_robustness)


def _cmd_robustness(args: argparse.Namespace) -> int:
    from hsae.data.images import SPLITS
    from hsae.toy.classifier import load_labelled_split
    from hsae.toy.robustness import format_markdown, robustness_columns

    try:
        images, labels = load_labelled_split(args.data, SPLITS.get(args.split))  # "all": None
    except (FileNotFoundError, ValueError) as e:  # a missing folder or an empty split
        raise ValueError(f"--data {args.data} --split {args.split}: {e}") from None
    images, labels = images[: args.n], labels[: args.n]
    clf = _classifier(args.classifier)
    columns = robustness_columns(clf, images, labels)
    what = f"{len(images)} {args.split} images of {args.data}"
    print(f"{what}; clean accuracy, predicted frequencies")
    print(format_markdown(columns, clf.cfg.attribute_names))
    return 0


# ----- render-judge ------------------------------------------------------------------------------
def _add_render_judge(tsub: argparse._SubParsersAction) -> None:
    p = tsub.add_parser(
        "render-judge",
        help="judge attributes by re-rendering toyfaces (no classifier)",
        description="--validate N: the judge's accuracy on N held-out renders (optionally "
        "blurred); --images FILE: attribute frequencies of a torch file of float (N, 3, 32, 32) "
        "images in [-1, 1] or uint8 ones.",
    )
    p.add_argument("--images", type=Path, help="torch file of images to judge")
    p.add_argument("--validate", type=int, default=0, help="judge N renders after the bank")
    p.add_argument("--blur", type=float, default=0.0, help="blur validation renders (sigma px)")
    p.add_argument("--seed", type=int, default=0, help="toyfaces dataset seed")
    p.add_argument("--bank", type=int, default=DEFAULT_BANK, help="renders to draw nuisance from")
    p.add_argument("--k", type=int, default=5, help="nearest renders tried per image")
    p.add_argument("--json", type=Path, help="write the frequencies (and accuracies) here")
    p.set_defaults(func=_cmd_render_judge)


def _cmd_render_judge(args: argparse.Namespace) -> int:
    from hsae.toy import render_judge as rj
    from hsae.utils.io import atomic_write_json

    if (args.images is None) == (args.validate <= 0):
        raise ValueError("give exactly one of --images FILE and --validate N")
    if args.bank < 1 or not 1 <= args.k <= args.bank or args.blur < 0:
        raise ValueError("--bank must be >= 1, --k in [1, --bank] and --blur >= 0")
    images = None if args.validate else rj.load_images(args.images)  # fail before the bank
    t0 = time.time()
    bank = rj.render_bank(args.seed, args.bank)
    print(f"bank of {args.bank} renders in {time.time() - t0:.0f}s", flush=True)
    result: dict = {"k": args.k, "bank": args.bank, "seed": args.seed, "validation_blur": args.blur}
    if images is None:
        result |= rj.validate(bank, args.seed, args.validate, args.blur, args.k)
    else:
        result["images"] = str(args.images)
        pred = rj.judge(images, bank, args.seed, args.k)
        result["frequency"] = dict(zip(rj.ATTRIBUTES, pred.mean(0).tolist(), strict=True))
    result["n"] = len(images) if images is not None else args.validate
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result, indent=2))
    if args.json:
        atomic_write_json(args.json, result)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("toy", help="the embedded toy model: train, check and measure it")
    tsub = p.add_subparsers(dest="toy_command", required=True)
    _add_train_ddpm(tsub)
    _add_train_classifier(tsub)
    _add_check(tsub)
    _add_survival(tsub)
    _add_robustness(tsub)
    _add_render_judge(tsub)
