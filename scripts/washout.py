"""Why one step of h does not steer the toy model: the washout and GroupNorm measurements.

1. Washout. Each test image i gets the h_t of another image j (its neighbour in the list) in
   place of its own, on the first N resumed steps (N in --windows). Reported per N: the pixel MSE
   of the result against i's unedited resume (next to the inversion round trip's own MSE), and of
   the attributes on which the classifier judges i and j differently, the fraction that now
   follow j. If one step of h steered the image, N = 1 would already carry most of j over.
2. GroupNorm. The first up block normalises h in groups of channels. One channel of h is moved by
   κ·σ (σ = that channel's std over the image) and the relative change of the first GroupNorm's
   output is measured in the same group's other channels and in the other groups: a large κ on
   one channel rewrites its whole group, instead of scaling one feature.

    python scripts/washout.py --data data/toyfaces --n 32 --json runs/figures/washout.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor


def load_test_images(data: Path, n: int, size: int) -> tuple[Tensor, list[str]]:
    from hsae.data.images import load_image, parse_partition

    parts = parse_partition(data / "list_eval_partition.txt")
    ids = sorted(f for f, s in parts.items() if s == 2)[:n]
    if len(ids) < 2:
        raise ValueError(f"{data}: need at least 2 test images, found {len(ids)}")
    folder = data / "img_align_celeba"
    return torch.stack([load_image(folder / i, size) for i in ids]), ids


def _swapper(h_steps: list[Tensor], donor: Tensor) -> Any:
    """h → the donor images' h of the same step (calls come one per resumed step)."""
    step = [0]

    def swap(h: Tensor) -> Tensor:
        new = h_steps[step[0]][donor].to(h)
        step[0] += 1
        return new

    return swap


@torch.no_grad()
def washout(bb: Any, clf: Any, x: Tensor, t: float, steps: int, windows: list[Any]) -> dict:
    from hsae.diffusion.hspace import hspace_hook
    from hsae.diffusion.invert import invert, resume
    from hsae.editing.intervene import edit_step_count

    inv = invert(bb, bb.encode(x), t, steps)
    # Every h of the unedited resume, per step (the donor's h at each step).
    with hspace_hook(bb.unet, capture=True) as rec:
        z0, _ = resume(bb, inv.z_t, inv.t_index, inv.grid)
    h_steps = rec.captured
    clean = bb.decode(z0).float()
    round_trip = float((clean - x).pow(2).mean())
    donor = torch.roll(torch.arange(len(x)), -1)
    p_clean = torch.as_tensor(clf.predict(clean)).bool()
    differ = p_clean != p_clean[donor]
    out = {"n": len(x), "t": t, "steps": steps, "round_trip_mse": round_trip, "windows": {}}
    for w in windows:
        n = edit_step_count(w, inv.t_index)
        z, _ = resume(
            bb, inv.z_t, inv.t_index, inv.grid, h_edit=_swapper(h_steps, donor), edit_steps=n
        )
        xe = bb.decode(z).float()
        p = torch.as_tensor(clf.predict(xe)).bool()
        follow = (p == p_clean[donor]) & differ
        out["windows"][str(w)] = {
            "edited_steps": n,
            "mse_vs_unedited": float((xe - clean).pow(2).mean()),
            "differing_attributes": int(differ.sum()),
            "followed_donor": int(follow.sum()),
            "followed_fraction": float(follow.sum() / max(int(differ.sum()), 1)),
        }
    out["h_norm_first_step"] = float(h_steps[0].flatten(1).norm(dim=1).mean())
    return out


@torch.no_grad()
def groupnorm(bb: Any, x: Tensor, t: float, steps: int, kappas: list[float]) -> dict:
    from hsae.diffusion.invert import capture_h, invert

    inv = invert(bb, bb.encode(x), t, steps)
    h = capture_h(bb, inv).float()
    block = bb.unet.up_blocks[0]
    norm = block.resnets[0].norm1
    groups, c = norm.num_groups, h.shape[1]
    size = norm.num_channels // groups  # channels per group of the concatenated input
    # The first resnet of the first up block reads [h, skip]: its GroupNorm groups h's channels
    # with each other (h comes first in the concatenation).
    cin = norm.num_channels
    extra = cin - c
    skip = torch.zeros(h.shape[0], extra, *h.shape[2:]) if extra > 0 else None

    def gn(hh: Tensor) -> Tensor:
        inp = hh if skip is None else torch.cat([hh, skip.to(hh)], dim=1)
        return norm(inp.to(next(norm.parameters()).dtype)).float()[:, :c]

    base = gn(h)
    ch = 0  # a channel of the first group
    same = [i for i in range(size) if i != ch]
    other = list(range(size, c))  # h's channels in the other groups
    sigma = h[:, ch].flatten(1).std(dim=1)[:, None, None]
    rows = []
    for k in kappas:
        he = h.clone()
        he[:, ch] = he[:, ch] + k * sigma
        d = gn(he) - base
        rel = d.flatten(2).norm(dim=2) / base.flatten(2).norm(dim=2).clamp_min(1e-12)
        rows.append(
            {
                "kappa_sigma": k,
                "edited_channel": float(rel[:, ch].mean()),
                "same_group_others": float(rel[:, same].mean()),
                "other_groups": float(rel[:, other].mean()),
            }
        )
    return {"groups": groups, "channels_per_group": size, "skip_channels": extra, "rows": rows}


def main() -> None:
    from hsae.diffusion.backbone import DiffusionBackbone
    from hsae.toy.classifier import load_default
    from hsae.utils.io import atomic_write_json
    from hsae.utils.jsonable import jsonable

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="toyfaces (CelebA-layout) folder")
    p.add_argument("--model", default="toy")
    p.add_argument("--n", type=int, default=32, help="test images")
    p.add_argument("--t", type=float, default=0.7)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--windows", nargs="+", default=["1", "5", "all"])
    p.add_argument("--kappas", type=float, nargs="+", default=[1, 5, 25, 100])
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    bb = DiffusionBackbone.load(args.model)
    x, _ = load_test_images(args.data, args.n, bb.image_size)
    windows = [w if w == "all" else int(w) for w in args.windows]
    doc = {
        "washout": washout(bb, load_default(), x, args.t, args.steps, windows),
        "groupnorm": groupnorm(bb, x, args.t, args.steps, args.kappas),
    }
    print(json.dumps(jsonable(doc), indent=2))
    if args.json:
        atomic_write_json(args.json, jsonable(doc))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
