"""Where in the noise schedule does a model lose an attribute?

Labelled images are noised to t (a fraction of T, as `--t` elsewhere) with fresh Gaussian noise
and denoised back by the model; a classifier then reads each attribute again. Per attribute and t:

- kept   = P(read as present | it was present),
- gained = P(read as present | it was absent),
- implied frequency = p·kept + (1 − p)·gained, where p is the attribute's frequency in the data:
  what the model would produce if it took over from the data at t.

A perfect model keeps the implied frequency at p for every t (its reverse process preserves the
data's marginals); the t at which it departs from p is where the model's drawing of that
attribute goes wrong. The sample check only says *that* a drawing fails; this says at which t,
which is how the sizes of the toyfaces eyes and mouths were chosen (docs/design.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from hsae.diffusion.backbone import DiffusionBackbone
from hsae.diffusion.invert import DDIMGrid, ddim_grid, resume, sampling_clip
from hsae.toy.classifier import AttributeClassifier, to_model_input


@dataclass(frozen=True)
class SurvivalRow:
    attribute: str
    t_frac: float
    timestep: int
    kept: float
    gained: float
    data_frequency: float
    implied_frequency: float
    n_present: int
    n_absent: int
    subset: str = "all"

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def renoise_denoise(
    backbone: DiffusionBackbone,
    images: torch.Tensor,
    grid: DDIMGrid,
    t_index: int,
    eta: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Images in [-1, 1] → noised to grid.timesteps[t_index] → denoised to t = 0, in [-1, 1]."""
    z0 = backbone.encode(images.to(backbone.device, backbone.dtype))
    a = grid.alphas[t_index]
    noise = torch.randn(z0.shape, generator=generator, dtype=z0.dtype).to(z0.device)
    z_t = a**0.5 * z0 + (1 - a) ** 0.5 * noise
    out, _ = resume(
        backbone, z_t, t_index, grid, clip_x0=sampling_clip(backbone), eta=eta, generator=generator
    )
    return backbone.decode(out).clamp(-1, 1)


def _as_uint8(images: torch.Tensor) -> torch.Tensor:
    # Judge what a saved image would hold, as the model check (toy.model_check) does.
    return ((images.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def attribute_survival(
    backbone: DiffusionBackbone,
    classifier: AttributeClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    data_frequency: dict[str, float],
    t_fracs: list[float],
    steps: int = 50,
    spacing: str | None = "trailing",
    eta: float = 1.0,
    seed: int = 0,
    batch: int = 100,
    by: str | None = None,
) -> list[SurvivalRow]:
    """Rows for every (t, classifier attribute); images uint8 (N, 3, H, W), labels bool (N, A).

    The same noise seeds serve every t, so curves over t differ by the noise level only. `by`
    names an attribute whose two values each get their own rows too (subset "Pale_Skin=1" …),
    to see *where* an attribute is lost; their implied frequency still uses the whole data's p.
    """
    names = classifier.attribute_names
    if by is not None and by not in names:
        raise ValueError(f"by={by!r} is not one of the classifier's attributes {names}")
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(
            f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    if labels.shape != (len(images), len(names)):
        raise ValueError(
            f"labels must be (N, {len(names)}) for the classifier's attributes, "
            f"got {tuple(labels.shape)}"
        )
    missing = sorted(set(names) - set(data_frequency))
    if missing:
        raise ValueError(f"no data frequency for attributes {missing}")
    grid = ddim_grid(backbone, steps, spacing)
    rows: list[SurvivalRow] = []
    for frac in tqdm(t_fracs, desc="t", unit="t"):
        i = grid.index_for(frac)
        g = torch.Generator().manual_seed(seed)
        preds = []
        for b in range(0, len(images), batch):
            with torch.no_grad():
                x = renoise_denoise(
                    backbone, to_model_input(images[b : b + batch]), grid, i, eta, g
                )
            preds.append(classifier.predict(_as_uint8(x)).bool())
        pred, truth, step = torch.cat(preds), labels.bool(), grid.timesteps[i]
        rows += _rows(pred, truth, names, data_frequency, frac, step)
        for value in (True, False) if by is not None else ():
            assert by is not None  # narrowed for the type checker: the loop is empty otherwise
            m = truth[:, names.index(by)] == value
            subset = f"{by}={int(value)}"
            rows += _rows(pred[m], truth[m], names, data_frequency, frac, step, subset)
    return rows


def _rows(
    pred: torch.Tensor,
    truth: torch.Tensor,
    names: list[str],
    data_frequency: dict[str, float],
    frac: float,
    timestep: int,
    subset: str = "all",
) -> list[SurvivalRow]:
    rows = []
    for j, name in enumerate(names):
        present, absent = truth[:, j], ~truth[:, j]
        kept = pred[present, j].float().mean().item() if present.any() else float("nan")
        gained = pred[absent, j].float().mean().item() if absent.any() else float("nan")
        p = float(data_frequency[name])
        rows.append(
            SurvivalRow(
                name,
                frac,
                int(timestep),
                kept,
                gained,
                p,
                p * kept + (1 - p) * gained,
                int(present.sum()),
                int(absent.sum()),
                subset,
            )
        )
    return rows


def balanced_subset(labels: torch.Tensor, column: int, n: int) -> torch.Tensor:
    """Indices of up to n images with attribute `column` present and n with it absent."""
    present = torch.nonzero(labels[:, column]).flatten()[:n]
    absent = torch.nonzero(~labels[:, column].bool()).flatten()[:n]
    return torch.cat([present, absent])


def format_table(rows: list[SurvivalRow], attribute: str) -> str:
    """`attribute`'s rows, one per t and subset: kept, gained, implied and data frequency."""
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


__all__ = [
    "SurvivalRow",
    "attribute_survival",
    "balanced_subset",
    "format_table",
    "renoise_denoise",
]
