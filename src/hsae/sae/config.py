"""SAE configuration: the dataclass stored as `cfg.json` in every SAE checkpoint folder."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

CONTEXTS = ("channel+image", "channel", "channel+timestep", "none")  # "none" stays last


@dataclass
class SAEConfig:
    """Everything needed to rebuild an SAE, stored as `cfg.json`.

    d_in: size of one token as the SAE reconstructs it: K*K for channel tokens, C for spatial
        tokens, C*K*K for the flat SAE (context dims come on top and are not counted).
    context: what is appended to each channel token through ζ: "channel+image" (paper eq. 6),
        "channel" (image input fixed to 0), "channel+timestep" (ζ(c, t/1000) with the diffusion
        timestep of the token's h: for SAEs trained on every step of the edit window) or
        "none" (no context dims).
    k / aux_k / aux_coeff / dead_steps: TopK architectures only (aux_k None = d_in // 2; a latent
        is dead after `dead_steps` training steps without firing).
    n_train_images: normalises the image index to [0, 1] as index / (n_train_images - 1).
    input_scale: provenance only. The product of every scale folded in by `fold_input_scale`:
        the model was trained on h / input_scale but always consumes raw h once folded.
    """

    architecture: str
    d_in: int
    n_channels: int
    spatial: int
    n_latents: int = 512
    l1_coeff: float = 1e-3
    context: str = "channel+image"
    k: int | None = None
    aux_k: int | None = None
    aux_coeff: float = 1 / 32
    dead_steps: int = 1000
    n_train_images: int = 0
    unit_norm_decoder: bool = False
    hook_point: str = "unet.mid_block"
    timestep: int | None = None
    model_id: str | None = None
    model_weights: str | None = None  # the diffusion weights' fingerprint (store manifest)
    store_path: str | None = None
    input_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, got {self.context!r}")
        for name in ("d_in", "n_channels", "spatial", "n_latents", "dead_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.k is not None and not 1 <= self.k <= self.n_latents:
            raise ValueError(f"k must be in [1, n_latents={self.n_latents}], got {self.k}")
        if self.aux_k is not None and not 1 <= self.aux_k <= self.n_latents:
            raise ValueError(f"aux_k must be in [1, n_latents={self.n_latents}], got {self.aux_k}")
        if self.input_scale <= 0:
            raise ValueError(f"input_scale must be > 0, got {self.input_scale}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAEConfig:
        if not isinstance(d, dict):
            raise ValueError(f"SAE config must be a JSON object, got {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ValueError(f"unknown SAE config key(s) {unknown}; known keys: {sorted(fields)}")
        required = [n for n, f in fields.items() if f.default is dataclasses.MISSING]
        missing = [n for n in required if n not in d]
        if missing:
            raise ValueError(f"SAE config is missing required key(s) {missing}")
        for name, value in d.items():
            _check_type(name, fields[name].type, value)
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SAEConfig:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"SAE config is not valid JSON: {e}") from e
        return cls.from_dict(d)


_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
}


def _check_type(name: str, annotation: Any, value: Any) -> None:
    """JSON types are loose (a string "512" would pass __post_init__ and fail much later)."""
    parts = [p.strip() for p in str(annotation).split("|")]
    if value is None and "None" in parts:
        return
    allowed = tuple(t for p in parts for t in _TYPES.get(p, ()))
    bad_bool = isinstance(value, bool) and bool not in allowed
    if not isinstance(value, allowed) or bad_bool:
        raise ValueError(f"SAE config key {name!r} must be {annotation}, got {value!r}")
