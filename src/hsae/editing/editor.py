"""The Python editing API: `HSpaceEditor(backbone, sae).edit(image, feature, strength, …)`.

The defaults are what `hsae editbench` measured to edit on the toy model (docs/editing.md): an
SAE latent at all its tokens, the `add` rule (α + s·ā: a silent feature can be switched on),
applied at every resumed step of the window, keeping the SAE's reconstruction error. The paper's
exact Algorithm 2 is one call away: `editor.edit(img, "C:J", kappa, **PAPER)`, i.e. one
component, the `scale` rule (α·κ), one step, h replaced by the SAE's reconstruction.

Example (the embedded toy model and an untrained SAE, so the edit is arbitrary but real):

>>> import torch
>>> from hsae.diffusion.backbone import DiffusionBackbone
>>> from hsae.editing import HSpaceEditor
>>> from hsae.sae import build_sae, make_config
>>> from hsae.toy.toyfaces import generate
>>> backbone = DiffusionBackbone.load("toy")
>>> c, k, _ = backbone.hspace_shape()
>>> _ = torch.manual_seed(0)
>>> sae = build_sae(make_config("spatial_topk", c, k, n_latents=64, k=4))
>>> editor = HSpaceEditor(backbone, sae, steps=5)
>>> out = editor.edit(generate(0, 0).image, feature=3, strength=[0.0, 2.0])
>>> len(out.images), out.images[0].size == (backbone.image_size, backbone.image_size)
(2, True)
>>> out.delta[0], out.delta[1] > 0  # strength 0 changes no neuron of h
(0, True)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from hsae.editing.edit import EditResult
from hsae.editing.intervene import Component, edit_step_count, neurons_changed, parse_component
from hsae.editing.units import (
    EDIT_MODES,
    RULES,
    EditFeature,
    components_below_tau,
    direction_feature,
    sae_feature,
)

DEFAULT_RULE = "add"
DEFAULT_WINDOW: int | str = "all"
DEFAULT_MODE = "error_preserving"
PAPER: dict[str, Any] = {"rule": "scale", "window": 1, "mode": "reconstruction"}


@dataclass
class FeatureEdit:
    """What `HSpaceEditor.edit` returns, for one image and V strengths."""

    images: list[Image.Image]  # one per strength
    reference: Image.Image  # the unedited invert → resume of the same image
    tensors: Tensor  # (V, 3, H, W) in [-1, 1]
    reference_tensor: Tensor  # (3, H, W)
    delta: list[int]  # neurons of h changed at the first edited step, per strength
    size: list[float]  # ‖h̃ − h‖ / ‖h‖ at the first edited step
    size_sum: list[float]  # the same summed over the window
    below_tau: bool  # an edited component was below τ at some step of the window
    feature: EditFeature


def to_pil(x: Tensor) -> Image.Image:
    from hsae.utils.viz import to_uint8

    return Image.fromarray(to_uint8(x[None])[0])


def _as_tensor(image: Any, size: int) -> Tensor:
    """PIL image, path or (3, H, W) tensor in [-1, 1] → (1, 3, size, size)."""
    from pathlib import Path

    from hsae.data.images import load_image

    if isinstance(image, Tensor):
        x = image if image.ndim == 4 else image[None]
        if tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"image tensor must be 3×{size}×{size}, got {tuple(x.shape)}")
        return x.float()
    if isinstance(image, str | Path):
        return load_image(Path(image), size)[None]
    if isinstance(image, Image.Image):
        img = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        arr = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)
        return (arr / 127.5 - 1.0)[None]
    raise ValueError(f"image must be a PIL image, a path or a tensor, got {type(image).__name__}")


class HSpaceEditor:
    """Edit images through H-space with an SAE feature, a PCA/mean-difference direction or a
    component, under one rule and window; see the module docstring for the defaults."""

    def __init__(
        self,
        backbone: Any,
        sae: Any = None,
        t: float = 0.7,
        steps: int = 50,
        prompt: str = "",
        store: Any = None,
        threshold_k: int | None = None,
    ) -> None:
        self.backbone, self.sae, self.t, self.steps, self.prompt = backbone, sae, t, steps, prompt
        self.store, self.threshold_k = store, threshold_k
        self._abar: Tensor | None = None
        if sae is not None:
            want = (sae.cfg.n_channels, sae.cfg.spatial, sae.cfg.spatial)
            if tuple(backbone.hspace_shape()) != want:
                raise ValueError(
                    f"SAE expects h of shape {want}, model has {tuple(backbone.hspace_shape())}"
                )
            sae.eval()

    @torch.no_grad()
    def abar(self, h: Tensor) -> Tensor:
        """(M, L) mean activation where each code fires: from the store's train rows when one is
        given (or the SAE's training store exists), else from this image's own h."""
        if self._abar is None and self.sae is not None:
            from hsae.editing.selection import code_stats

            store = self.store or _training_store(self.sae)
            if store is not None:
                rows = np.asarray(store.indices_for_split("train"))[:512]
                self._abar = code_stats(self.sae, store, rows).abar
        if self._abar is not None:
            return self._abar
        from hsae.editing.intervene import encode_tokens

        codes = encode_tokens(self.sae, h)
        on = codes > 0
        return ((codes * on).sum(0) / on.sum(0).clamp_min(1)).float()

    def make_feature(
        self,
        feature: int | str | Tensor | EditFeature,
        h: Tensor,
        rule: str = DEFAULT_RULE,
        tokens: Sequence[int] | None = None,
    ) -> EditFeature:
        """int j → latent j at `tokens` (all); "C:J" → one component; a (C, K, K) tensor → a
        direction; an EditFeature as is."""
        if isinstance(feature, EditFeature):
            return feature
        if isinstance(feature, Tensor):
            return direction_feature(feature.float(), "direction")
        if self.sae is None:
            raise ValueError("an SAE feature needs an SAE: HSpaceEditor(backbone, sae)")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        abar = self.abar(h)
        k = self.threshold_k
        if isinstance(feature, str) and ":" in feature:
            c: Component = parse_component(feature, self.sae)
            a = _fill(abar[:, c.latent])
            return sae_feature(self.sae, c.latent, [c.token], rule, a, "component", k)
        j = int(feature)
        return sae_feature(self.sae, j, tokens, rule, _fill(abar[:, j]), "latent", k)

    @torch.no_grad()
    def edit(
        self,
        image: Any,
        feature: int | str | Tensor | EditFeature,
        strength: float | Sequence[float],
        window: int | str = DEFAULT_WINDOW,
        rule: str = DEFAULT_RULE,
        mode: str = DEFAULT_MODE,
        tokens: Sequence[int] | None = None,
        tau_k: int | None = None,
    ) -> FeatureEdit:
        """Edit one image at every strength (κ for the scale rule, s otherwise) in one batch."""
        from hsae.diffusion.invert import capture_h, invert

        strengths = [float(v) for v in np.atleast_1d(np.asarray(strength, dtype=np.float64))]
        bb = self.backbone
        x = _as_tensor(image, bb.image_size)
        inv = invert(bb, bb.encode(x), self.t, self.steps, self.prompt)
        feat = self.make_feature(feature, capture_h(bb, inv, self.prompt).float(), rule, tokens)
        k_tau = tau_k if tau_k is not None else self.threshold_k
        res, below = feature_batch(bb, inv, feat, strengths, mode, window, self.prompt, k_tau)
        if bool(below.any()):
            print(f"note: {feat.name}: below the image's τ (k={k_tau}) at a step of the window",
                  file=sys.stderr)  # fmt: skip
        ims = res.images[0].float()
        ref = res.reference[0].float() if res.reference is not None else x[0]
        return FeatureEdit(
            images=[to_pil(i) for i in ims],
            reference=to_pil(ref),
            tensors=ims,
            reference_tensor=ref,
            delta=[int(d) for d in res.delta[0]],
            size=[float(v) for v in res.size[0]],
            size_sum=[float(v) for v in res.size_sum[0]],
            below_tau=bool(below.any()),
            feature=feat,
        )


@dataclass
class FeatureResult(EditResult):
    """`feature_batch` output: an `EditResult` (what `hsae.editing.edit.write_edit_outputs` reads)
    with the edit's size. `kappas` are the strengths (κ for the scale rule, s otherwise) and
    `alpha` (B, 1) is the feature's summed code at the first step (0 for directions)."""

    size: Tensor  # (B, V) ‖h̃ − h‖ / ‖h‖ at the first edited step
    size_sum: Tensor  # (B, V) summed over the window


@torch.no_grad()
def feature_batch(
    backbone: Any,
    inv: Any,
    feat: EditFeature,
    strengths: Sequence[float],
    mode: str = DEFAULT_MODE,
    window: int | str = DEFAULT_WINDOW,
    prompt: str = "",
    tau_k: int | None = None,
    progress: bool = False,
) -> tuple[FeatureResult, Tensor]:
    """Every image of `inv` at every strength, one batched resume; and (B,) "below τ at some
    step of the window" (all False without tau_k)."""
    from hsae.editing.edit import resume_variants

    if mode not in EDIT_MODES:
        raise ValueError(f"--mode must be one of {EDIT_MODES}, got {mode!r}")
    if not strengths:
        raise ValueError("give at least one strength")
    v = len(strengths)
    u = feat.strength_to_u(torch.tensor([float(s) for s in strengths]))
    b = inv.z_t.shape[0]
    sizes: list[Tensor] = []
    below = torch.zeros(b, dtype=torch.bool)

    def row_edit(h: Tensor, variant: Tensor) -> Tensor:
        nonlocal below
        out = feat.apply(h, u[variant].to(h), mode)
        ref = feat.base(h, mode)
        norm = h.flatten(1).norm(dim=1).clamp_min(1e-12)
        sizes.append(((out - ref).flatten(1).norm(dim=1) / norm).float().cpu().reshape(b, v))
        if tau_k is not None and feat.sae is not None:
            below = below | components_below_tau(feat, h, tau_k).cpu().reshape(b, v).any(1)
        return out

    n = edit_step_count(window, inv.t_index)
    run = resume_variants(backbone, inv, row_edit, v, n, prompt, progress=progress)
    base = feat.base(run.h_ref, mode).repeat_interleave(v, dim=0)
    flat = run.h_first.flatten(0, 1)
    delta = neurons_changed(base, flat).reshape(b, v)
    delta_h = neurons_changed(run.h_ref.repeat_interleave(v, dim=0), flat).reshape(b, v)
    alpha = torch.zeros(b, 1)
    if feat.sae is not None:
        alpha[:, 0] = feat.codes(run.h_ref)[:, feat.tokens, feat.latent].sum(1).float()
    steps = torch.stack(sizes) if sizes else torch.zeros(1, b, v)
    res = FeatureResult(
        kappas=[float(s) for s in strengths],
        images=run.images,
        reference=run.reference,
        h_ref=run.h_ref,
        h_edit=run.h_first,
        delta=delta,
        delta_vs_h=delta_h,
        alpha=alpha,
        size=steps[0],
        size_sum=steps.sum(0),
    )
    return res, below


def _fill(a: Tensor) -> Tensor:
    """ā of one latent per token, silent tokens filled with its mean over firing ones (else 1)."""
    a = a.clone().float()
    fired = a > 0
    a[~fired] = float(a[fired].mean()) if fired.any() else 1.0
    return a


def _training_store(sae: Any) -> Any:
    from pathlib import Path

    from hsae.data.store import ActivationStore

    path = getattr(sae.cfg, "store_path", None)
    if path and (Path(path) / "manifest.json").is_file():
        try:
            return ActivationStore(path)
        except (OSError, ValueError):
            return None
    return None
