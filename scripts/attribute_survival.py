"""Find the noise level at which a diffusion model loses an attribute (hsae.toy.survival).

    python scripts/attribute_survival.py --data data/toyfaces --attribute Eyes_Closed --n 200 \\
        --t 0.1 0.3 0.5 0.7 1.0 --json runs/survival/eyes.json

Takes up to --n test images with the attribute and --n without, noises each to every --t, lets
the model denoise it (trailing DDIM grid, eta 1, as the toy's sample check), and prints for each
t how often the classifier still reads the attribute (kept), reads it where it was absent
(gained) and the frequency these imply at the data's base rate, against the data's frequency.
`--by Pale_Skin` adds the same rows for each value of another attribute: where it is lost.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from hsae.data.images import attribute_frequencies
from hsae.diffusion.backbone import DiffusionBackbone
from hsae.diffusion.invert import SPACINGS
from hsae.toy.classifier import AttributeClassifier, load_default, load_labelled_split
from hsae.toy.survival import SurvivalRow, attribute_survival, balanced_subset
from hsae.utils.io import atomic_write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
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
    a = p.parse_args(argv)
    if a.n < 1:
        p.error(f"--n must be >= 1, got {a.n}")
    if any(not 0.0 < t <= 1.0 for t in a.t):
        p.error(f"--t values must be fractions of T in (0, 1], got {a.t}")
    return a


def table(rows: list[SurvivalRow], attribute: str) -> str:
    head = f"{'t':>5} {'timestep':>8} {'kept':>6} {'gained':>6} {'implied':>7} {'data':>6}"
    lines = [f"{head}  {'images (present / absent)'}"]
    for r in rows:
        if r.attribute == attribute:
            lines.append(
                f"{r.t_frac:5.2f} {r.timestep:8d} {r.kept:6.3f} {r.gained:6.3f} "
                f"{r.implied_frequency:7.3f} {r.data_frequency:6.3f}  "
                f"{r.subset} ({r.n_present} / {r.n_absent})"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    torch.manual_seed(a.seed)
    clf = AttributeClassifier.load(a.classifier) if a.classifier else load_default()
    for flag, name in (("--attribute", a.attribute), ("--by", a.by)):
        if name is not None and name not in clf.attribute_names:
            sys.exit(f"{flag} {name!r} is not one of the classifier's {clf.attribute_names}")
    images, labels = load_labelled_split(a.data, a.split, clf.attribute_names)
    keep = balanced_subset(labels, clf.attribute_names.index(a.attribute), a.n)
    backbone = DiffusionBackbone.load(a.model)
    rows = attribute_survival(
        backbone,
        clf,
        images[keep],
        labels[keep],
        attribute_frequencies(a.data),
        a.t,
        a.steps,
        a.spacing,
        a.eta,
        a.seed,
        a.batch,
        a.by,
    )
    print(f"{a.attribute}: {len(keep)} images, model {a.model}")
    print(table(rows, a.attribute))
    if a.json:
        atomic_write_json(
            a.json,
            {"args": {k: str(v) for k, v in vars(a).items()}, "rows": [r.to_dict() for r in rows]},
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
