"""Shared SAE interface: every architecture sees H-space tensors h of shape (B, C, K, K).

Nothing here knows about diffusers or U-Nets. `SAEConfig` lives in `config.py`, re-exported here.
A checkpoint is a folder holding `cfg.json` (an `SAEConfig`) and `sae.safetensors` (the state
dict, buffers included). Each file is written atomically (temp file + rename), weights before
config, so a crash mid-save leaves the old checkpoint or one whose shape check fails on load.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, TypeVar

import torch
from safetensors.torch import load_file
from safetensors.torch import save as st_save
from torch import Tensor, nn

from hsae.sae.config import CONTEXTS, SAEConfig
from hsae.utils.io import atomic_write_bytes, atomic_write_json, read_json

__all__ = ["CFG_FILE", "CONTEXTS", "WEIGHTS_FILE", "BaseSAE", "SAEConfig", "read_config"]

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
T = TypeVar("T", bound="BaseSAE")


def init_tied(d_tok: int, n_latents: int) -> tuple[Tensor, Tensor]:
    """Random unit-norm decoder rows (L, d_tok) and the encoder as their transpose (d_tok, L).

    Tied init (Conerly et al. 2024; Gao et al. 2024) starts every latent as a matched
    detector/writer pair, which cuts dead latents early in training.
    """
    w_dec = torch.randn(n_latents, d_tok)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return w_dec.T.clone(), w_dec


class BaseSAE(nn.Module, ABC):
    """Shared interface. Subclasses own the parameters W_enc (d_enc, L), b_enc (L),
    W_dec (L, d_out), b_dec (d_out), where row i of W_dec is feature vector w_i (the paper's
    decoder column) and the first `d_in` of the d_out dims are the ones that reach h_hat.
    """

    architecture: ClassVar[str] = ""
    code_axes: ClassVar[tuple[str, ...]] = ()
    contexts: ClassVar[tuple[str, ...]] = ("none",)

    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.source: str | None = None  # the folder `load_sae` read it from, for messages
        if cfg.architecture != self.architecture:
            raise ValueError(
                f"{type(self).__name__} needs architecture {self.architecture!r}, "
                f"got {cfg.architecture!r}"
            )
        expected = self.token_dim(cfg.n_channels, cfg.spatial)
        if cfg.d_in != expected:
            raise ValueError(
                f"{self.architecture}: d_in must be {expected} for C={cfg.n_channels}, "
                f"K={cfg.spatial}, got {cfg.d_in}"
            )
        if cfg.context not in self.contexts:
            raise ValueError(
                f"{self.architecture} supports context {self.contexts}, got {cfg.context!r}"
            )
        self.cfg = dataclasses.replace(cfg)  # own copy: fold_input_scale edits it

    def _init_params(self, d_tok: int) -> None:
        """W_enc (d_tok, L), b_enc (L), W_dec (L, d_tok), b_dec (d_tok); d_tok >= d_in."""
        w_enc, w_dec = init_tied(d_tok, self.cfg.n_latents)
        self.W_enc = nn.Parameter(w_enc)
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.n_latents))
        self.W_dec = nn.Parameter(w_dec)
        self.b_dec = nn.Parameter(torch.zeros(d_tok))
        if self.cfg.unit_norm_decoder:
            self.normalize_decoder()

    # --- what subclasses define -------------------------------------------------------------
    @classmethod
    @abstractmethod
    def token_dim(cls, n_channels: int, spatial: int) -> int:
        """d_in for an H-space of shape (C, K, K)."""

    @abstractmethod
    def pre_activation(self, h: Tensor, image_index: Tensor | None = None) -> Tensor:
        """h (B, C, K, K) -> encoder pre-activations, laid out as the codes."""

    @abstractmethod
    def decode(self, codes: Tensor) -> Tensor:
        """codes -> h_hat (B, C, K, K)."""

    @abstractmethod
    def target_tokens(self, h: Tensor) -> Tensor:
        """h (B, C, K, K) -> the tokens the SAE reconstructs, (B, *code_axes[:-1], d_in)."""

    # --- shared behaviour -------------------------------------------------------------------
    def activation(self, pre: Tensor) -> Tensor:
        return torch.relu(pre)

    def encode(self, h: Tensor, image_index: Tensor | None = None) -> Tensor:
        """h (B, C, K, K) -> codes (B, *code_axes) (the latent axis last)."""
        return self.activation(self.pre_activation(h, image_index))

    def forward(self, h: Tensor, image_index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        codes = self.encode(h, image_index)
        return self.decode(codes), codes

    def loss(self, h: Tensor, image_index: Tensor | None = None) -> dict[str, Tensor]:
        """Eq. 8: mean over tokens of ‖ĥ − h‖² (summed over a token's dims) + λ·mean ‖α‖₁."""
        h_hat, codes = self(h, image_index)
        return self._base_terms(h, h_hat, codes, self.cfg.l1_coeff)

    def _base_terms(
        self, h: Tensor, h_hat: Tensor, codes: Tensor, l1_coeff: float
    ) -> dict[str, Tensor]:
        # Every layout has codes.numel() / L tokens, and summing all squared errors then dividing
        # by the token count equals the mean over tokens of the per-token sum.
        n_tokens = codes.numel() // self.cfg.n_latents
        mse = (h_hat - h).pow(2).sum() / n_tokens
        l1 = codes.abs().sum() / n_tokens
        l0 = (codes != 0).sum().to(h.dtype) / n_tokens
        return {"loss": mse + l1_coeff * l1, "mse": mse, "l1": l1, "l0": l0}

    def check_codes(self, codes: Tensor, token_shape: tuple[int, ...]) -> None:
        want = (*token_shape, self.cfg.n_latents)
        if codes.ndim != len(want) + 1 or tuple(codes.shape[1:]) != want:
            axes = ", ".join(self.code_axes)
            raise ValueError(
                f"{self.architecture}: expected codes (B, {axes}) = (B, "
                f"{', '.join(map(str, want))}), got {tuple(codes.shape)}"
            )

    def check_input(self, h: Tensor) -> None:
        want = (self.cfg.n_channels, self.cfg.spatial, self.cfg.spatial)
        if h.ndim != 4 or tuple(h.shape[1:]) != want:
            raise ValueError(
                f"expected h of shape (B, {want[0]}, {want[1]}, {want[2]}), got {tuple(h.shape)}"
            )

    @property
    def decoder_directions(self) -> Tensor:
        """(L, d_in): each latent's feature vector restricted to the dims that reach h_hat."""
        return self.W_dec[:, : self.cfg.d_in]

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale each feature vector (row of W_dec, reconstructed dims) to unit L2 norm."""
        d = self.cfg.d_in
        self.W_dec[:, :d] /= self.W_dec[:, :d].norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def init_decoder_bias(self, mean_token: Tensor) -> None:
        """Set b_dec (reconstructed dims) to a data statistic, e.g. mean or geometric median of
        the tokens, shape (d_in,). The trainer calls this once before the first step."""
        mean_token = torch.as_tensor(mean_token).reshape(-1)
        if mean_token.numel() != self.cfg.d_in:
            raise ValueError(
                f"mean_token must have {self.cfg.d_in} values, got {mean_token.numel()}"
            )
        self.b_dec[: self.cfg.d_in] = mean_token.to(self.b_dec)

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make a model trained on h / scale consume raw h, with identical codes.

        The encoder weights that read h (first d_in rows of W_enc) are divided by `scale`; the
        reconstructed dims of W_dec and b_dec are multiplied by it, so h_hat is in raw units.
        Context dims (ζ, their encoder rows and dropped decoder dims) are untouched: they are not
        in h's units. New encode(h) == old encode(h / scale), new decode == scale * old decode.
        cfg.input_scale is multiplied by `scale` to record what was folded. (The L1 term of the
        loss is not invariant: codes are, reconstructions are scaled.)
        """
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        d = self.cfg.d_in
        self.W_enc[:d] /= scale
        self.W_dec[:, :d] *= scale
        self.b_dec[:d] *= scale
        self.cfg.input_scale *= scale

    # --- persistence ------------------------------------------------------------------------
    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write_bytes(path / WEIGHTS_FILE, st_save(state))
        atomic_write_json(path / CFG_FILE, self.cfg.to_dict())
        return path

    @classmethod
    def load(cls: type[T], path: Path | str, device: str | torch.device = "cpu") -> T:
        if cls is BaseSAE or not cls.architecture:
            raise TypeError("load a concrete SAE class, or use hsae.sae.load_sae(path)")
        cfg = read_config(path)
        if cfg.architecture != cls.architecture:
            raise ValueError(
                f"{path} holds a {cfg.architecture!r} SAE, not {cls.architecture!r}; "
                "use hsae.sae.load_sae to load any architecture"
            )
        model = cls(cfg)
        model.load_weights(Path(path) / WEIGHTS_FILE)
        return model.to(device)

    def load_weights(self, file: Path) -> None:
        if not file.is_file():
            raise FileNotFoundError(f"SAE weights not found: {file}")
        try:
            got = load_file(str(file))
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"SAE weights {file} are unreadable: {e}") from e
        want = self.state_dict()
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        if missing or extra:
            raise ValueError(f"{file}: missing tensors {missing}, unexpected tensors {extra}")
        for name, t in want.items():
            if tuple(got[name].shape) != tuple(t.shape):
                raise ValueError(
                    f"{file}: tensor {name!r} has shape {tuple(got[name].shape)} but "
                    f"cfg.json implies {tuple(t.shape)}"
                )
        self.load_state_dict(got)


def read_config(path: Path | str) -> SAEConfig:
    """Read `<path>/cfg.json` with one clear error per failure (no folder, no file, bad JSON)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"SAE checkpoint folder not found: {path}")
    raw = read_json(path / CFG_FILE, what="SAE config")
    try:
        return SAEConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path / CFG_FILE}: {e}") from e
