"""Check the toy DDPM against its bar: recognisable 50-step DDIM samples, attribute frequencies of
1,000 samples (judged by the committed classifier) within 10 points of the data's.

    python scripts/check_toy_model.py --data data/toyfaces --n 1000 --out src/hsae/assets/toy-ddpm

Writes samples.png (the first 64 samples) and sample_check.json into --out. `--render-judge`
adds a second, classifier-free verdict (hsae.toy.render_judge: re-rendering each sample's attribute
combinations with nuisance borrowed from its nearest toyfaces renders). `--save-samples FILE`
keeps the samples (uint8) so `--samples FILE` can judge them again without sampling.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import torch

from hsae.data.images import attribute_frequencies
from hsae.diffusion.backbone import DiffusionBackbone
from hsae.diffusion.sampling import ddim_samples
from hsae.toy.classifier import AttributeClassifier, load_default
from hsae.utils.io import atomic_write_bytes, atomic_write_json
from hsae.utils.viz import save_grid, to_uint8


def sample(backbone: DiffusionBackbone, a: argparse.Namespace) -> torch.Tensor:
    """a.n DDIM samples as uint8 (N, 3, H, W), in batches seeded by their offset."""
    out, t0 = [], time.time()
    for b in range(0, a.n, a.batch):
        x = ddim_samples(backbone, min(a.batch, a.n - b), a.steps, b, a.spacing, a.eta)
        out.append(torch.from_numpy(to_uint8(x)).permute(0, 3, 1, 2))
        print(f"{b + len(out[-1])}/{a.n} samples, {time.time() - t0:.0f}s", flush=True)
    return torch.cat(out)


def load_samples(path: Path) -> torch.Tensor:
    x = torch.load(path, map_location="cpu")
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4:
        raise SystemExit(f"{path}: expected uint8 images (N, 3, H, W) from --save-samples")
    return x


def render_judge_freq(images: torch.Tensor, seed: int, k: int) -> dict[str, float]:
    from hsae.toy.render_judge import DEFAULT_BANK, as_judge_input, judge, render_bank
    from hsae.toy.toyfaces import ATTRIBUTES

    pred = judge(as_judge_input(images), render_bank(seed, DEFAULT_BANK), seed, k)
    return dict(zip(ATTRIBUTES, pred.mean(0).tolist(), strict=True))


def gaps(freq: dict[str, float], data: dict[str, float]) -> tuple[float, dict[str, float]]:
    gap = {n: freq[n] - data[n] for n in data if n in freq}
    return max(abs(g) for g in gap.values()), gap


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
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
    p.add_argument("--out", type=Path, default=Path("src/hsae/assets/toy-ddpm"))
    a = p.parse_args()
    t0 = time.time()
    backbone = None if a.samples else DiffusionBackbone.load(a.model)
    x = load_samples(a.samples) if backbone is None else sample(backbone, a)
    if a.save_samples:
        buf = io.BytesIO()
        torch.save(x, buf)
        atomic_write_bytes(a.save_samples, buf.getvalue())
    clf = AttributeClassifier.load(a.classifier) if a.classifier else load_default()
    data = attribute_frequencies(a.data)
    freq = dict(zip(clf.attribute_names, clf.predict(x).float().mean(0).tolist(), strict=True))
    worst, gap = gaps(freq, data)
    rows = {n: {"data": data[n], "samples": freq[n], "gap": gap[n]} for n in gap}
    result = {"n": len(x), "max_abs_gap": worst, "pass": worst <= 0.10}
    if backbone is None:
        result["samples"] = str(a.samples)
    else:  # the fingerprint ties this verdict to the weights it judged (tests/test_toy_check.py)
        result |= {"model": a.model, "weights": backbone.weights_fingerprint(), "steps": a.steps}
        result |= {"spacing": a.spacing, "eta": a.eta}
    result["classifier"] = str(a.classifier or "committed (src/hsae/assets/toy-classifier)")
    if a.render_judge:
        rfreq = render_judge_freq(x, a.toyfaces_seed, k=5)
        rworst, rgap = gaps(rfreq, data)
        for n in rows:
            rows[n] |= {"render_judge": rfreq[n], "render_judge_gap": rgap[n]}
        result |= {"render_judge_max_abs_gap": rworst, "render_judge_pass": rworst <= 0.10}
    result |= {"attributes": rows, "command": " ".join(sys.argv), "seconds": time.time() - t0}
    grid = x[:64].float() / 127.5 - 1
    save_grid([grid[i : i + 16] for i in range(0, len(grid), 16)], a.out / "samples.png")
    atomic_write_json(a.out / "sample_check.json", result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
