"""The paper's Channel-Aware SAE (§3.1–3.2, eqs. 6–8, Algorithm 1).

Each of the C channel maps of h (B, C, K, K) is one token: its K·K values, followed by
(ρ, μ) = ζ_γ(channel, image), a small learnable net R² → R² (eq. 6). Then

    α = ReLU(W_e x + b_e),   ĥ = Drop(W_d α + b_d)           (eq. 7)

where the decoder outputs K·K + 2 values and Drop removes the last two (the context dims), and
the loss is the mean over tokens of ‖ĥ − h‖² (summed over the K·K dims) + λ‖α‖₁ (eq. 8).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from hsae.sae.base import BaseSAE, SAEConfig
from hsae.sae.registry import register

ZETA_HIDDEN = 16
# Normalised image coordinate used when no image index is given (test time): the mean of the
# training coordinates i / (N - 1), i = 0..N-1.
UNSEEN_IMAGE_COORD = 0.5
# The "channel+timestep" context reads timestep / TIMESTEP_SCALE (diffusers' DDPM schedules of SD
# and the toy model have 1,000 training timesteps).
TIMESTEP_SCALE = 1000.0


@register("channel_aware")
class ChannelAwareSAE(BaseSAE):
    """Channel tokens + ζ context, ReLU codes with an L1 penalty. Codes: (B, C, L).

    Context inputs to ζ are normalised to [0, 1]: channel c -> c / (C - 1) and image index
    i -> i / (n_train_images - 1). `cfg.context` chooses what ζ sees:

    - "channel+image" (the paper): ζ(c, i). Training passes each activation's real image index.
      The index means nothing for an image outside the training set, so at test time
      (`image_index=None`) the image input is the constant 0.5, the mean of the normalised
      training indices; with an odd n_train_images this is exactly the middle training index.
    - "channel": ζ(c, 0); any image index passed is ignored.
    - "channel+timestep": ζ(c, t / 1000), t the diffusion timestep of the h (an SAE trained on
      h from every resumed step of the edit window). The `image_index` argument then carries
      the integer timestep of each row; None means the SAE's own `cfg.timestep` (t = 0.7T).
    - "none": no context dims at all; tokens are the K·K values (d = K·K).
    """

    code_axes: ClassVar[tuple[str, ...]] = ("channel", "latent")
    contexts: ClassVar[tuple[str, ...]] = ("channel+image", "channel", "channel+timestep", "none")

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        if cfg.context == "channel+image" and cfg.n_train_images < 1:
            raise ValueError(
                "context 'channel+image' needs cfg.n_train_images >= 1 "
                "(it normalises the image index)"
            )
        self.n_context = 0 if cfg.context == "none" else 2
        self.zeta: nn.Sequential | None = None
        if self.n_context:
            self.zeta = nn.Sequential(
                nn.Linear(2, ZETA_HIDDEN), nn.SiLU(), nn.Linear(ZETA_HIDDEN, 2)
            )
        self._init_params(cfg.d_in + self.n_context)

    @classmethod
    def token_dim(cls, n_channels: int, spatial: int) -> int:
        return spatial * spatial

    def context_inputs(self, batch: int, image_index: Tensor | None, like: Tensor) -> Tensor:
        """The normalised (channel, image) pairs ζ reads, shape (B, C, 2)."""
        c = self.cfg.n_channels
        chan = torch.arange(c, device=like.device, dtype=like.dtype) / max(c - 1, 1)
        if self.cfg.context == "channel":
            img = like.new_zeros(batch)
        elif self.cfg.context == "channel+timestep":
            img = self._normalised_timestep(image_index, batch).to(like)
        elif image_index is None:
            img = like.new_full((batch,), UNSEEN_IMAGE_COORD)
        else:
            img = self._normalised_image_index(image_index, batch).to(like)
        return torch.stack(torch.broadcast_tensors(chan[None, :], img[:, None]), dim=-1)

    def _normalised_timestep(self, timestep: Tensor | None, batch: int) -> Tensor:
        if timestep is None:
            if self.cfg.timestep is None:
                raise ValueError(
                    "context 'channel+timestep' needs a timestep: pass one per row, or train the "
                    "SAE on a store so cfg.timestep is set"
                )
            return torch.full((batch,), self.cfg.timestep / TIMESTEP_SCALE, dtype=torch.float64)
        ts = torch.as_tensor(timestep)
        if ts.shape != (batch,) or ts.is_floating_point():
            raise ValueError(
                f"timesteps must be an integer tensor of shape ({batch},), got {ts.dtype} "
                f"{tuple(ts.shape)}"
            )
        return ts.double() / TIMESTEP_SCALE

    def _normalised_image_index(self, image_index: Tensor, batch: int) -> Tensor:
        idx = torch.as_tensor(image_index)
        if idx.shape != (batch,) or idx.is_floating_point():
            raise ValueError(
                f"image_index must be an integer tensor of shape ({batch},), "
                f"got {idx.dtype} {tuple(idx.shape)}"
            )
        n = self.cfg.n_train_images
        if batch and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise ValueError(
                f"image_index must be in [0, n_train_images={n}); got range "
                f"[{int(idx.min())}, {int(idx.max())}]. For images outside the "
                "training set pass image_index=None"
            )
        return idx.double() / max(n - 1, 1)

    def tokens(self, h: Tensor, image_index: Tensor | None = None) -> Tensor:
        """Eq. 6: h̄ = [h_c flattened, ζ(c, i)], shape (B, C, K·K + n_context)."""
        self.check_input(h)
        flat = self.target_tokens(h)
        if self.zeta is None:
            return flat
        ctx = self.zeta(self.context_inputs(h.shape[0], image_index, flat))
        return torch.cat([flat, ctx], dim=-1)

    def target_tokens(self, h: Tensor) -> Tensor:
        return h.flatten(2)

    def pre_activation(self, h: Tensor, image_index: Tensor | None = None) -> Tensor:
        return self.tokens(h, image_index) @ self.W_enc + self.b_enc

    def decode_full(self, codes: Tensor) -> Tensor:
        """W_d α + b_d before Drop: (B, C, K·K + n_context)."""
        self.check_codes(codes, (self.cfg.n_channels,))
        return codes @ self.W_dec + self.b_dec

    def loss(self, h: Tensor, image_index: Tensor | None = None) -> dict[str, Tensor]:
        """Eq. 8, equal to the base loss but written for speed (the training hot path): on this
        CPU a fresh (N, L) tensor costs more in page faults than the pass that fills it, and one
        pass about a fifth of a K·K-wide matmul, so encoder, decoder and both loss terms are one
        custom autograd step (`_ChannelAwareLoss`) that allocates and passes over the codes as
        few times as the math allows; the context dims are never decoded (Drop discards them);
        |α| = α after ReLU; L0 and `fired` ((L,) bool: which latents fired, for the trainer's
        dead-latent count) come from one blocked count (`_positive_counts`).
        """
        self.check_input(h)
        d = self.cfg.d_in
        flat = self.target_tokens(h).reshape(-1, d)
        ctx = None
        if self.zeta is not None:
            ctx = self.zeta(self.context_inputs(h.shape[0], image_index, flat))
            ctx = ctx.reshape(-1, self.n_context)
        mse, l1, codes = _ChannelAwareLoss.apply(
            flat, ctx, self.W_enc, self.b_enc, self.W_dec, self.b_dec
        )
        with torch.no_grad():
            per_latent = _positive_counts(codes)
            l0 = (per_latent.sum() / max(codes.shape[0], 1)).to(mse.dtype)
            fired = per_latent > 0
        return {"loss": mse + self.cfg.l1_coeff * l1, "mse": mse, "l1": l1, "l0": l0,
                "fired": fired}  # fmt: skip

    def decode(self, codes: Tensor) -> Tensor:
        k = self.cfg.spatial
        out = self.decode_full(codes)[..., : self.cfg.d_in]  # Drop_{ρ,μ}
        return out.reshape(codes.shape[0], self.cfg.n_channels, k, k)


def _positive_counts(codes: Tensor, rows: int = 2048) -> Tensor:
    """(L,) float64: how many of the N tokens have code j > 0 (codes >= 0).

    A float sign summed by a matmul, in row blocks through one small reused buffer: on this CPU
    a fresh (N, L) temporary costs more in page faults than the pass itself, and count_nonzero
    or bool sums are 5x slower than a float sum. Each block's count (<= rows) is exact in
    float32; the float64 total is exact for any N.
    """
    n, latents = codes.shape
    buf = codes.new_empty(min(rows, max(n, 1)), latents)
    ones = codes.new_ones(1, buf.shape[0])
    total = torch.zeros(latents, dtype=torch.float64, device=codes.device)
    for i in range(0, n, rows):
        block = torch.sign(codes[i : i + rows], out=buf[: min(rows, n - i)])
        total += torch.mm(ones[:, : block.shape[0]], block)[0]
    return total


def _onednn_linear_available() -> bool:
    try:
        x = torch.ones(2, 3)
        y = torch.ops.mkldnn._linear_pointwise(x, torch.ones(4, 3), None, "relu", [], "")
    except (AttributeError, RuntimeError):
        return False
    return bool(torch.equal(y, torch.full((2, 4), 3.0)))


# oneDNN's linear (x @ Wᵀ with the ReLU in its epilogue) beats torch.mm (MKL) by 10-25% on these
# thin (N, 66) x (66, L) products on this CPU and saves the separate ReLU pass; it is a private
# op (what torch.compile's CPU backend emits), so it is probed once and torch.mm is the fallback.
_ONEDNN_LINEAR = _onednn_linear_available()


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, relu: bool = False) -> Tensor:
    """x @ weightᵀ (+ bias) (then ReLU), weight (out, in); a new tensor the caller owns."""
    if _ONEDNN_LINEAR and x.device.type == "cpu" and x.dtype == torch.float32:
        return torch.ops.mkldnn._linear_pointwise(
            x.contiguous(), weight.contiguous(), bias, "relu" if relu else "none", [], ""
        )
    y = torch.mm(x, weight.t()) if bias is None else torch.addmm(bias, x, weight.t())
    return y.clamp_min_(0) if relu else y


class _ChannelAwareLoss(torch.autograd.Function):
    """Eq. 8's two terms for N tokens: mse = Σ‖Drop(W_d α + b_d) − h̄‖² / N and l1 = Σ‖α‖₁ / N,
    α = ReLU([h̄, ζ] W_e + b_e). Returns (mse, l1, codes (N, L)); codes carry no gradient.

    Autograd's own graph for this makes ~12 passes over the (N, L) codes besides the matmuls
    (bias broadcast, ReLU copy, |α|, its sign, bias-gradient sum, dL/dx for all d + 2 columns,
    ...). Here: x = [h̄, ζ, 1] (N, d + 3) and W = [W_e; b_e], one matmul with the ReLU fused;
    the decoder reads W_d's first d columns plus a column of ones, so the same matmul returns
    each token's ‖α‖₁ (α >= 0) and the L1 gradient rides on the backward matmul. Backward is one
    in-place masked pass, dW_e (bias row included) in one matmul, dL/dζ from the two context
    rows only, and dL/dh̄ only when h requires a gradient (e.g. attribution).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        flat: Tensor,
        zeta: Tensor | None,
        w_enc: Tensor,
        b_enc: Tensor,
        w_dec: Tensor,
        b_dec: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        n, d = flat.shape
        cols = [flat] if zeta is None else [flat, zeta]
        x = torch.cat([*cols, flat.new_ones(n, 1)], dim=1)
        codes = _linear(x, torch.cat([w_enc, b_enc[None]]).t(), relu=True)
        w_out = torch.cat([w_dec[:, :d], w_dec.new_ones(w_dec.shape[0], 1)], dim=1)
        out = _linear(codes, w_out.t(), torch.cat([b_dec[:d], b_dec.new_zeros(1)]))
        resid = out[:, :d] - flat
        mse = torch.dot(resid.view(-1), resid.view(-1)) / max(n, 1)
        l1 = out[:, d].sum() / max(n, 1)
        ctx.save_for_backward(x, w_enc, codes, w_out, resid)
        ctx.n_zeta = 0 if zeta is None else zeta.shape[1]
        ctx.dec_shape = w_dec.shape
        ctx.mark_non_differentiable(codes)
        ctx.set_materialize_grads(False)  # else autograd fills an (N, L) zero grad for codes
        return mse, l1, codes

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, g_mse: Tensor | None, g_l1: Tensor | None, _g_codes: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        x, w_enc, codes, w_out, resid = ctx.saved_tensors
        n, d = resid.shape
        g_mse = resid.new_zeros(()) if g_mse is None else g_mse  # a loss without that term
        g_l1 = resid.new_zeros(()) if g_l1 is None else g_l1
        grad_out = resid.new_empty(n, d + 1)  # dLoss/d[recon, ‖α‖₁] per token
        torch.mul(resid, g_mse * (2 / max(n, 1)), out=grad_out[:, :d])
        grad_out[:, d] = g_l1 / max(n, 1)
        g_wdec = g_bdec = None
        if ctx.needs_input_grad[4] or ctx.needs_input_grad[5]:
            # The context columns of W_d / b_d are dropped by Drop: their gradient is zero.
            g_wdec = grad_out.new_zeros(ctx.dec_shape)
            g_wdec[:, :d] = torch.mm(codes.t(), grad_out[:, :d])
            g_bdec = grad_out.new_zeros(ctx.dec_shape[1])
            g_bdec[:d] = grad_out[:, :d].sum(0)
        g = _linear(grad_out, w_out)  # ours, so the ReLU mask goes in place
        torch.ops.aten.threshold_backward.grad_input(g, codes, 0, grad_input=g)
        gw = torch.mm(x.t(), g)
        g_flat = g_zeta = None
        if ctx.needs_input_grad[0]:  # through the encoder, and directly through the residual
            g_flat = torch.mm(g, w_enc[:d].t()).sub_(grad_out[:, :d])
        if ctx.n_zeta and ctx.needs_input_grad[1]:
            g_zeta = _linear(g, w_enc[d:])
        return g_flat, g_zeta, gw[:-1], gw[-1], g_wdec, g_bdec
