"""SAE interventions in H-space (paper Algorithm 2): scale code components, decode, splice back.

A component is one (token, latent) pair of an SAE code laid out as tokens (B, M, L): for the
channel-aware SAE token = channel, so (c, j) is "channel c, latent j" and the paper's flat index is
k = c·L + j. For the flat SAE M = 1; for the spatial SAE the token is a K×K position.

Two modes, both written as h̃ = base + mask ⊙ (dec(α̃) − dec(α)):

- "reconstruction" (the paper): base = dec(α), so the whole h_t is replaced by the SAE's
  reconstruction and κ = 1 gives the *spliced* (SAE-reconstructed) result, not the clean one.
- "error_preserving": base = h, so the SAE's reconstruction error is kept and only the edit's
  change is added; κ = 1 gives back h exactly (the difference is exactly zero), hence the
  unedited image bit for bit.

`mask` (K×K, broadcast over channels) restricts the change to part of the spatial map. Each row of
a batch may have its own κ, so a κ sweep is one batched resume.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hsae.diffusion.hspace import HEdit
from hsae.sae.base import BaseSAE
from hsae.sae.tokens import decode_tokens, encode_tokens, n_tokens

MODES = ("reconstruction", "error_preserving")


@dataclass(frozen=True)
class Component:
    """Token (channel for channel-aware SAEs) and latent of one code entry."""

    token: int
    latent: int

    def flat_index(self, n_latents: int) -> int:
        """The paper's k = c·L + j."""
        return self.token * n_latents + self.latent

    def __str__(self) -> str:
        return f"{self.token}:{self.latent}"


def parse_component(text: str, sae: BaseSAE) -> Component:
    """'C:J' (token C, latent J) or a flat index k = C·L + J, checked against the SAE's shape."""
    m_tok, n_lat = n_tokens(sae), sae.cfg.n_latents
    s = text.strip()
    if re.fullmatch(r"\d+:\d+", s):
        tok, lat = (int(v) for v in s.split(":"))
    elif re.fullmatch(r"\d+", s):
        tok, lat = divmod(int(s), n_lat)
    else:
        raise ValueError(f"--component {text!r}: expected C:J (token:latent) or a flat index k")
    if not (0 <= tok < m_tok and 0 <= lat < n_lat):
        raise ValueError(
            f"--component {text!r} is outside this SAE's codes: tokens 0..{m_tok - 1}, "
            f"latents 0..{n_lat - 1} (flat index 0..{m_tok * n_lat - 1})"
        )
    return Component(tok, lat)


def scale_components(
    tokens: Tensor, components: Sequence[Component], kappa: Tensor | float
) -> Tensor:
    """α̃: each listed (token, latent) multiplied by κ; κ scalar or one value per batch row."""
    out = tokens.clone()
    k = torch.as_tensor(kappa, dtype=tokens.dtype, device=tokens.device).reshape(-1)
    if k.numel() not in (1, tokens.shape[0]):
        raise ValueError(f"kappa needs 1 or {tokens.shape[0]} values, got {k.numel()}")
    for c in components:
        out[:, c.token, c.latent] = out[:, c.token, c.latent] * k
    return out


def intervene(
    sae: BaseSAE,
    h: Tensor,
    components: Sequence[Component],
    kappa: Tensor | float,
    mode: str = "reconstruction",
    threshold_k: int | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """h̃ for h (B, C, K, K); see the module docstring for the two modes and the mask."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    alpha = encode_tokens(sae, h, threshold_k)
    alpha_edit = scale_components(alpha, components, kappa)
    dec, dec_edit = decode_tokens(sae, alpha, h), decode_tokens(sae, alpha_edit, h)
    delta = dec_edit - dec
    if mask is not None:
        k = h.shape[-1]
        if tuple(mask.shape) != (k, k):
            raise ValueError(f"mask must be K×K = {k}×{k}, got {tuple(mask.shape)}")
        delta = delta * mask.to(delta)
    base = dec if mode == "reconstruction" else h
    return base + delta


def intervention_hook(
    sae: BaseSAE,
    components: Sequence[Component],
    kappa: Tensor | float,
    mode: str = "reconstruction",
    threshold_k: int | None = None,
    mask: Tensor | None = None,
) -> HEdit:
    """The edit as a callable h → h̃ for `invert.resume(h_edit=..., edit_steps=n)`: applied to the
    h of each edited step, so an intervention window over several timesteps edits each one's own h.
    """

    @torch.no_grad()
    def edit(h: Tensor) -> Tensor:
        return intervene(sae, h, components, kappa, mode, threshold_k, mask)

    return edit


def neurons_changed(h_ref: Tensor, h_edit: Tensor, rtol: float = 1e-4) -> Tensor:
    """Δ per image: neurons of h that moved by more than rtol · max|h_ref| of that image."""
    scale = h_ref.flatten(1).abs().amax(dim=1).clamp_min(1e-12)
    moved = (h_edit - h_ref).abs().flatten(1) > rtol * scale[:, None]
    return moved.sum(dim=1)


def edit_step_count(spec: int | str, t_index: int, option: str = "--window") -> int:
    """How many resumed steps an edit covers, from `parse_edit_steps`' value: "all" is every
    step from t (grid index `t_index`) down to 0, "half" the first half of them (rounded up), a
    number must lie in 1..t_index + 1."""
    n = t_index + 1
    if spec == "all":
        return n
    if spec == "half":
        return (n + 1) // 2
    if not 1 <= int(spec) <= n:
        raise ValueError(f"{option} must be in 1..{n} (the resumed steps from t), got {spec}")
    return int(spec)


def parse_edit_steps(value: str | int) -> int | str:
    """--window / --edit-steps: how many resumed steps to edit, a positive int, "half" (the first
    half of the resumed steps) or "all" (t down to 0)."""
    if isinstance(value, str) and value.lower() in ("all", "half"):
        return value.lower()
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a step count, 'half' or 'all', got {value!r}"
        ) from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a step count >= 1 or 'all', got {n}")
    return n
