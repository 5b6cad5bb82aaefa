"""Check the toy DDPM against its bar: recognisable 50-step DDIM samples, attribute frequencies of
1,000 samples (judged by the committed classifier) within 10 points of the data's.

    python scripts/check_toy_model.py --data data/toyfaces --n 1000 --out src/hsae/assets/toy-ddpm

Writes samples.png (the first 64 samples) and sample_check.json into --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hsae.backbone import DiffusionBackbone
from hsae.classifier import load_default
from hsae.data import parse_celeba_attributes
from hsae.demo import ddim_samples, save_grid
from hsae.io_utils import atomic_write_json


def data_frequencies(data: Path) -> tuple[list[str], np.ndarray]:
    _, names, values = parse_celeba_attributes(data / "list_attr_celeba.txt")
    return names, (values > 0).mean(0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="toy")
    p.add_argument("--data", type=Path, default=Path("data/toyfaces"))
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--out", type=Path, default=Path("src/hsae/assets/toy-ddpm"))
    a = p.parse_args()
    t0 = time.time()
    backbone = DiffusionBackbone.load(a.model)
    clf = load_default()
    names, data_freq = data_frequencies(a.data)
    preds, first = [], None
    for b in range(0, a.n, a.batch):
        x = ddim_samples(backbone, min(a.batch, a.n - b), a.steps, seed=b)
        first = x if first is None else first
        preds.append(clf.predict(x).float())
        print(f"{b + len(x)}/{a.n} samples, {time.time() - t0:.0f}s", flush=True)
    freq = torch.cat(preds).mean(0).numpy()
    order = [clf.config.attribute_names.index(n) for n in names]
    rows = {
        n: {"data": float(data_freq[i]), "samples": float(freq[order[i]])}
        for i, n in enumerate(names)
    }
    worst = max(abs(r["data"] - r["samples"]) for r in rows.values())
    save_grid([first[i : i + 16] for i in range(0, min(64, len(first)), 16)], a.out / "samples.png")
    result = {
        "n": a.n,
        "steps": a.steps,
        "max_abs_gap": worst,
        "pass": worst <= 0.10,
        "attributes": rows,
        "command": " ".join(sys.argv),
        "seconds": time.time() - t0,
    }
    atomic_write_json(a.out / "sample_check.json", result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
