"""`DiffusionBackbone`: one interface over Stable Diffusion 1.x/2.x and pixel DDPMs (diffusers).

It owns the U-Net, the DDIM schedule's alphas, encode/decode (VAE or identity) and prompt
conditioning, and converts any `prediction_type` (epsilon, v_prediction, sample) into the
(x0, eps) pair that DDIM needs. It knows nothing of SAEs: edits reach h through
`hsae.diffusion.hspace`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hsae.utils.device import resolve_device, resolve_dtype

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TOY_MODEL_DIR = Path(__file__).parents[1] / "assets" / "toy-ddpm"
FINGERPRINT_VALUES = 256  # values sampled per parameter tensor


def toy_model_path() -> Path:
    """The bundled toy DDPM, or HSAE_TOY_MODEL when set (e.g. a freshly retrained copy)."""
    return Path(os.environ.get("HSAE_TOY_MODEL", TOY_MODEL_DIR))


@dataclass
class ModelOutputs:
    x0: torch.Tensor
    eps: torch.Tensor


class DiffusionBackbone:
    """A diffusion model split into the pieces the H-space method needs."""

    def __init__(
        self,
        unet: nn.Module,
        scheduler_config: dict[str, Any],
        vae: nn.Module | None = None,
        text_encoder: nn.Module | None = None,
        tokenizer: Any = None,
        model_id: str = "custom",
    ) -> None:
        from diffusers import DDIMScheduler

        # diffusers models carry `config` and typed call signatures torch's nn.Module does not
        # declare: typed Any so the checker does not see a Tensor | Module attribute union.
        self.unet: Any = unet.eval().requires_grad_(False)
        self.vae: Any = vae.eval().requires_grad_(False) if vae is not None else None
        self.text_encoder: Any = (
            text_encoder.eval().requires_grad_(False) if text_encoder is not None else None
        )
        self.tokenizer = tokenizer
        self.model_id = model_id
        self._fingerprint: str | None = None
        # DDIM is rebuilt from the model's own scheduler config, so betas and prediction_type
        # are the ones the model was trained with.
        self.scheduler = DDIMScheduler.from_config(dict(scheduler_config))
        self.prediction_type = self.scheduler.config.prediction_type
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"{model_id}: prediction_type {self.prediction_type!r} is not supported; "
                f"expected one of {PREDICTION_TYPES}"
            )
        self.is_conditional = bool(getattr(unet.config, "cross_attention_dim", None))
        if self.is_conditional and (text_encoder is None or tokenizer is None):
            raise ValueError(
                f"{model_id}: a cross-attention U-Net needs a text encoder and tokenizer"
            )
        self._cond_cache: dict[str, torch.Tensor] = {}

    # ----- loading -------------------------------------------------------------------------
    def to(
        self, device: str | torch.device, dtype: str | torch.dtype | None = None
    ) -> DiffusionBackbone:
        """Move every network to `device` (and cast to `dtype`), both checked by
        hsae.utils.device; returns self."""
        dev = resolve_device(device)
        cast = None if dtype is None else resolve_dtype(dtype, dev)
        for name in ("unet", "vae", "text_encoder"):
            module = getattr(self, name)
            if module is not None:
                module.to(dev) if cast is None else module.to(dev, cast)
        self._cond_cache.clear()
        return self

    @classmethod
    def load(
        cls,
        model: str = "toy",
        dtype: str | torch.dtype | None = torch.float32,
        device: str | torch.device = "cpu",
    ) -> DiffusionBackbone:
        """Load `toy`, a local diffusers pipeline folder, or a hub id (needs network or cache),
        onto `device` in `dtype` (names as for --dtype; auto = float16 on GPUs, float32 on CPU)."""
        dev = resolve_device(device)  # a bad device or dtype fails before minutes of loading
        return cls._load(model, resolve_dtype(dtype, dev)).to(dev)

    @classmethod
    def _load(cls, model: str, dtype: torch.dtype) -> DiffusionBackbone:
        from diffusers import DiffusionPipeline

        source = str(toy_model_path()) if model == "toy" else model
        if model == "toy" and not (Path(source) / "model_index.json").is_file():
            raise FileNotFoundError(
                f"bundled toy model not found at {source} (expected model_index.json there); "
                "retrain it with `make retrain-toy` or set HSAE_TOY_MODEL"
            )
        looks_local = source.startswith(("/", ".", "~")) or Path(source).exists()
        if looks_local and not (Path(source).expanduser() / "model_index.json").is_file():
            raise FileNotFoundError(
                f"model folder {source} has no model_index.json: expected a diffusers pipeline "
                "folder (model_index.json, unet/, scheduler/, ...)"
            )
        source = str(Path(source).expanduser()) if looks_local else source
        try:
            index = DiffusionPipeline.load_config(source)
        except Exception as e:  # network, missing folder, bad JSON: one message for all
            raise FileNotFoundError(
                f"cannot load model {model!r}: expected a diffusers pipeline folder with "
                f"model_index.json or a hub id available offline ({type(e).__name__}: {e})"
            ) from e
        sched_cfg = _load_scheduler_config(source, index, model)
        unet_cls = index.get("unet", [None, None])[1]
        if unet_cls == "UNet2DModel":
            from diffusers import UNet2DModel

            unet = UNet2DModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype)
            return cls(unet, sched_cfg, model_id=model)
        if unet_cls == "UNet2DConditionModel":
            return cls._load_latent(source, sched_cfg, model, dtype)
        raise ValueError(
            f"model {model!r}: unsupported U-Net class {unet_cls!r} in model_index.json; "
            "expected UNet2DModel (pixel DDPM) or UNet2DConditionModel (Stable Diffusion)"
        )

    @classmethod
    def _load_latent(
        cls, source: str, sched_cfg: dict, model: str, dtype: torch.dtype
    ) -> DiffusionBackbone:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel

        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype)
        text = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", torch_dtype=dtype)
        tok = AutoTokenizer.from_pretrained(source, subfolder="tokenizer")
        return cls(unet, sched_cfg, vae=vae, text_encoder=text, tokenizer=tok, model_id=model)

    # ----- geometry ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def vae_scale(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        size = self.unet.config.sample_size
        size = size[0] if isinstance(size, list | tuple) else size
        return int(size) * self.vae_scale

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.image_size // self.vae_scale
        return (int(self.unet.config.in_channels), s, s)

    def hspace_shape(self) -> tuple[int, int, int]:
        """(C, K, K) of unet.mid_block's output, found by one tiny forward pass."""
        from hsae.diffusion.hspace import hspace_hook

        z = torch.zeros((1, *self.latent_shape), device=self.device, dtype=self.dtype)
        with torch.no_grad(), hspace_hook(self.unet) as rec:
            self.predict(z, int(self.scheduler.config.num_train_timesteps) // 2, self.condition(""))
        return tuple(rec.last.shape[1:])  # type: ignore[return-value]

    # ----- data path -----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, H, W) → z0. The VAE posterior mean keeps this deterministic."""
        images = images.to(self.device, self.dtype)
        if self.vae is None:
            return images
        sf = float(self.vae.config.scaling_factor)
        return self.vae.encode(images).latent_dist.mean * sf

    @torch.no_grad()
    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return z0.clamp(-1, 1)
        sf = float(self.vae.config.scaling_factor)
        return self.vae.decode(z0 / sf).sample.clamp(-1, 1)

    @torch.no_grad()
    def condition(self, prompt: str = "") -> torch.Tensor | None:
        """Text embedding of `prompt` (1, L, D) for conditional U-Nets; None for pixel DDPMs."""
        if not self.is_conditional:
            return None
        if prompt not in self._cond_cache:
            tok = self.tokenizer(
                [prompt],
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            emb = self.text_encoder(tok.input_ids.to(self.device))[0]
            self._cond_cache[prompt] = emb.to(self.dtype)
        return self._cond_cache[prompt]

    def predict(self, z: torch.Tensor, timestep: int, cond: torch.Tensor | None) -> torch.Tensor:
        """Raw U-Net output at one timestep (whatever the prediction_type is)."""
        t = torch.full((z.shape[0],), int(timestep), device=z.device, dtype=torch.long)
        if cond is None:
            return self.unet(z, t).sample
        return self.unet(z, t, encoder_hidden_states=cond.expand(z.shape[0], -1, -1)).sample

    def split_output(self, out: torch.Tensor, z: torch.Tensor, alpha: float) -> ModelOutputs:
        """Turn the model output at ᾱ = alpha into (x0, eps), honouring prediction_type."""
        a, s = alpha**0.5, (1 - alpha) ** 0.5
        if self.prediction_type == "epsilon":
            return ModelOutputs(x0=(z - s * out) / a, eps=out)
        if self.prediction_type == "v_prediction":
            return ModelOutputs(x0=a * z - s * out, eps=a * out + s * z)
        if self.prediction_type == "sample":
            return ModelOutputs(x0=out, eps=(z - a * out) / s)
        raise ValueError(
            f"{self.model_id}: prediction_type {self.prediction_type!r} is not supported; "
            f"expected one of {PREDICTION_TYPES}"
        )

    def describe(self) -> dict[str, Any]:
        """What a store manifest records about the model."""
        return {
            "model_id": self.model_id,
            "kind": "latent" if self.vae is not None else "pixel",
            "unet_class": type(self.unet).__name__,
            "prediction_type": self.prediction_type,
            "image_size": self.image_size,
            "latent_shape": list(self.latent_shape),
            "weights": self.weights_fingerprint(),
        }

    def weights_fingerprint(self) -> str:
        """Short hash of the U-Net, VAE and text-encoder weights: a strided sample of every
        parameter, so it is fast even for SD. Computed once (the weights are frozen)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for name in ("unet", "vae", "text_encoder"):
                _module_digest(h, getattr(self, name), name)
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint


def _module_digest(h: Any, module: nn.Module | None, name: str) -> None:
    if module is None:
        return
    h.update(name.encode())
    for key, p in module.state_dict().items():
        flat = p.detach().reshape(-1)
        stride = max(1, flat.numel() // FINGERPRINT_VALUES)
        sample = flat[::stride].to(torch.float64).cpu().contiguous()
        h.update(f"{key}:{tuple(p.shape)}".encode())
        h.update(sample.numpy().tobytes())


def _load_scheduler_config(source: str, index: dict, model: str) -> dict:
    from diffusers import DDIMScheduler

    if "scheduler" not in index:
        raise ValueError(f"model {model!r}: model_index.json has no scheduler entry")
    try:
        return dict(DDIMScheduler.load_config(source, subfolder="scheduler"))
    except Exception as e:
        raise FileNotFoundError(f"model {model!r}: cannot read scheduler config: {e}") from e
