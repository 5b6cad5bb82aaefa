"""How the toyfaces attribute classifier's predicted frequencies move under mild image changes.

    hsae toy robustness --data data/toyfaces --n 2000

Per attribute: the true frequency, the classifier's accuracy on the clean images, and its predicted
frequency on the clean images, after a 5×5 Gaussian blur (sigma 0.5 and 0.7 px) and after Gaussian
pixel noise (std 6 of 255). A judge of DDPM samples should not change its verdict under a blur
that small; this shows where it does.
"""

from __future__ import annotations

import torch

from hsae.toy.augment import gaussian_blur, pixel_noise
from hsae.toy.classifier import AttributeClassifier


def blurred(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """uint8 (N, 3, H, W) images blurred by a 5-tap Gaussian, back to uint8."""
    return gaussian_blur(images.float(), sigma).round().clamp(0, 255).to(torch.uint8)


def noised(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return pixel_noise(images.float(), std, g).round().clamp(0, 255).to(torch.uint8)


def robustness_columns(
    clf: AttributeClassifier, images: torch.Tensor, labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Column name -> per-attribute value: truth, clean accuracy, predicted frequencies."""
    clean = clf.predict(images).bool()
    return {
        "truth": labels.float().mean(0),
        "accuracy": (clean == labels.bool()).float().mean(0),
        "clean": clean.float().mean(0),
        "blur 0.5": clf.predict(blurred(images, 0.5)).float().mean(0),
        "blur 0.7": clf.predict(blurred(images, 0.7)).float().mean(0),
        "noise 6": clf.predict(noised(images, 6.0)).float().mean(0),
    }


def format_markdown(columns: dict[str, torch.Tensor], attribute_names: list[str]) -> str:
    """A markdown table, one row per attribute, values to 3 decimals."""
    lines = ["| attribute | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for i, name in enumerate(attribute_names):
        lines.append(f"| {name} | " + " | ".join(f"{c[i]:.3f}" for c in columns.values()) + " |")
    return "\n".join(lines)
