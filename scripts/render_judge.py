"""Judge toyfaces attributes by re-rendering them (hsae.toy.render_judge): no classifier involved.

    python scripts/render_judge.py --validate 1000 [--blur 0.7]  # accuracy on held-out renders
    python scripts/render_judge.py --images samples.pt        # attribute frequencies of images

`--images` takes a torch file of float (N, 3, 32, 32) images in [-1, 1] or uint8 ones.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from hsae.toy.augment import gaussian_blur
from hsae.toy.render_judge import DEFAULT_BANK, as_judge_input, judge, render, render_bank
from hsae.toy.toyfaces import ATTRIBUTES, generate
from hsae.utils.io import atomic_write_json


def load_images(path: Path) -> np.ndarray:
    x = torch.load(path, map_location="cpu")
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        raise SystemExit(f"{path}: expected a tensor of images (N, 3, H, W)")
    return as_judge_input(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=Path, help="torch file of images to judge")
    p.add_argument("--validate", type=int, default=0, help="judge N renders after the bank")
    p.add_argument("--blur", type=float, default=0.0, help="blur validation renders (sigma px)")
    p.add_argument("--seed", type=int, default=0, help="toyfaces dataset seed")
    p.add_argument("--bank", type=int, default=DEFAULT_BANK, help="renders to draw nuisance from")
    p.add_argument("--k", type=int, default=5, help="nearest renders tried per image")
    p.add_argument("--json", type=Path, help="write the frequencies (and accuracies) here")
    a = p.parse_args()
    if (a.images is None) == (a.validate <= 0):
        p.error("give exactly one of --images FILE and --validate N")
    if a.bank < 1 or not 1 <= a.k <= a.bank or a.blur < 0:
        p.error("--bank must be >= 1, --k in [1, --bank] and --blur >= 0")
    t0 = time.time()
    bank = render_bank(a.seed, a.bank)
    print(f"bank of {a.bank} renders in {time.time() - t0:.0f}s", flush=True)
    result: dict = {"k": a.k, "bank": a.bank, "seed": a.seed, "validation_blur": a.blur}
    if a.validate:
        idx = range(a.bank, a.bank + a.validate)
        truth = np.array([[generate(a.seed, i).attributes[n] for n in ATTRIBUTES] for i in idx])
        images = torch.from_numpy(np.stack([render(a.seed, i) for i in idx])).permute(0, 3, 1, 2)
        images = gaussian_blur(images, a.blur).permute(0, 2, 3, 1).numpy()
        pred = judge(images, bank, a.seed, a.k)
        result["accuracy"] = dict(zip(ATTRIBUTES, (pred == truth).mean(0).tolist(), strict=True))
        result["truth"] = dict(zip(ATTRIBUTES, truth.mean(0).tolist(), strict=True))
    else:
        pred = judge(load_images(a.images), bank, a.seed, a.k)
        result["images"] = str(a.images)
    result["frequency"] = dict(zip(ATTRIBUTES, pred.mean(0).tolist(), strict=True))
    result["n"], result["seconds"] = len(pred), round(time.time() - t0, 1)
    print(json.dumps(result, indent=2))
    if a.json:
        atomic_write_json(a.json, result)


if __name__ == "__main__":
    main()
