"""SSIM of `hsae.utils.metrics` (scikit-image, one image at a time) against the same formula as one
batched float64 torch convolution (Wang et al. 2004, 11×11 Gaussian window, σ = 1.5), measured in
one run: agreement and time per batch, for the batch shapes the stages use.

    .venv/bin/python benchmarks/bench_metrics.py --repeats 5

Repeats are interleaved after a warm-up; min and median milliseconds are reported, with the ratio
scikit-image / torch of the minima (< 1: scikit-image is faster).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from hsae.utils.metrics import ssim

SHAPES = ((6, 32), (64, 32), (256, 32), (16, 64), (4, 256))  # (images, side)


def torch_ssim(
    a: torch.Tensor, b: torch.Tensor, size: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """The formula as one grouped float64 convolution over the batch (valid windows, range 2)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    w = (g[:, None] * g[None, :] / g.sum() ** 2).expand(a.shape[1], 1, size, size).contiguous()
    a, b = a.double(), b.double()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=a.shape[1])

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.02**2, 0.06**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return s.flatten(1).mean(1).float()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| images | side | max abs diff | torch ms (min / median) | scikit-image ms | ratio |")
    print("|---|---|---|---|---|---|")
    for n, side in SHAPES:
        g = torch.Generator().manual_seed(0)
        a = torch.rand((n, 3, side, side), generator=g) * 2 - 1
        b = (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
        diff = float((torch_ssim(a, b) - ssim(a, b)).abs().max())  # also the warm-up
        times: dict[str, list[float]] = {"torch": [], "skimage": []}
        for _ in range(args.repeats):
            for name, fn in (("torch", torch_ssim), ("skimage", ssim)):
                t0 = time.perf_counter()
                fn(a, b)
                times[name].append(1e3 * (time.perf_counter() - t0))
        t, s = times["torch"], times["skimage"]
        print(
            f"| {n} | {side} | {diff:.1e} | {min(t):.0f} / {statistics.median(t):.0f} | "
            f"{min(s):.0f} / {statistics.median(s):.0f} | {min(s) / min(t):.2f} |"
        )


if __name__ == "__main__":
    main()
