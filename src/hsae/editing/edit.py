"""`hsae edit`: paper Algorithm 2 on real images, plus the Python API other stages reuse.

    hsae edit --image face.png --sae runs/x/sae --component 17:3 --kappa 0 --kappa 750

1. Each image is encoded and DDIM-inverted to t once; z_t is cached on disk
   (`hsae.diffusion.inversion_cache`), so re-running with other components or κ skips the inversion.
2. The first resumed U-Net call sees z_t and produces h_t; α = SAE codes of h_t (thresholded by
   eq. 9 with `--threshold-k`), α̃ = α with the chosen component(s) scaled by κ, h̃_t decoded and
   put in place of h_t (`hsae.editing.intervene`), then denoising resumes to an image.
3. A κ sweep is ONE batched resume: z_t is repeated along the batch, one κ per row, plus one
   unedited row ("reference": the plain invert → resume reconstruction every edit is compared to).

Modes (`--mode`): `reconstruction` (the paper: h_t is replaced by dec(α̃), so κ = 1 gives the
SAE-spliced image) and `error_preserving` (h̃ = h + dec(α̃) − dec(α): κ = 1 gives the unedited
image bit for bit). Beyond the paper: `--window N` edits the first N resumed steps, each step's own
h (the paper edits one step), and `--mask r0:r1,c0:c1` limits the change to rows r0..r1-1 and
columns c0..c1-1 of the K×K map (half-open, like Python slices; a bound may be left out, e.g.
`:4,2:`; several masks are united).

Δ = number of H-space neurons (of C·K·K) that the edit changed at the first edited step: h̃(κ)
against h̃(1) of the same mode, i.e. the footprint of the scaled component(s) alone. `delta_vs_h`
counts neurons differing from the raw h_t (in reconstruction mode this includes the SAE's
reconstruction error, so it is close to C·K·K). Pixel change is measured against the reference.

Outputs in --out: one PNG per image and κ, `grid.png` (per image: input | unedited resume | each
κ), `diff.png` (per image: |edited − unedited| per κ, one colour scale for the whole figure),
`edit.json` and `table.md`.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hsae.diffusion.backbone import DiffusionBackbone
from hsae.diffusion.invert import Inversion, resume
from hsae.editing.intervene import (
    MODES,
    Component,
    edit_step_count,
    encode_tokens,
    intervene,
    neurons_changed,
)
from hsae.sae.base import BaseSAE
from hsae.utils.metrics import PIXEL_CHANGE_TOL, pixel_metrics

# (h of the edited rows, variant index of each row) → h̃ of those rows.
RowEdit = Callable[[Tensor, Tensor], Tensor]


# ----- batched resume of several variants of each image --------------------------------------
@dataclass
class VariantRun:
    """Images and h of a batched resume: V edited variants (+ optionally the unedited one)."""

    images: Tensor  # (B, V, 3, H, W) in [-1, 1]
    reference: Tensor | None  # (B, 3, H, W) unedited resume of the same z_t
    h_ref: Tensor  # (B, C, K, K) h_t at the first resumed step, before any edit
    h_first: Tensor  # (B, V, C, K, K) h̃ used at the first edited step


@torch.no_grad()
def resume_variants(
    backbone: DiffusionBackbone,
    inv: Inversion,
    row_edit: RowEdit,
    n_variants: int,
    window: int | str = 1,
    prompt: str = "",
    reference: bool = True,
    progress: bool = False,
) -> VariantRun:
    """Resume every image's z_t n_variants (+1) times in one batch; row_edit sets h̃ per variant.

    Rows are image-major: image b's rows are [reference?, variant 0, …, variant V−1]. The reference
    row's h is never touched, so it is exactly the plain invert → resume of that image.
    """
    window = edit_step_count(window, inv.t_index)
    b, r = inv.z_t.shape[0], n_variants + int(reference)
    variant = torch.arange(r).repeat(b) - int(reference)  # −1 marks reference rows
    edited = variant >= 0
    first: list[Tensor] = []

    def hook(h: Tensor) -> Tensor:
        rows = edited.to(h.device)
        out = h.clone()
        out[rows] = row_edit(h[rows], variant[edited]).to(h)
        if not first:  # the h̃ of the first edited step, for Δ
            first.append(out[rows].detach().clone())
        return out

    z = inv.z_t.repeat_interleave(r, dim=0)
    z0, h_all = resume(
        backbone, z, inv.t_index, inv.grid, prompt, hook, edit_steps=window, progress=progress
    )
    x = backbone.decode(z0)
    x = x.reshape(b, r, *x.shape[1:])
    h_all = h_all.reshape(b, r, *h_all.shape[1:])
    return VariantRun(
        images=x[:, int(reference) :],
        reference=x[:, 0] if reference else None,
        h_ref=h_all[:, 0],
        h_first=first[0].reshape(b, n_variants, *h_all.shape[2:]),
    )


# ----- SAE edits --------------------------------------------------------------------------------
@dataclass
class EditResult:
    """What `edit_batch` returns; B images, V = len(kappas)."""

    kappas: list[float]
    images: Tensor  # (B, V, 3, H, W) in [-1, 1]
    reference: Tensor | None  # (B, 3, H, W) unedited resume
    h_ref: Tensor  # (B, C, K, K)
    h_edit: Tensor  # (B, V, C, K, K) h̃ at the first edited step
    delta: Tensor  # (B, V) neurons changed by the edit (h̃(κ) vs h̃(1), same mode)
    delta_vs_h: Tensor  # (B, V) neurons of h̃(κ) differing from h_t
    alpha: Tensor  # (B, n_components) α of each component before scaling

    @property
    def n_neurons(self) -> int:
        return int(self.h_ref[0].numel())


def sae_row_edit(
    sae: BaseSAE,
    components: Sequence[Component],
    kappas: Sequence[float],
    mode: str = "reconstruction",
    threshold_k: int | None = None,
    mask: Tensor | None = None,
) -> RowEdit:
    """RowEdit scaling `components` by kappas[variant] (see `hsae.editing.intervene.intervene`)."""
    k = torch.tensor([float(v) for v in kappas])

    def edit(h: Tensor, variant: Tensor) -> Tensor:
        return intervene(sae, h, components, k[variant], mode, threshold_k, mask)

    return edit


def _check_edit_args(components: Sequence[Component], kappas: Sequence[float], mode: str) -> None:
    if not components:
        raise ValueError("give at least one --component to edit")
    if not kappas:
        raise ValueError("give at least one --kappa")
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {MODES}, got {mode!r}")
    bad = [v for v in kappas if not math.isfinite(v)]
    if bad:
        raise ValueError(f"--kappa must be finite, got {bad[0]}")


@torch.no_grad()
def edit_batch(
    backbone: DiffusionBackbone,
    sae: BaseSAE,
    inversion: Inversion,
    components: Sequence[Component],
    kappas: Sequence[float],
    mode: str = "reconstruction",
    threshold_k: int | None = None,
    mask: Tensor | None = None,
    window: int | str = 1,
    prompt: str = "",
    reference: bool = True,
    progress: bool = False,
) -> EditResult:
    """Algorithm 2 for every image of `inversion` and every κ, as one batched resume."""
    _check_edit_args(components, kappas, mode)
    sae.eval()
    row_edit = sae_row_edit(sae, components, kappas, mode, threshold_k, mask)
    run = resume_variants(
        backbone, inversion, row_edit, len(kappas), window, prompt, reference, progress
    )
    v = len(kappas)
    base = intervene(sae, run.h_ref, components, 1.0, mode, threshold_k, mask)
    flat_edit = run.h_first.flatten(0, 1)
    delta = neurons_changed(base.repeat_interleave(v, dim=0), flat_edit).reshape(-1, v)
    delta_h = neurons_changed(run.h_ref.repeat_interleave(v, dim=0), flat_edit).reshape(-1, v)
    codes = encode_tokens(sae, run.h_ref, threshold_k)
    alpha = torch.stack([codes[:, c.token, c.latent] for c in components], dim=1)
    return EditResult(
        kappas=[float(x) for x in kappas],
        images=run.images,
        reference=run.reference,
        h_ref=run.h_ref,
        h_edit=run.h_first,
        delta=delta,
        delta_vs_h=delta_h,
        alpha=alpha.float(),
    )


def top_components(
    sae: BaseSAE, h: Tensor, threshold_k: int | None = None, n: int = 5
) -> list[list[tuple[Component, float]]]:
    """The n largest (thresholded) code entries of each image's h: candidates worth editing."""
    codes = encode_tokens(sae, h, threshold_k).detach()
    vals, idx = codes.flatten(1).topk(min(n, codes[0].numel()), dim=1)
    n_lat = codes.shape[-1]
    return [
        [(Component(int(j) // n_lat, int(j) % n_lat), float(a)) for a, j in zip(v, i, strict=True)]
        for v, i in zip(vals, idx, strict=True)
    ]


def warn_inactive(
    res: EditResult,
    components: Sequence[Component],
    sae: BaseSAE,
    k: int | None,
    names: Sequence[str],
) -> None:
    """κ cannot move a component whose α is 0: say so and name the image's strongest ones."""
    for b, name in enumerate(names):
        dead = [str(c) for c, a in zip(components, res.alpha[b], strict=True) if float(a) == 0]
        if dead:
            top = ", ".join(
                f"{c} (α={a:.3g})" for c, a in top_components(sae, res.h_ref[b : b + 1], k)[0]
            )
            print(
                f"note: {name}: α = 0 for {', '.join(dead)} (after thresholding), so κ leaves it "
                f"unchanged; this image's largest components: {top}",
                file=sys.stderr,
            )


# ----- masks, thresholds ------------------------------------------------------------------------
def _bound(text: str, default: int, k: int, spec: str) -> int:
    if text == "":
        return default
    if not re.fullmatch(r"-?\d+", text):
        raise ValueError(f"--mask {spec!r}: {text!r} is not an integer")
    v = int(text)
    return v + k if v < 0 else v


def parse_mask(specs: Sequence[str] | None, k: int) -> Tensor | None:
    """Union of 'r0:r1,c0:c1' boxes (half-open, Python-slice bounds) as a K×K 0/1 tensor."""
    if not specs:
        return None
    mask = torch.zeros(k, k)
    for spec in specs:
        parts = spec.replace(" ", "").split(",")
        if len(parts) != 2 or any(p.count(":") != 1 for p in parts):
            raise ValueError(f"--mask {spec!r}: expected r0:r1,c0:c1 (rows, columns of K×K)")
        (r0, r1), (c0, c1) = (p.split(":") for p in parts)
        rows = (_bound(r0, 0, k, spec), _bound(r1, k, k, spec))
        cols = (_bound(c0, 0, k, spec), _bound(c1, k, k, spec))
        if not all(0 <= a < b <= k for a, b in (rows, cols)):
            raise ValueError(f"--mask {spec!r} selects nothing inside the {k}×{k} map")
        mask[rows[0] : rows[1], cols[0] : cols[1]] = 1
    return mask


# ----- outputs ----------------------------------------------------------------------------------
def kappa_label(kappa: float) -> str:
    return f"{kappa:g}"


def heatmaps(diffs: Tensor) -> Tensor:
    """|Δ| images (N, 3, H, W) → magma heat maps in [-1, 1], one scale for all N."""
    from matplotlib import colormaps

    m = diffs.abs().mean(dim=1)
    m = m / m.max().clamp_min(1e-12)
    rgb = torch.from_numpy(colormaps["magma"](m.cpu().numpy())[..., :3]).float()
    return rgb.permute(0, 3, 1, 2) * 2 - 1


def save_png(image: Tensor, path: Path) -> None:
    """One (3, H, W) image in [-1, 1] as a PNG at its own resolution, atomically."""
    from hsae.utils.viz import save_grid

    save_grid([image[None]], path, scale=1)


def _edit_rows(res: EditResult, inputs: Tensor, names: list[str]) -> list[dict[str, Any]]:
    rows = []
    for b, name in enumerate(names):
        for v, kappa in enumerate(res.kappas):
            ref = res.reference[b] if res.reference is not None else inputs[b]
            rows.append(
                {
                    "image": name,
                    "kappa": kappa,
                    "delta": int(res.delta[b, v]),
                    "delta_frac": float(res.delta[b, v]) / res.n_neurons,
                    "delta_vs_h": int(res.delta_vs_h[b, v]),
                    "alpha": [float(a) for a in res.alpha[b]],
                    "pixel_vs_unedited": pixel_metrics(res.images[b, v], ref),
                    "pixel_vs_input": pixel_metrics(res.images[b, v], inputs[b]),
                }
            )
    return rows


def format_edit_table(doc: dict[str, Any]) -> str:
    n = doc["n_neurons"]
    lines = [
        f"SAE edit ({doc['mode']}): components {', '.join(doc['components'])} scaled by κ; "
        f"t={doc['t']} (timestep {doc['timestep']}), {doc['steps']} DDIM steps, "
        f"window {doc['window']}, threshold k = {doc['threshold_note']}.",
        f"Δ = H-space neurons changed by the edit, of {n}; pixel change against the unedited "
        f"resume (changed = |Δ| > {PIXEL_CHANGE_TOL} in [-1, 1] units).",
        "",
        "| image | κ | α (before) | Δ neurons | Δ % | pixel MSE | PSNR (dB) | pixels changed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        p = r["pixel_vs_unedited"]
        alpha = ", ".join(f"{a:.3g}" for a in r["alpha"])
        lines.append(
            f"| {r['image']} | {kappa_label(r['kappa'])} | {alpha} | {r['delta']} | "
            f"{100 * r['delta_frac']:.2f} | {p['mse']:.3g} | {p['psnr_db']:.1f} | "
            f"{100 * p['changed_frac']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def write_edit_outputs(
    out: Path, res: EditResult, inputs: Tensor, names: list[str], info: dict[str, Any]
) -> dict[str, Any]:
    """PNG per image and κ, grid.png, diff.png, edit.json, table.md; returns the JSON document."""
    from hsae.utils.io import atomic_write_json, atomic_write_text
    from hsae.utils.jsonable import jsonable
    from hsae.utils.viz import save_grid

    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Any] = {"images": {}}
    for b, name in enumerate(names):
        files = {}
        if res.reference is not None:
            save_png(res.reference[b], out / f"{name}_unedited.png")
            files["unedited"] = f"{name}_unedited.png"
        for v, kappa in enumerate(res.kappas):
            fname = f"{name}_kappa{kappa_label(kappa)}.png"
            save_png(res.images[b, v], out / fname)
            files[kappa_label(kappa)] = fname
        paths["images"][name] = files
    ref = res.reference if res.reference is not None else inputs
    rows = [torch.cat([inputs[b, None], ref[b, None], res.images[b]]) for b in range(len(names))]
    save_grid(rows, out / "grid.png")
    diffs = res.images - ref[:, None].to(res.images)
    heat = heatmaps(diffs.flatten(0, 1)).reshape(diffs.shape)
    save_grid([heat[b] for b in range(len(names))], out / "diff.png")
    paths.update({"grid": "grid.png", "diff": "diff.png", "table": "table.md"})
    cols = ["input", "unedited resume" if res.reference is not None else "input"]
    doc = {
        **info,
        "kappas": res.kappas,
        "n_neurons": res.n_neurons,
        "grid_columns": [*cols, *(f"kappa={kappa_label(k)}" for k in res.kappas)],
        "diff_columns": [f"|kappa={kappa_label(k)} - unedited|" for k in res.kappas],
        "rows": _edit_rows(res, inputs, names),
        "paths": paths,
    }
    atomic_write_json(out / "edit.json", jsonable(doc))
    atomic_write_text(out / "table.md", format_edit_table(doc))
    return doc
