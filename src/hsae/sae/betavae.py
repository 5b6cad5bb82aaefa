"""β-VAE baseline of Table 2 ("β-VAE (16 dim)", "β-VAE (512 dim)"): an MLP VAE on flattened h.

    encoder  x = h.flatten() (C·K·K) → ReLU(x W_enc + b_enc) (H) → W_post → [μ, log σ²] (2L)
    decoder  z (L) → ReLU(z W_up + b_up) (H) → W_dec → ĥ (C·K·K) (+ b_dec)

with L = cfg.n_latents and H = HIDDEN. The loss is recon + β·KL(q(z|h) ‖ N(0, I)), where recon is
‖ĥ − h‖² summed over the C·K·K dims and averaged over images (the SAEs' "mse", so Table 2
columns compare), i.e. a Gaussian decoder of fixed variance 1/2.

β mapping: β = cfg.l1_coeff (no new config field). It is the weight of the regulariser, like λ in
the SAEs, so the trainer's `--l1`, its λ warm-up (`l1_warmup`, here a KL annealing schedule) and
its divergence hint apply to β unchanged.

In training mode `loss` samples z = μ + σ·ε (reparameterisation, global torch RNG, which the
trainer seeds and checkpoints); in eval mode it uses z = μ. `encode` always returns μ, `decode`
the decoder mean, so encode/decode/forward are deterministic.

Layout: the input layer is W_enc (d_in, H) and the output layer W_dec (H, d_in), b_dec (d_in), so
the trainer's `init_decoder_bias` (b_dec = data mean), `normalize_decoder` (unit-norm output
rows, a reparameterisation since the ReLU hidden units can rescale) and `fold_input_scale`
(scales exactly what reads h and what writes ĥ) are correct for this network too.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from hsae.sae.base import BaseSAE, SAEConfig
from hsae.sae.registry import register

HIDDEN = 512  # hidden width of encoder and decoder MLPs (no SAEConfig field for it)
# log σ² is clamped before exp() so a bad step cannot overflow (diffusers' DiagonalGaussian does
# the same); far outside the range a trained VAE uses.
LOGVAR_RANGE = (-30.0, 20.0)


def _linear(fan_in: int, fan_out: int) -> tuple[nn.Parameter, nn.Parameter]:
    """Weight (fan_in, fan_out) and bias with nn.Linear's default U(±1/√fan_in) init."""
    bound = 1.0 / math.sqrt(fan_in)
    w = torch.empty(fan_in, fan_out).uniform_(-bound, bound)
    b = torch.empty(fan_out).uniform_(-bound, bound)
    return nn.Parameter(w), nn.Parameter(b)


@register("beta_vae")
class BetaVAE(BaseSAE):
    """MLP β-VAE; codes (B, L) are the posterior means μ (dense, signed)."""

    code_axes: ClassVar[tuple[str, ...]] = ("latent",)
    contexts: ClassVar[tuple[str, ...]] = ("none",)

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        d, n = cfg.d_in, cfg.n_latents
        self.W_enc, self.b_enc = _linear(d, HIDDEN)
        self.W_post, self.b_post = _linear(HIDDEN, 2 * n)
        self.W_up, self.b_up = _linear(n, HIDDEN)
        self.W_dec, self.b_dec = _linear(HIDDEN, d)
        if cfg.unit_norm_decoder:
            self.normalize_decoder()

    @classmethod
    def token_dim(cls, n_channels: int, spatial: int) -> int:
        return n_channels * spatial * spatial

    @property
    def beta(self) -> float:
        return self.cfg.l1_coeff

    def target_tokens(self, h: Tensor) -> Tensor:
        return h.flatten(1)

    def posterior(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """μ and log σ² of q(z | h), each (B, L)."""
        self.check_input(h)
        hidden = torch.relu(self.target_tokens(h) @ self.W_enc + self.b_enc)
        mu, logvar = (hidden @ self.W_post + self.b_post).chunk(2, dim=-1)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def pre_activation(self, h: Tensor, image_index: Tensor | None = None) -> Tensor:
        return self.posterior(h)[0]

    def activation(self, pre: Tensor) -> Tensor:
        return pre  # codes are μ itself

    def decode(self, codes: Tensor) -> Tensor:
        self.check_codes(codes, ())
        k = self.cfg.spatial
        out = torch.relu(codes @ self.W_up + self.b_up) @ self.W_dec + self.b_dec
        return out.reshape(codes.shape[0], self.cfg.n_channels, k, k)

    def loss(self, h: Tensor, image_index: Tensor | None = None) -> dict[str, Tensor]:
        """recon + β·KL; keys loss, mse (recon), kl, l1 and l0 (of μ, for the trainer's log)."""
        mu, logvar = self.posterior(h)
        z = mu
        if self.training:
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        out = self._base_terms(h, self.decode(z), mu, l1_coeff=0.0)
        # Closed-form KL(N(μ, σ²) ‖ N(0, 1)), summed over latents, averaged over images.
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1).mean()
        out["kl"] = kl
        out["loss"] = out["mse"] + self.beta * kl
        return out

    @property
    def decoder_directions(self) -> Tensor:
        """(L, d_in): decode(e_i) − decode(0), the change in ĥ from one prior std on latent i.

        The base property would return the output layer (H, d_in), which is not per latent.
        """
        n = self.cfg.n_latents
        eye = torch.eye(n, device=self.W_up.device, dtype=self.W_up.dtype)
        out = self.decode(torch.cat([eye, eye.new_zeros(1, n)])).flatten(1)
        return out[:n] - out[n:]
