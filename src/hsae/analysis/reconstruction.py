"""Evaluation stage (paper §4.3.2, Table 2): how well each method reconstructs unseen h.

Reconstruction metrics, over the eval rows (N images, D = C·K·K values each), h and ĥ = model(h):

    EV     = 1 − Σ_i Σ_d (h_id − ĥ_id)² / Σ_i Σ_d (h_id − μ_d)²,  μ_d = (1/N) Σ_i h_id
             (the residual sum of squares over the total sum of squares around the per-dimension
             mean of the eval set itself: predicting that mean scores exactly 0; pooled over all
             dims, so high-variance dims weigh more, as in sklearn's variance_weighted r2_score)
    cosine = (1/N) Σ_i cos(h_i, ĥ_i) on the flattened D-vectors (0 for a zero vector)
    MSE    = Σ (h − ĥ)² / (N·D)     MAE = Σ |h − ĥ| / (N·D)       (per element)

Everything streams over batches of the store: sums are accumulated in float64 and the per-dim
mean/variance use Chan's parallel merge, so no full load and no Σh² − Nμ² cancellation.

Code statistics: `active_per_image` (non-zero code values per image, all tokens together: the
"budget" axis of the EV plot), `l0` (non-zero latents per token, the trainer's L0), `dead_frac`
(latents never non-zero on the eval set) and `sparsity` (fraction of zero code values).

Thresholding (§3.3) applies `threshold_codes` to `codes_as_tokens(codes)` before decoding; k is
chosen on a train-split sample with `choose_k_for_sparsity(target=0.95)` unless given.
"""

from __future__ import annotations

import io
import math
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hsae.sae import BaseSAE, threshold_codes
from hsae.sae.selection import (
    DENSE_ARCHITECTURES,
    TARGET_SPARSITY,
    check_compatible,
    choose_threshold_k,
    is_sparse,
    train_sample_rows,
)
from hsae.sae.threshold import codes_as_tokens
from hsae.utils.jsonable import jsonable
from hsae.utils.metrics import mse, psnr
from hsae.utils.splits import split_rows

EV_PLOT_FLOOR = -1.0
TABLE_FILE, METRICS_FILE, PLOT_FILE = "table.md", "metrics.json", "ev_vs_budget.png"


# ----- reconstruction metrics ---------------------------------------------------------------------
@dataclass
class ReconAccumulator:
    """Streaming sums for EV / cosine / MSE / MAE; `update` per batch, `result` at the end."""

    n: int = 0
    mean: np.ndarray | None = None  # per-dim running mean of h, float64 (D,)
    m2: np.ndarray | None = None  # per-dim Σ (h − mean)², float64 (D,)
    sse: float = 0.0
    sae: float = 0.0  # Σ |h − ĥ|
    cos_sum: float = 0.0

    def update(self, h: Tensor | np.ndarray, h_hat: Tensor | np.ndarray) -> None:
        x = torch.as_tensor(h).detach().reshape(len(h), -1).double().cpu()
        y = torch.as_tensor(h_hat).detach().reshape(len(h_hat), -1).double().cpu()
        if x.shape != y.shape:
            raise ValueError(f"h {tuple(x.shape)} and h_hat {tuple(y.shape)} differ in shape")
        if len(x) == 0:
            return
        diff = x - y
        self.sse += float(diff.pow(2).sum())
        self.sae += float(diff.abs().sum())
        self.cos_sum += float(torch.nn.functional.cosine_similarity(x, y, dim=1, eps=1e-12).sum())
        self._merge_moments(x.numpy())

    def _merge_moments(self, x: np.ndarray) -> None:
        # Chan et al.: combine (n, mean, M2) of the batch with the running ones, per dimension.
        nb, mb = len(x), x.mean(axis=0)
        m2b = ((x - mb) ** 2).sum(axis=0)
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        if x.shape[1] != len(self.mean):
            raise ValueError(
                f"batch has {x.shape[1]} values per image, earlier ones had {len(self.mean)}"
            )
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta**2 * (self.n * nb / n)
        self.n = n

    def result(self) -> dict[str, float]:
        if self.n == 0 or self.m2 is None:
            raise ValueError("no images were evaluated")
        n_el = self.n * len(self.m2)
        sst = float(self.m2.sum())
        ev = 1.0 - self.sse / sst if sst > 0 else (1.0 if self.sse == 0 else -math.inf)
        return {
            "ev": ev,
            "cosine": self.cos_sum / self.n,
            "mse": self.sse / n_el,
            "mae": self.sae / n_el,
            "n_images": self.n,
        }


def reconstruction_metrics(h: Tensor | np.ndarray, h_hat: Tensor | np.ndarray) -> dict[str, float]:
    """EV, cosine, MSE, MAE of ĥ against h (both (N, ...)), as defined in the module docstring."""
    acc = ReconAccumulator()
    acc.update(h, h_hat)
    return acc.result()


# ----- code statistics ----------------------------------------------------------------------------
@dataclass
class CodeAccumulator:
    """Streaming L0 / dead-latent / sparsity counts over code batches (B, *token_axes, L)."""

    n_images: int = 0
    n_values: int = 0
    n_active: int = 0
    ever_active: Tensor | None = None  # (L,) bool
    per_image: list[np.ndarray] = field(default_factory=list)

    def update(self, codes: Tensor) -> None:
        tok = codes_as_tokens(codes.detach())
        active = tok != 0
        per_image = active.flatten(1).sum(1)
        self.per_image.append(per_image.cpu().numpy())
        self.n_images += tok.shape[0]
        self.n_values += tok.numel()
        self.n_active += int(per_image.sum())
        seen = active.any(dim=1).any(dim=0).cpu()
        self.ever_active = seen if self.ever_active is None else self.ever_active | seen

    def result(self) -> dict[str, float]:
        if self.ever_active is None or self.n_values == 0:
            raise ValueError("no codes were seen")
        n_latents = len(self.ever_active)
        n_tokens = self.n_values // n_latents
        return {
            "active_per_image": self.n_active / self.n_images,
            "l0": self.n_active / n_tokens,
            "dead_frac": 1.0 - float(self.ever_active.float().mean()),
            "sparsity": 1.0 - self.n_active / self.n_values,
            "n_latents": n_latents,
            "tokens_per_image": n_tokens // self.n_images,
        }


def code_stats(codes: Tensor) -> dict[str, float]:
    """L0 per token, active values per image, dead-latent fraction and sparsity of one batch."""
    acc = CodeAccumulator()
    acc.update(codes)
    return acc.result()


# ----- evaluating one model on store rows ---------------------------------------------------------


def encode_decode(
    model: BaseSAE, h: Tensor, threshold_k: int | None = None, image_index: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(ĥ, codes) for h, with the codes thresholded (eq. 9) before decoding if k is given."""
    codes = model.encode(h, image_index)
    if threshold_k is not None:
        codes = threshold_codes(codes_as_tokens(codes), threshold_k).reshape(codes.shape)
    return model.decode(codes), codes


@torch.no_grad()
def evaluate_model(
    model: BaseSAE,
    store: Any,
    indices: np.ndarray,
    batch: int = 64,
    threshold_k: int | None = None,
    image_index: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics of `model` on store rows `indices`, read `batch` images at a time.

    image_index (aligned with indices) is only for rows the SAE was trained on; unseen rows use
    None (the channel-aware SAE's test-time context). Returns the reconstruction metrics, the code
    statistics and `active_values` (non-zero codes of each image, in `indices` order).
    """
    model.eval()
    check_compatible(model, store)
    dtype = model.W_enc.dtype
    recon, stats = ReconAccumulator(), CodeAccumulator()
    indices = np.asarray(indices, dtype=np.int64)
    for start in range(0, len(indices), batch):
        rows = indices[start : start + batch]
        h = torch.from_numpy(np.asarray(store[rows])).to(dtype)
        idx = None if image_index is None else torch.as_tensor(image_index[start : start + batch])
        dev = model.W_enc.device
        idx = None if idx is None else idx.to(dev)
        h_hat, codes = encode_decode(model, h.to(dev), threshold_k, idx)
        recon.update(h, h_hat.cpu())
        stats.update(codes.cpu())
    out: dict[str, Any] = {**recon.result(), **stats.result()}
    out["active_values"] = np.concatenate(stats.per_image).astype(int).tolist()
    return out


# ----- the Table 2 protocol -----------------------------------------------------------------------


def method_row(
    key: str, name: str, model: BaseSAE, metrics: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """One table row: `key` names the model in `models`, `name` the row (raw or thresholded)."""
    cfg = model.cfg
    active = np.asarray(metrics.get("active_values", [0]))
    return {
        "method": name,
        "model_key": key,
        "architecture": cfg.architecture,
        "n_latents": cfg.n_latents,
        "l1_coeff": cfg.l1_coeff if is_sparse(model) else None,
        **extra,
        **metrics,
        "active_values_min": int(active.min()),
        "active_values_median": float(np.median(active)),
        "active_values_max": int(active.max()),
    }


def evaluate_run(
    store: Any,
    models: Mapping[str, BaseSAE],
    split: str = "test",
    k_for_threshold: int | str | None = "auto",
    batch: int = 64,
    target: float = TARGET_SPARSITY,
    seed: int = 0,
    k_store: Any = None,
) -> list[dict[str, Any]]:
    """One row per model on `split` (raw codes), plus a thresholded row for each sparse SAE.

    k_for_threshold: "auto" (per SAE, `choose_threshold_k` on a train sample of `k_store`, default
    `store`), an int (the same k for every SAE) or None (no thresholded rows).
    """
    rows_idx = split_rows(store, split)
    k_store = store if k_store is None else k_store
    sample = train_sample_rows(k_store, seed=seed) if k_for_threshold == "auto" else None
    out: list[dict[str, Any]] = []
    for name, model in models.items():
        check_compatible(model, store, name)
        base = evaluate_model(model, store, rows_idx, batch)
        out.append(method_row(name, name, model, base, thresholded=False, threshold_k=None))
        if k_for_threshold is None or not is_sparse(model):
            continue
        extra: dict[str, Any] = {"thresholded": True}
        if sample is not None:
            k, reached = choose_threshold_k(model, k_store, sample, target)
            extra.update(k_target_sparsity=target, k_sample_sparsity=reached)
        else:
            k = int(k_for_threshold)
        extra["threshold_k"] = k
        m = evaluate_model(model, store, rows_idx, batch, threshold_k=k)
        out.append(method_row(name, f"{name} thresholded k={k}", model, m, **extra))
    return out


# ----- spliced fidelity ---------------------------------------------------------------------------
def _pix(a: Tensor, b: Tensor, tag: str) -> dict[str, float]:
    err = mse(a, b.to(a))
    return {f"mse_{tag}": err, f"psnr_{tag}": psnr(err)}


def sae_edit(model: BaseSAE, threshold_k: int | None = None) -> Callable[[Tensor], Tensor]:
    """h → decode(encode(h)) (thresholded if k is given), as an H-space edit for `resume`."""
    model.eval()

    def edit(h: Tensor) -> Tensor:
        return encode_decode(model, h.to(model.W_enc.dtype), threshold_k)[0]

    return edit


@torch.no_grad()
def spliced_fidelity_many(
    backbone: Any,
    images: Tensor,
    edits: Mapping[str, Callable[[Tensor], Tensor]],
    t: float = 0.7,
    steps: int = 50,
    prompt: str = "",
    mean_ablation: bool = True,
) -> dict[str, dict[str, float]]:
    """`spliced_fidelity` for several edits sharing one inversion and one clean resume."""
    from hsae.diffusion.invert import invert, resume

    inv = invert(backbone, backbone.encode(images), t=t, steps=steps, prompt=prompt)

    def run(edit: Any = None) -> tuple[Tensor, Tensor]:
        z, h = resume(backbone, inv.z_t, inv.t_index, inv.grid, prompt=prompt, h_edit=edit)
        return backbone.decode(z), h

    x_clean, h = run()
    shared: dict[str, float] = {"n_images": len(images), "timestep": inv.timestep, "steps": steps}
    shared.update(_pix(x_clean, images, "clean_vs_input"))
    if mean_ablation:  # the "zero-ablation" reference: h_t replaced by the batch mean of h_t
        x_abl, _ = run(h.mean(dim=0, keepdim=True).expand_as(h).clone())
        shared.update(_pix(x_abl, x_clean, "ablated_vs_clean"))
    out: dict[str, dict[str, float]] = {}
    for name, edit in edits.items():
        x_spl, _ = run(edit)
        r = {**shared, **_pix(x_spl, x_clean, "spliced_vs_clean")}
        r.update(_pix(x_spl, images, "spliced_vs_input"))
        h_metrics = reconstruction_metrics(h, edit(h))
        r.update({f"h_{k}": v for k, v in h_metrics.items() if k != "n_images"})
        if mean_ablation:
            abl = r["mse_ablated_vs_clean"]
            r["recovered"] = 1.0 - r["mse_spliced_vs_clean"] / abl if abl > 0 else math.nan
        out[name] = r
    return out


def spliced_fidelity(
    backbone: Any,
    images: Tensor,
    model: BaseSAE | Callable[[Tensor], Tensor],
    t: float = 0.7,
    steps: int = 50,
    threshold_k: int | None = None,
    prompt: str = "",
    mean_ablation: bool = True,
) -> dict[str, float]:
    """Pixel effect of replacing h_t by its reconstruction at the single edited step.

    The diffusion analogue of an LM SAE's "loss recovered": invert the images (in [-1, 1]) to t,
    resume once as is (x_clean) and once with h_t → decode(encode(h_t)) (x_spliced). Reports
    pixel MSE / PSNR of spliced vs clean (0 / inf for a perfect SAE), clean and spliced vs the
    input, h-space metrics of the edit on these h_t (`h_ev`, ...), and with mean_ablation the
    resume with h_t replaced by its batch mean (x_ablated), giving
    recovered = 1 − MSE(spliced, clean) / MSE(ablated, clean). `model` may be a callable h → ĥ.
    """
    edit = sae_edit(model, threshold_k) if isinstance(model, BaseSAE) else model
    res = spliced_fidelity_many(backbone, images, {"model": edit}, t, steps, prompt, mean_ablation)
    return res["model"]


# ----- outputs ------------------------------------------------------------------------------------
def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(v, spec) if isinstance(v, int | float) else str(v)


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: method | active values/image | EV | cosine | MSE | MAE | L0 | dead %."""
    lines = [
        "| method | active values/image | EV | cosine | MSE | MAE | L0 (per token) | dead % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            str(r["method"]),
            _fmt(r["active_per_image"], ".1f"),
            _fmt(r["ev"], ".3f" if abs(r["ev"]) < 1e3 else ".3g"),
            _fmt(r["cosine"], ".3f"),
            _fmt(r["mse"], ".3g"),
            _fmt(r["mae"], ".3g"),
            _fmt(r["l0"], ".2f"),
            _fmt(100 * r["dead_frac"], ".1f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        f"- {r['method']}: sparsity {r['sparsity']:.3f} on the eval split"
        + (
            f", {r['k_sample_sparsity']:.3f} on the train sample k was chosen on "
            f"(target {r['k_target_sparsity']:g})"
            if "k_sample_sparsity" in r
            else ""
        )
        for r in rows
        if r.get("thresholded")
    ]
    return "\n".join(lines + (["", *notes] if notes else [])) + "\n"


def _family(r: Mapping[str, Any]) -> str:
    if r["architecture"] in DENSE_ARCHITECTURES:
        return str(r["architecture"])
    return f"{r['architecture']}{' thresholded' if r.get('thresholded') else ''}"


def plot_ev_vs_budget(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """EV against active code values per image, one line per family (Agg canvas, no pyplot).

    Linear axes: log-axis mathtext labels cost seconds on this machine (see train.plot_curves).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from hsae.utils.io import atomic_write_bytes

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.92)
    ax = fig.add_subplot(1, 1, 1)
    families: dict[str, list[tuple[float, float]]] = {}
    off = [str(r["method"]) for r in rows if not float(r["ev"]) >= EV_PLOT_FLOOR]
    for r in rows:  # the random baseline's EV (~ −1e6) would flatten every other point
        if float(r["ev"]) >= EV_PLOT_FLOOR:
            families.setdefault(_family(r), []).append((r["active_per_image"], float(r["ev"])))
    for fam, pts in families.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=fam)
    ax.set_xlabel("active code values per image")
    ax.set_ylabel("explained variance")
    ax.set_title("EV vs active values (eval split)")
    if off:
        note = f"off scale (EV < {EV_PLOT_FLOOR:g}): " + "; ".join(m[:40] for m in off)
        fig.text(0.01, 0.01, note[:160], fontsize=6)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    atomic_write_bytes(path, buf.getvalue())


def write_outputs(
    out: Path, rows: list[dict[str, Any]], settings: dict[str, Any], plot: bool = True
) -> dict[str, Any]:
    """metrics.json (rows + settings + command), table.md and, for ≥ 2 rows, the EV plot."""
    from hsae.utils.io import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    doc = {"command": shlex.join(sys.argv), "settings": settings, "rows": rows}
    atomic_write_json(out / METRICS_FILE, jsonable(doc))
    atomic_write_text(out / TABLE_FILE, format_table(rows))
    if plot and len(rows) >= 2:
        plot_ev_vs_budget(rows, out / PLOT_FILE)
    return doc


# ----- command ------------------------------------------------------------------------------------
