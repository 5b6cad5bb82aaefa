"""Editing units and rules: every way this package moves h_t, as one `EditFeature` object.

An `EditFeature` knows the change it makes to h per unit of strength, `delta(h)` (B, C, K, K); an
edit with signed strength u is h̃ = base + u·delta(h) at every step of the edit window, where base
is h (mode `error_preserving`: the SAE's reconstruction error is kept, u = 0 gives h bit for bit)
or the SAE's reconstruction dec(α) (mode `reconstruction`, the paper's Algorithm 2). Every SAE
decoder here is linear in its codes, so these formulas are exact, not approximations.

Units (what is edited) and rules (how):

- `component` + `scale`: the paper's eq. 10, α_tj → κ·α_tj for one (token, latent); u = κ − 1,
  delta(h) = α_tj(h)·w_j placed at token t. Depends on h, so it is re-encoded at every step.
- `component` + `add`: α_tj → α_tj + s·ā_tj (ā = its mean activation where it fires, on train),
  delta = ā_tj·w_j at token t: a silent feature can be switched on.
- `latent` (latent-wide): latent j at a set of tokens at once (all channels / the top-N channels
  ranked on train for channel-aware SAEs; all positions or a box for spatial-token SAEs; the single
  token of a flat SAE), with either rule.
- `direction`: a fixed vector d of raw H-space (mean-difference, a PCA component, a random
  control): h → h + s·d.

Codes are raw (unthresholded) unless a threshold k is given, in which case eq. 9 is applied before
the scale rule (it does not change the add rule, whose delta does not read α).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from hsae.diffusion.hspace import HEdit
from hsae.editing.intervene import Component, decode_tokens, encode_tokens, n_tokens
from hsae.sae.base import BaseSAE

RULES = ("add", "scale")
UNITS = ("latent", "component", "direction")
EDIT_MODES = ("error_preserving", "reconstruction")


@dataclass
class EditFeature:
    """One editable feature: `delta(h)` is the change of h per unit strength (see module doc).

    sign: +1 when a positive strength moves towards the attribute the feature was chosen for
    (benchmarks orient every feature this way); 1 when no attribute is involved.
    """

    name: str
    unit: str
    rule: str
    sae: BaseSAE | None = None
    tokens: Tensor | None = None  # (M,) bool: which tokens of the latent are edited
    latent: int | None = None
    abar: Tensor | None = None  # (M,) mean activation where it fires, per token (add rule)
    direction: Tensor | None = None  # (C, K, K) for the direction unit
    threshold_k: int | None = None
    sign: int = 1
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")
        if self.unit == "direction":
            if self.direction is None:
                raise ValueError(f"feature {self.name!r}: the direction unit needs a vector")
            return
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")
        if self.sae is None or self.latent is None or self.tokens is None:
            raise ValueError(f"feature {self.name!r}: an SAE unit needs sae, latent and tokens")
        if self.rule == "add" and self.abar is None:
            raise ValueError(f"feature {self.name!r}: the add rule needs ā (mean activation)")

    # --- what the edit does ---------------------------------------------------------------------
    def codes(self, h: Tensor) -> Tensor:
        """(B, M, L) codes the scale rule reads (thresholded when threshold_k is set)."""
        assert self.sae is not None
        return encode_tokens(self.sae, h, self.threshold_k)

    def _code_change(self, h: Tensor) -> Tensor:
        """(B, M, L) change of the codes per unit strength."""
        assert self.sae is not None and self.tokens is not None and self.latent is not None
        m, n_lat = n_tokens(self.sae), self.sae.cfg.n_latents
        change = torch.zeros(h.shape[0], m, n_lat, dtype=self.sae.W_dec.dtype, device=h.device)
        sel = self.tokens.to(h.device)
        if self.rule == "scale":
            change[:, sel, self.latent] = self.codes(h)[:, sel, self.latent]
        else:
            assert self.abar is not None
            change[:, sel, self.latent] = self.abar.to(change)[sel]
        return change

    @torch.no_grad()
    def delta(self, h: Tensor) -> Tensor:
        """Change of h per unit strength, (B, C, K, K), in h's dtype."""
        if self.unit == "direction":
            assert self.direction is not None
            return self.direction.to(h).expand_as(h)
        assert self.sae is not None
        change = self._code_change(h)
        zero = torch.zeros_like(change[:1])
        lin = decode_tokens(self.sae, change, h) - decode_tokens(self.sae, zero, h)
        return lin

    def base(self, h: Tensor, mode: str) -> Tensor:
        if mode == "error_preserving" or self.sae is None:
            return h
        if mode != "reconstruction":
            raise ValueError(f"mode must be one of {EDIT_MODES}, got {mode!r}")
        return decode_tokens(self.sae, self.codes(h), h)

    @torch.no_grad()
    def apply(self, h: Tensor, u: Tensor | float, mode: str = "error_preserving") -> Tensor:
        """h̃ = base + u·delta(h); u is a scalar or one value per batch row."""
        s = torch.as_tensor(u, dtype=h.dtype, device=h.device).reshape(-1, 1, 1, 1)
        if s.shape[0] not in (1, h.shape[0]):
            raise ValueError(f"strength needs 1 or {h.shape[0]} values, got {s.shape[0]}")
        return self.base(h, mode) + s * self.delta(h)

    def strength_to_u(self, strength: Tensor | float) -> Tensor:
        """The user's strength → u: κ − 1 for the scale rule (κ = 1 is no edit), else s."""
        s = torch.as_tensor(strength, dtype=torch.float32)
        return s - 1.0 if self.rule == "scale" and self.unit != "direction" else s

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "unit": self.unit, "rule": self.rule}
        out["sign"] = self.sign
        if self.latent is not None:
            out["latent"] = self.latent
        if self.tokens is not None:
            out["n_tokens"] = int(self.tokens.sum())
            if int(self.tokens.sum()) <= 16:
                out["tokens"] = [int(i) for i in torch.nonzero(self.tokens).flatten()]
        return {**out, **self.info}


@dataclass
class StepLog:
    """Per edited step, ‖h̃ − h‖ / ‖h‖ of every row, and whether a component was below τ."""

    sizes: list[Tensor] = field(default_factory=list)
    below_tau: Tensor | None = None  # (B,) any step with the feature's α below τ

    def per_step(self) -> Tensor:
        """(steps, B) relative edit sizes."""
        return torch.stack(self.sizes) if self.sizes else torch.zeros(0)


def window_hook(
    feature: EditFeature,
    u: Tensor | float,
    mode: str = "error_preserving",
    log: StepLog | None = None,
    tau_k: int | None = None,
) -> HEdit:
    """The edit as h → h̃ for `resume(h_edit=…, edit_steps=window)`: each step's own h is edited
    (SAE units re-encode it), and `log` receives each step's relative size and the τ check."""

    @torch.no_grad()
    def edit(h: Tensor) -> Tensor:
        out = feature.apply(h, u, mode)
        if log is not None:
            norm = h.flatten(1).norm(dim=1).clamp_min(1e-12)
            log.sizes.append(((out - h).flatten(1).norm(dim=1) / norm).float().cpu())
            if tau_k is not None and feature.sae is not None:
                below = components_below_tau(feature, h, tau_k).cpu()
                log.below_tau = below if log.below_tau is None else log.below_tau | below
        return out

    return edit


def components_below_tau(feature: EditFeature, h: Tensor, k: int) -> Tensor:
    """(B,) True where an edited (token, latent) of `feature` is below its image's τ (eq. 9)."""
    from hsae.sae.threshold import image_thresholds

    assert feature.sae is not None and feature.tokens is not None
    raw = encode_tokens(feature.sae, h)
    tau = image_thresholds(raw, k)
    vals = raw[:, feature.tokens.to(h.device), feature.latent]
    return (vals < tau[:, None]).any(dim=1)


# ----- building features from an SAE -------------------------------------------------------------
def token_mask(sae: BaseSAE, tokens: Sequence[int] | None) -> Tensor:
    """(M,) bool over the SAE's code tokens; None = all tokens."""
    m = n_tokens(sae)
    mask = torch.zeros(m, dtype=torch.bool)
    if tokens is None:
        mask[:] = True
        return mask
    bad = [t for t in tokens if not 0 <= int(t) < m]
    if bad:
        raise ValueError(f"token {bad[0]} is outside this SAE's tokens 0..{m - 1}")
    mask[torch.as_tensor([int(t) for t in tokens], dtype=torch.long)] = True
    return mask


def sae_feature(
    sae: BaseSAE,
    latent: int,
    tokens: Sequence[int] | None,
    rule: str,
    abar: Tensor | None = None,
    unit: str = "latent",
    threshold_k: int | None = None,
    sign: int = 1,
    name: str | None = None,
    info: dict[str, Any] | None = None,
) -> EditFeature:
    """An SAE latent at `tokens` (None = all) or one component (unit="component", one token)."""
    if not 0 <= latent < sae.cfg.n_latents:
        raise ValueError(f"latent {latent} is outside 0..{sae.cfg.n_latents - 1}")
    mask = token_mask(sae, tokens)
    if unit == "component" and int(mask.sum()) != 1:
        raise ValueError("a component is one (token, latent): give exactly one token")
    label = name or _sae_name(sae, latent, mask, rule, unit)
    return EditFeature(
        name=label,
        unit=unit,
        rule=rule,
        sae=sae,
        tokens=mask,
        latent=latent,
        abar=abar,
        threshold_k=threshold_k,
        sign=sign,
        info=dict(info or {}),
    )


def _sae_name(sae: BaseSAE, latent: int, mask: Tensor, rule: str, unit: str) -> str:
    n, m = int(mask.sum()), mask.numel()
    if unit == "component":
        return f"{sae.cfg.architecture} {int(torch.nonzero(mask).flatten()[0])}:{latent} {rule}"
    where = "all tokens" if n == m else f"{n} of {m} tokens"
    return f"{sae.cfg.architecture} latent {latent} ({where}) {rule}"


def component_feature(
    sae: BaseSAE,
    comp: Component,
    rule: str,
    abar: Tensor | None = None,
    threshold_k: int | None = None,
    sign: int = 1,
    info: dict[str, Any] | None = None,
) -> EditFeature:
    return sae_feature(
        sae, comp.latent, [comp.token], rule, abar, "component", threshold_k, sign, None, info
    )


def direction_feature(
    d: Tensor, name: str, sign: int = 1, info: dict[str, Any] | None = None
) -> EditFeature:
    """A fixed raw-H-space vector d (C, K, K): h → h + s·d."""
    if d.ndim != 3:
        raise ValueError(f"a direction must be (C, K, K), got shape {tuple(d.shape)}")
    return EditFeature(
        name=name,
        unit="direction",
        rule="direction",
        direction=d.float(),
        sign=sign,
        info=dict(info or {}),
    )


def random_direction(shape: Sequence[int], norm: float, seed: int) -> Tensor:
    """A Gaussian direction of the given norm: the control of matched size."""
    g = torch.Generator().manual_seed(int(seed))
    d = torch.randn(*shape, generator=g)
    return d * (norm / d.norm().clamp_min(1e-12))
