"""Judge toyfaces attributes by re-rendering them: a check of generated faces with no classifier.

For each image, the `k` nearest renders of a bank (full-image L2 distance) supply candidate
nuisance: position, scale, colours. Each candidate is re-rendered with every combination of a
group's attributes (its other attributes kept), and the combination whose render is closest to the
image inside the group's region (`attribute_region_mask`, the image shifted by up to 1 px) is the
verdict for the group. It has no weights that could learn a shortcut (a thin brow is judged thin
only if a thin-brow render matches better), but it assumes sharp drawings: on blurred renders it
calls too many eyes closed and too few heavy brows (docs/results.md, "The toy model").
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hsae.toy.toyfaces import ATTRIBUTES, attribute_region_mask, generate

GROUPS: tuple[tuple[str, ...], ...] = (
    ("Smiling", "Mouth_Slightly_Open"),
    ("Heavy_Eyebrows", "Eyes_Closed", "Eyeglasses"),
    ("Pale_Skin", "Blond_Hair", "Beard"),
    ("Wearing_Hat", "Bangs"),
    ("Blue_Background",),
)
SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
DEFAULT_BANK = 16000  # the toyfaces train split the toy DDPM learned from


def render(seed: int, index: int, **toggles: bool) -> np.ndarray:
    return np.asarray(generate(seed, index, None, **toggles).image, dtype=np.float32) / 255.0


def shifted(img: np.ndarray) -> np.ndarray:
    """(9, H, W, 3): `img` moved by every (dy, dx) in SHIFTS, edges replicated."""
    pad = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = img.shape[:2]
    return np.stack([pad[1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w] for dy, dx in SHIFTS])


def judge_group(img: np.ndarray, seed: int, neighbours: list[int], group: tuple[str, ...]) -> dict:
    """Verdict for one attribute group: the best (neighbour, combination, shift) in the region."""
    moved = shifted(img)
    best: tuple[float, dict] = (np.inf, {})
    for j in neighbours:
        mask = np.zeros(img.shape[:2], bool)
        for a in group:
            mask |= attribute_region_mask(seed, j, a)
        for combo in itertools.product((False, True), repeat=len(group)):
            toggles = dict(zip(group, combo, strict=True))
            diff = (moved - render(seed, j, **toggles)[None]) ** 2
            err = float(diff[:, mask].mean(axis=(1, 2)).min())
            if err < best[0]:
                best = (err, toggles)
    return best[1]


def as_judge_input(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) uint8, or float in [-1, 1], → float (N, H, W, 3) in [0, 1] for `judge`."""
    x = images.float()
    x = x / 255 if images.dtype == torch.uint8 else (x.clamp(-1, 1) + 1) / 2
    return x.permute(0, 2, 3, 1).numpy()


def render_bank(seed: int, n: int) -> np.ndarray:
    """Faces 0 .. n-1 of toyfaces dataset `seed` as float (n, H, W, 3) in [0, 1]."""
    return np.stack([render(seed, i) for i in range(n)])


def nearest_renders(images: np.ndarray, bank: np.ndarray, k: int, chunk: int = 256) -> np.ndarray:
    """(N, k) indices of each image's k nearest bank renders by L2 distance."""
    b = torch.from_numpy(bank.reshape(len(bank), -1)).float()
    b_sq = (b * b).sum(1)
    out = []
    for i in range(0, len(images), chunk):
        x = torch.from_numpy(images[i : i + chunk].reshape(-1, b.shape[1])).float()
        # ||x||^2 is the same for every render of a row, so the ranking needs only the rest.
        d = b_sq[None, :] - 2 * (x @ b.T)
        out.append(d.topk(k, dim=1, largest=False).indices)
    return torch.cat(out).numpy()


def judge(
    images: np.ndarray, bank: np.ndarray, seed: int, k: int = 5, progress: bool = True
) -> np.ndarray:
    """Bool (N, A) verdicts in ATTRIBUTES order for float (N, H, W, 3) images in [0, 1].

    `bank` holds faces 0 .. len(bank)-1 of dataset `seed` (see `render_bank`).
    """
    if images.ndim != 4 or images.shape[1:] != bank.shape[1:]:
        raise ValueError(
            f"images must have shape (N, {', '.join(map(str, bank.shape[1:]))}) like the bank's "
            f"renders, got {images.shape}"
        )
    if not 1 <= k <= len(bank):
        raise ValueError(f"k must be in [1, {len(bank)}] (the bank size), got {k}")
    nearest = nearest_renders(images, bank, k)
    out = np.zeros((len(images), len(ATTRIBUTES)), bool)
    for i, img in enumerate(tqdm(images, desc="render judge", unit="img", disable=not progress)):
        neighbours = nearest[i].tolist()
        for group in GROUPS:
            for a, v in judge_group(img, seed, neighbours, group).items():
                out[i, ATTRIBUTES.index(a)] = v
    return out


def validate(
    bank: np.ndarray, seed: int, n: int, blur: float = 0.0, k: int = 5
) -> dict[str, dict[str, float]]:
    """The judge on the `n` renders after the bank (held out), blurred by `blur` px: its accuracy,
    the true frequencies and the judged ones, per attribute."""
    from hsae.toy.augment import gaussian_blur

    if n < 1 or blur < 0:
        raise ValueError(f"--validate {n} must be >= 1 and --blur {blur} >= 0")
    idx = range(len(bank), len(bank) + n)
    truth = np.array([[generate(seed, i).attributes[a] for a in ATTRIBUTES] for i in idx])
    chw = torch.from_numpy(np.stack([render(seed, i) for i in idx])).permute(0, 3, 1, 2)
    pred = judge(gaussian_blur(chw, blur).permute(0, 2, 3, 1).numpy(), bank, seed, k)
    return {
        "accuracy": dict(zip(ATTRIBUTES, (pred == truth).mean(0).tolist(), strict=True)),
        "truth": dict(zip(ATTRIBUTES, truth.mean(0).tolist(), strict=True)),
        "frequency": dict(zip(ATTRIBUTES, pred.mean(0).tolist(), strict=True)),
    }


def load_images(path: Path) -> np.ndarray:
    """A torch file of (N, 3, H, W) images, uint8 or float in [-1, 1], as `judge` input."""
    x = torch.load(path, map_location="cpu")
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{path}: expected a tensor of images (N, 3, H, W)")
    return as_judge_input(x)
