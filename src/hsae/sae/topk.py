"""TopK activation with the AuxK dead-latent loss (Gao et al. 2024), on the paper's channel tokens.

α = TopK(ReLU(pre)) keeps the k largest pre-activations of each token, so every token has at most
k nonzero codes and sparsity needs no L1 term: TopK models ignore `cfg.l1_coeff` in the loss
(the L1 value is still reported). The loss is

    mse + aux_coeff · aux,   aux = mean over tokens of ‖ê − e‖²,

where e = h − ĥ (detached) is the residual and ê = W_d z_aux is decoded (no bias) from z_aux, the
top-aux_k ReLU'd pre-activations among *dead* latents only. A latent is dead once it has not fired
on any token for `cfg.dead_steps` training steps, counted by the `steps_since_fired` buffer
(saved with the weights). The buffer only advances in `loss()` while the module is in training
mode, so evaluation never changes it.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from hsae.sae.base import BaseSAE, SAEConfig
from hsae.sae.channel_aware import ChannelAwareSAE
from hsae.sae.registry import register


def topk_relu(pre: Tensor, k: int) -> Tensor:
    """Zero all but the k largest entries along the last axis, then ReLU the survivors."""
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))


class TopKMixin(BaseSAE):
    """TopK codes + AuxK loss + dead-latent tracking, for any token layout."""

    steps_since_fired: Tensor

    def _init_topk(self, cfg: SAEConfig) -> None:
        if cfg.k is None:
            raise ValueError(f"{self.architecture} needs cfg.k (nonzero codes per token)")
        self.register_buffer("steps_since_fired", torch.zeros(cfg.n_latents, dtype=torch.long))

    @property
    def k_aux(self) -> int:
        # Default as in EleutherAI sparsify: half the token dimension.
        return self.cfg.aux_k or max(self.cfg.d_in // 2, 1)

    def activation(self, pre: Tensor) -> Tensor:
        assert self.cfg.k is not None  # checked in _init_topk
        return topk_relu(pre, self.cfg.k)

    def dead_mask(self) -> Tensor:
        return self.steps_since_fired >= self.cfg.dead_steps

    def auxk_loss(self, pre: Tensor, residual: Tensor) -> Tensor:
        """pre (..., L), residual (..., d_in) in the same token layout; 0 if nothing is dead."""
        dead = self.dead_mask()
        n_dead = int(dead.sum())
        if n_dead == 0:
            return pre.new_zeros(())
        masked = pre.masked_fill(~dead, float("-inf"))
        vals, idx = masked.topk(min(self.k_aux, n_dead), dim=-1)
        z_aux = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
        e_hat = z_aux @ self.W_dec[:, : self.cfg.d_in]
        n_tokens = pre.numel() // self.cfg.n_latents
        return (e_hat - residual).pow(2).sum() / n_tokens

    @torch.no_grad()
    def update_dead(self, codes: Tensor) -> None:
        fired = (codes != 0).reshape(-1, self.cfg.n_latents).any(dim=0)
        self.steps_since_fired += 1
        self.steps_since_fired[fired] = 0

    def loss(self, h: Tensor, image_index: Tensor | None = None) -> dict[str, Tensor]:
        pre = self.pre_activation(h, image_index)
        codes = self.activation(pre)
        h_hat = self.decode(codes)
        out = self._base_terms(h, h_hat, codes, l1_coeff=0.0)
        residual = (self.target_tokens(h) - self.target_tokens(h_hat)).detach()
        aux = self.auxk_loss(pre, residual)
        out["dead"] = self.dead_mask().to(h.dtype).mean()
        out["aux"] = aux
        out["loss"] = out["loss"] + self.cfg.aux_coeff * aux
        if self.training:
            self.update_dead(codes)
        return out


@register("topk_channel")
class TopKChannelSAE(TopKMixin, ChannelAwareSAE):
    """The paper's channel tokens and ζ context, with TopK codes (k per channel token) + AuxK.
    Codes: (B, C, L). Image index at test time: as ChannelAwareSAE (constant 0.5)."""

    code_axes: ClassVar[tuple[str, ...]] = ("channel", "latent")

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self._init_topk(cfg)
