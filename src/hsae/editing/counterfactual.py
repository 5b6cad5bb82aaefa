"""`hsae counterfactual`: counterfactual consistency of SAE edits (paper §4.6.1).

An edit is localised if it can be undone. For each image x:

1. invert x (cached) and resume twice in one batch: unedited (x_rec, the plain invert → resume
   reconstruction) and with the component(s) scaled by κ (x_edit);
2. invert x_edit again, compute the SAE codes of *its* h_t and scale the same component(s) by 1/κ
   (the paper: "compute the SAE representation of the modified image and divide component k by
   κ"), resume: x_back.

Reported per method, as means over the images (per image in the JSON): the edit's size
MSE(x_edit, x_rec) (a method that edits nothing restores trivially, so read the rest against
it), and MSE / PSNR / SSIM of x_back against the input x and against x_rec. The floor is x_rec
against x (inversion error), also reported.

Baselines: `--attribute A` adds the supervised raw-H-space edit of the unconditional toy: the
mean-difference direction d of A (`hsae.editing.directions.mean_difference` on the store's train
split)
applied as h + s·d, then removed as h − s·d after re-inversion (`--baseline-scale s`, default 1:
the average image without A moved onto the average with it). For conditional models
`--edit-prompt P` adds the paper's text-based baseline: resume with P instead of --prompt, then
invert the result with P and resume with --prompt.

SSIM is the usual Gaussian-window SSIM (Wang et al. 2004) from scikit-image, see
`hsae.utils.metrics`.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hsae.diffusion.backbone import DiffusionBackbone
from hsae.diffusion.invert import Inversion, invert, resume
from hsae.editing.edit import edit_batch, parse_mask, resume_variants
from hsae.editing.intervene import Component
from hsae.editing.setup import EditSetup, load_images, warn_timestep
from hsae.sae.base import BaseSAE
from hsae.utils.metrics import image_metrics


# ----- the experiment ---------------------------------------------------------------------------
@dataclass
class Counterfactual:
    """One method's images for a batch: edited, then restored after re-inversion."""

    edited: Tensor  # (B, 3, H, W)
    restored: Tensor  # (B, 3, H, W)


def _reinvert(backbone: DiffusionBackbone, x: Tensor, inv: Inversion, prompt: str) -> Inversion:
    """Invert an edited image on the same grid and to the same timestep as the original."""
    steps = len(inv.grid.timesteps)
    t = inv.timestep / inv.grid.num_train_timesteps
    out = invert(backbone, backbone.encode(x), t, steps, prompt)
    if out.t_index != inv.t_index:  # index_for is a nearest-timestep search: it must agree
        raise RuntimeError(f"re-inversion reached index {out.t_index}, not {inv.t_index}")
    return out


@torch.no_grad()
def sae_counterfactual(
    backbone: DiffusionBackbone,
    sae: BaseSAE,
    inv: Inversion,
    components: Sequence[Component],
    kappa: float,
    mode: str = "reconstruction",
    threshold_k: int | None = None,
    mask: Tensor | None = None,
    window: int | str = 1,
    prompt: str = "",
) -> tuple[Tensor, Counterfactual]:
    """(x_rec, SAE edit with κ and its undoing with 1/κ) for the images of `inv`."""
    if kappa == 0 or not math.isfinite(kappa):
        raise ValueError(f"--kappa must be finite and non-zero (it is undone by 1/κ), got {kappa}")
    args = (mode, threshold_k, mask, window, prompt)
    first = edit_batch(backbone, sae, inv, components, [kappa], *args)
    assert first.reference is not None
    edited = first.images[:, 0]
    inv2 = _reinvert(backbone, edited, inv, prompt)
    back = edit_batch(backbone, sae, inv2, components, [1.0 / kappa], *args, reference=False)
    return first.reference, Counterfactual(edited, back.images[:, 0])


@torch.no_grad()
def direction_counterfactual(
    backbone: DiffusionBackbone,
    inv: Inversion,
    direction: Tensor,
    scale: float = 1.0,
    window: int | str = 1,
    prompt: str = "",
) -> Counterfactual:
    """Baseline: h + s·d, re-invert, h − s·d."""

    def shift(s: float):  # a RowEdit adding s·d to every edited row
        return lambda h, _v: h + s * direction.to(h)

    run = resume_variants(backbone, inv, shift(scale), 1, window, prompt, reference=False)
    edited = run.images[:, 0]
    inv2 = _reinvert(backbone, edited, inv, prompt)
    back = resume_variants(backbone, inv2, shift(-scale), 1, window, prompt, reference=False)
    return Counterfactual(edited, back.images[:, 0])


@torch.no_grad()
def text_counterfactual(
    backbone: DiffusionBackbone, inv: Inversion, prompt: str, edit_prompt: str
) -> Counterfactual:
    """Text baseline (conditional models): resume with edit_prompt, invert with it, resume with
    the original prompt."""
    z, _ = resume(backbone, inv.z_t, inv.t_index, inv.grid, edit_prompt)
    edited = backbone.decode(z)
    inv2 = _reinvert(backbone, edited, inv, edit_prompt)
    z_back, _ = resume(backbone, inv2.z_t, inv2.t_index, inv2.grid, prompt)
    return Counterfactual(edited, backbone.decode(z_back))


# ----- summary ----------------------------------------------------------------------------------
def method_metrics(x: Tensor, x_rec: Tensor, cf: Counterfactual) -> dict[str, Any]:
    """Per-image metrics of one method: edit size, restored vs input, restored vs x_rec."""
    return {
        "edit_vs_rec": image_metrics(cf.edited, x_rec),
        "restored_vs_input": image_metrics(cf.restored, x),
        "restored_vs_rec": image_metrics(cf.restored, x_rec),
    }


def merge_metrics(acc: dict[str, Any], new: dict[str, Any]) -> None:
    """Append per-image lists of `new` to those of `acc` (same nesting)."""
    for k, v in new.items():
        if isinstance(v, dict):
            merge_metrics(acc.setdefault(k, {}), v)
        else:
            acc.setdefault(k, []).extend(v)


def mean_metrics(tree: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out[k] = mean_metrics(v)
        else:  # an exactly restored image has PSNR inf, and so then has the mean
            out[k] = float(np.mean(v))
    return out


def format_table(doc: dict[str, Any]) -> str:
    floor = doc["mean"]["rec_vs_input"]
    lines = [
        f"Counterfactual consistency (§4.6.1) on {len(doc['images'])} images, t={doc['t']}, "
        f"{doc['steps']} DDIM steps: edit, re-invert the edited image, undo, resume.",
        f"Inversion floor (plain invert → resume vs input): MSE {floor['mse']:.3g}, "
        f"PSNR {floor['psnr_db']:.1f} dB, SSIM {floor['ssim']:.3f}.",
        "",
        "| method | edit size (MSE vs rec) | restored vs input: MSE | PSNR | SSIM "
        "| restored vs rec: MSE | PSNR | SSIM |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in doc["mean"]["methods"].items():
        a, b = m["restored_vs_input"], m["restored_vs_rec"]
        lines.append(
            f"| {name} | {m['edit_vs_rec']['mse']:.3g} | {a['mse']:.3g} | {a['psnr_db']:.1f} | "
            f"{a['ssim']:.3f} | {b['mse']:.3g} | {b['psnr_db']:.1f} | {b['ssim']:.3f} |"
        )
    return "\n".join(lines) + "\n"


# ----- command ----------------------------------------------------------------------------------


def load_inputs(args: argparse.Namespace, size: int) -> tuple[Tensor, list[str]]:
    from hsae.data.images import ImageDataset

    if args.image:
        return load_images(args.image, size)
    if args.data is None:
        raise ValueError("give --image PATH ... or --data DIR (held-out images, --split test)")
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    ds = ImageDataset(args.data, size, split=args.split, limit=args.n)
    return torch.stack([ds[i][0] for i in range(len(ds))]), ds.ids


def prepare_baselines(args: argparse.Namespace, setup: EditSetup) -> dict[str, Any]:
    """What the chosen baselines need, checked before any image is inverted."""
    out: dict[str, Any] = {}
    if args.attribute is not None:
        from hsae.editing.directions import mean_difference

        if setup.store is None:
            raise ValueError("--attribute needs --store (the labelled activation store)")
        out["direction"] = mean_difference(setup.store, args.attribute)
    if args.edit_prompt is not None:
        if not setup.backbone.is_conditional:
            raise ValueError(
                f"--edit-prompt needs a text-conditional model; {setup.backbone.model_id!r} is "
                "unconditional (use --attribute for the mean-difference baseline)"
            )
        out["edit_prompt"] = args.edit_prompt
    return out


def run_batch(
    args: argparse.Namespace, setup: EditSetup, x: Tensor, comps: list[Component], base: dict
) -> tuple[Tensor, dict[str, Counterfactual]]:
    inv = setup.invert(x)
    warn_timestep(setup, inv)
    k_resolved = setup.threshold_k(inv)  # recorded; the codes stay raw unless asked
    k = k_resolved if args.threshold_codes else None
    mask = parse_mask(args.mask, setup.sae.cfg.spatial)
    opts = (args.mode, k, mask, args.window, setup.prompt)
    x_rec, cf = sae_counterfactual(setup.backbone, setup.sae, inv, comps, args.kappa, *opts)
    methods = {f"SAE {'+'.join(map(str, comps))} κ={args.kappa:g}": cf}
    if "direction" in base:
        name = f"mean-difference {args.attribute} s={args.baseline_scale:g}"
        methods[name] = direction_counterfactual(
            setup.backbone, inv, base["direction"], args.baseline_scale, args.window, setup.prompt
        )
    if "edit_prompt" in base:
        methods[f"text: {base['edit_prompt']!r}"] = text_counterfactual(
            setup.backbone, inv, setup.prompt, base["edit_prompt"]
        )
    return x_rec, methods
