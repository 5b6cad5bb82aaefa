"""`hsae interpolate`: walk from image A to image B in SAE space (paper §4.4).

    hsae interpolate --a a.png --b b.png --sae runs/x/sae --frames 8

Both images are inverted (cached). Frame s ∈ [0, 1] resumes from z_t(s) with h_t replaced by
dec(α_s), α_s = (1 − s)·α_a + s·α_b, the (thresholded) codes of A's and B's h at the same step.

Which z_t a frame resumes from (`--z-interp`):
- `slerp` (default): spherical interpolation of z_a and z_b. At t = 0.7 z_t is mostly noise, and
  a straight line between two noise samples passes through low-norm points the model never saw
  (washed-out frames); slerp keeps the norm. The image's low-level content then moves with z_t
  while the SAE interpolation drives the bottleneck.
- `lerp`: straight line (for comparison).
- `a`: every frame resumes from z_a, so only the h replacement moves the image (Kwon et al.'s
  single-step setting); frames then show how far one H-space step alone carries it.

A's and B's own plain resumes run in the same batch; with `--window N` each of the first N steps
replaces h with the interpolation of *that step's* h of A and B. `--h-baseline` adds a second row
interpolating raw h linearly. Note the SAE decoder is affine, so dec(α_s) is exactly the linear
interpolation of the two (thresholded) reconstructions: the SAE path differs from the raw-h path
by the reconstruction error and by thresholding, not by a non-linear route.

Outputs in --out: `grid.png` (input A | resume A | frames | resume B | input B; second row the raw-h
frames with --h-baseline), `interpolate.gif` (the SAE frames forth and back), `interpolate.json`
(s values, per-frame MSE to the plain resumes of A and B, consecutive-frame MSE) and `table.md`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hsae.diffusion.backbone import DiffusionBackbone
from hsae.diffusion.invert import Inversion, resume
from hsae.editing.intervene import decode_tokens, edit_step_count, encode_tokens
from hsae.sae.base import BaseSAE
from hsae.utils.metrics import mse

Z_INTERP = ("slerp", "lerp", "a")


def slerp(a: Tensor, b: Tensor, s: Tensor) -> Tensor:
    """Spherical interpolation of a and b (same shape) at each s, shape (len(s), *a.shape).

    Falls back to lerp when a and b are (anti)parallel, where the great circle is undefined.
    """
    fa, fb = a.flatten().double(), b.flatten().double()
    cos = torch.dot(fa, fb) / (fa.norm() * fb.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1, 1))
    s = s.double()[:, None]
    if float(omega.sin().abs()) < 1e-6:
        out = (1 - s) * fa + s * fb
    else:
        out = (torch.sin((1 - s) * omega) * fa + torch.sin(s * omega) * fb) / omega.sin()
    return out.reshape(len(s), *a.shape).to(a.dtype)


def interpolate_z(z_a: Tensor, z_b: Tensor, s: Tensor, how: str = "slerp") -> Tensor:
    if how == "slerp":
        return slerp(z_a, z_b, s)
    if how == "lerp":
        w = s.to(z_a).reshape(-1, *[1] * z_a.ndim)
        return (1 - w) * z_a + w * z_b
    if how == "a":
        return z_a.expand(len(s), *z_a.shape).clone()
    raise ValueError(f"--z-interp must be one of {Z_INTERP}, got {how!r}")


@dataclass
class Interpolation:
    s: Tensor  # (n,)
    frames: Tensor  # (n, 3, H, W) SAE-space interpolation
    ends: Tensor  # (2, 3, H, W) plain resumes of A and B
    h_frames: Tensor | None  # (n, 3, H, W) raw-h interpolation (h_baseline)


@torch.no_grad()
def interpolate_pair(
    backbone: DiffusionBackbone,
    sae: BaseSAE,
    inv: Inversion,
    n_frames: int,
    threshold_k: int | None = None,
    window: int | str = 1,
    prompt: str = "",
    z_interp: str = "slerp",
    h_baseline: bool = False,
    progress: bool = False,
) -> Interpolation:
    """Frames from A = inv row 0 to B = row 1, one batched resume (see the module docstring)."""
    if inv.z_t.shape[0] != 2:
        raise ValueError(f"interpolate_pair needs an inversion of 2 images, got {len(inv.z_t)}")
    if n_frames < 2:
        raise ValueError(f"--frames must be >= 2 (both end points), got {n_frames}")
    window = edit_step_count(window, inv.t_index)
    sae.eval()
    s = torch.linspace(0, 1, n_frames)
    z_s = interpolate_z(inv.z_t[0], inv.z_t[1], s, z_interp)
    z = torch.cat([inv.z_t, z_s, z_s] if h_baseline else [inv.z_t, z_s])

    def hook(h: Tensor) -> Tensor:  # rows: A, B, SAE frames, (raw-h frames)
        codes = encode_tokens(sae, h[:2], threshold_k)  # (2, M, L)
        w = s.to(codes)[:, None, None]
        out = h.clone()
        out[2 : 2 + n_frames] = decode_tokens(sae, (1 - w) * codes[0] + w * codes[1], h)
        if h_baseline:
            wh = s.to(h)[:, None, None, None]
            out[2 + n_frames :] = (1 - wh) * h[0] + wh * h[1]
        return out

    z0, _ = resume(backbone, z, inv.t_index, inv.grid, prompt, hook, window, progress)
    x = backbone.decode(z0)
    h_frames = x[2 + n_frames :] if h_baseline else None
    return Interpolation(s=s, frames=x[2 : 2 + n_frames], ends=x[:2], h_frames=h_frames)


# ----- outputs ----------------------------------------------------------------------------------
def frame_metrics(res: Interpolation, frames: Tensor) -> list[dict[str, float]]:
    """Per frame: MSE to A's and B's plain resumes and to the previous frame."""
    rows = []
    for i, f in enumerate(frames):
        rows.append(
            {
                "s": float(res.s[i]),
                "mse_to_a": mse(f, res.ends[0]),
                "mse_to_b": mse(f, res.ends[1]),
                "mse_to_prev": mse(f, frames[i - 1]) if i else 0.0,
            }
        )
    return rows


def save_gif(frames: Tensor, path: Path, scale: int = 4, ms: int = 150) -> None:
    """Frames forth and back as a looping GIF, upscaled for viewing, written atomically."""
    from PIL import Image

    from hsae.utils.io import atomic_write_bytes
    from hsae.utils.viz import to_uint8

    arrays = list(to_uint8(frames))
    seq = arrays + arrays[-2:0:-1]  # ping-pong without repeating the end frames
    pics = [Image.fromarray(a) for a in seq]
    pics = [p.resize((p.width * scale, p.height * scale), Image.Resampling.NEAREST) for p in pics]
    buf = io.BytesIO()
    pics[0].save(buf, format="GIF", save_all=True, append_images=pics[1:], duration=ms, loop=0)
    atomic_write_bytes(path, buf.getvalue())


def format_table(doc: dict[str, Any]) -> str:
    lines = [
        f"SAE-space interpolation {doc['a']} → {doc['b']}: {len(doc['s'])} frames, z_t by "
        f"{doc['z_interp']}, t={doc['t']}, {doc['steps']} DDIM steps, window {doc['window']}, "
        f"threshold k = {doc['threshold_note']}.",
        "",
        "| path | s | MSE to resume A | MSE to resume B | MSE to previous frame |",
        "|---|---|---|---|---|",
    ]
    for path, rows in doc["frames"].items():
        for r in rows:
            lines.append(
                f"| {path} | {r['s']:.3f} | {r['mse_to_a']:.3g} | {r['mse_to_b']:.3g} | "
                f"{r['mse_to_prev']:.3g} |"
            )
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, res: Interpolation, inputs: Tensor, info: dict) -> dict[str, Any]:
    from hsae.utils.io import atomic_write_json, atomic_write_text
    from hsae.utils.viz import save_grid

    def row(frames: Tensor) -> Tensor:
        return torch.cat([inputs[:1], res.ends[:1], frames, res.ends[1:], inputs[1:]])

    rows = [row(res.frames)] + ([row(res.h_frames)] if res.h_frames is not None else [])
    save_grid(rows, out / "grid.png")
    save_gif(res.frames, out / "interpolate.gif")
    frames = {"sae": frame_metrics(res, res.frames)}
    if res.h_frames is not None:
        frames["raw h"] = frame_metrics(res, res.h_frames)
    columns = ["input A", "resume A", *(f"s={v:.3f}" for v in res.s), "resume B", "input B"]
    doc = {
        **info,
        "s": [float(v) for v in res.s],
        "grid_columns": columns,
        "grid_rows": list(frames),
        "frames": frames,
        "paths": {"grid": "grid.png", "gif": "interpolate.gif", "table": "table.md"},
    }
    atomic_write_json(out / "interpolate.json", doc)
    atomic_write_text(out / "table.md", format_table(doc))
    return doc


# ----- command ----------------------------------------------------------------------------------
