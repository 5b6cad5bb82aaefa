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
    - "none": no context dims at all; tokens are the K·K values (d = K·K).
    """

    code_axes: ClassVar[tuple[str, ...]] = ("channel", "latent")
    contexts: ClassVar[tuple[str, ...]] = ("channel+image", "channel", "none")

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
        elif image_index is None:
            img = like.new_full((batch,), UNSEEN_IMAGE_COORD)
        else:
            img = self._normalised_image_index(image_index, batch).to(like)
        return torch.stack(torch.broadcast_tensors(chan[None, :], img[:, None]), dim=-1)

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
        CPU one elementwise pass over the (N, L) codes costs about as much as the K·K-wide matmul,
        so the encoder is one custom autograd step (`_EncodeReLU`) that makes as few passes as
        the math allows; the context dims are never decoded (Drop discards them); |α| = α after
        ReLU; L0 and `fired` ((L,) bool: which latents fired, for the trainer's dead-latent count)
        come from cheap reductions.
        """
        self.check_input(h)
        d = self.cfg.d_in
        flat = self.target_tokens(h).reshape(-1, d)
        ctx = None
        if self.zeta is not None:
            ctx = self.zeta(self.context_inputs(h.shape[0], image_index, flat))
            ctx = ctx.reshape(-1, self.n_context)
        codes = _EncodeReLU.apply(flat, ctx, self.W_enc, self.b_enc)
        # A column of ones beside W_d[:, :d] makes the decoder matmul also return each token's
        # ‖α‖₁ (α >= 0), so the L1 term and its gradient ride on the matmul instead of two more
        # passes over the codes.
        w = torch.cat([self.W_dec[:, :d], codes.new_ones(codes.shape[1], 1)], dim=1)
        out = torch.addmm(torch.cat([self.b_dec[:d], self.b_dec.new_zeros(1)]), codes, w)
        n = flat.shape[0]
        mse = torch.nn.functional.mse_loss(out[:, :d], flat, reduction="sum") / n
        l1 = out[:, d].sum() / n
        with torch.no_grad():  # codes >= 0; a float sign-sum is 7-10x faster than
            # count_nonzero or (codes > 0).sum() here, and exact below 2**24 in float32
            exact = torch.float32 if codes.numel() < 2**24 else torch.float64
            l0 = codes.sign().sum(dtype=exact).to(mse.dtype) / n
            fired = codes.amax(0) > 0
        return {"loss": mse + self.cfg.l1_coeff * l1, "mse": mse, "l1": l1, "l0": l0,
                "fired": fired}  # fmt: skip

    def decode(self, codes: Tensor) -> Tensor:
        k = self.cfg.spatial
        out = self.decode_full(codes)[..., : self.cfg.d_in]  # Drop_{ρ,μ}
        return out.reshape(codes.shape[0], self.cfg.n_channels, k, k)


class _EncodeReLU(torch.autograd.Function):
    """α = ReLU([h̄, ζ] W_e + b_e) for N tokens, with the bias folded into the matmul.

    Autograd's own graph for this makes ~9 passes over the (N, L) pre-activations besides the
    matmuls (bias broadcast, ReLU copy, bias-gradient sum, dL/dx for all d + 2 columns, ...).
    Here: x = [h̄, ζ, 1] (N, d + 3) and W = [W_e; b_e], one matmul, ReLU in place; backward is
    one masked pass, dW (bias row included) in one matmul, and dL/dζ from the two context rows
    only (h̄ is data: its gradient is computed only when h requires one).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, flat: Tensor, zeta: Tensor | None, w_enc: Tensor, b_enc: Tensor
    ) -> Tensor:
        cols = [flat] if zeta is None else [flat, zeta]
        x = torch.cat([*cols, flat.new_ones(flat.shape[0], 1)], dim=1)
        codes = torch.mm(x, torch.cat([w_enc, b_enc[None]])).clamp_min_(0)
        ctx.save_for_backward(x, w_enc, codes)
        ctx.n_zeta = 0 if zeta is None else zeta.shape[1]
        return codes

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, w_enc, codes = ctx.saved_tensors
        flat_dim = x.shape[1] - 1 - ctx.n_zeta
        g = torch.ops.aten.threshold_backward(grad, codes, 0)
        gw = torch.mm(x.t(), g)
        g_flat = g_zeta = None
        if ctx.needs_input_grad[0]:  # only if h itself requires grad (e.g. attribution)
            g_flat = torch.mm(g, w_enc[:flat_dim].t())
        if ctx.n_zeta and ctx.needs_input_grad[1]:
            g_zeta = torch.mm(g, w_enc[flat_dim:].t())
        return g_flat, g_zeta, gw[:-1], gw[-1]
