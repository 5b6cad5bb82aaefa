"""Architecture registry keyed by the `architecture` string of cfg.json (SAELens style)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from hsae.sae.base import CONTEXTS, WEIGHTS_FILE, BaseSAE, SAEConfig, read_config

_REGISTRY: dict[str, type[BaseSAE]] = {}
S = TypeVar("S", bound=type[BaseSAE])


def register(name: str) -> Callable[[S], S]:
    """Class decorator: `@register("channel_aware")` makes cfg.json's architecture resolvable."""

    def deco(cls: S) -> S:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(
                f"SAE architecture {name!r} is already registered to {_REGISTRY[name].__name__}"
            )
        cls.architecture = name
        _REGISTRY[name] = cls
        return cls

    return deco


def known_architectures() -> list[str]:
    return sorted(_REGISTRY)


def sae_class(architecture: str) -> type[BaseSAE]:
    try:
        return _REGISTRY[architecture]
    except KeyError:
        raise ValueError(
            f"unknown SAE architecture {architecture!r}; known: {known_architectures()}"
        ) from None


def build_sae(cfg: SAEConfig) -> BaseSAE:
    """A freshly initialised SAE of the architecture named in `cfg`."""
    return sae_class(cfg.architecture)(cfg)


def make_config(architecture: str, n_channels: int, spatial: int, **kw: Any) -> SAEConfig:
    """SAEConfig with d_in filled in for `architecture`; context defaults to the architecture's
    first supported mode (the paper's "channel+image" for channel tokens, "none" otherwise)."""
    cls = sae_class(architecture)
    kw.setdefault("context", cls.contexts[0] if cls.contexts else CONTEXTS[-1])
    d_in = cls.token_dim(n_channels, spatial)
    return SAEConfig(
        architecture=architecture, d_in=d_in, n_channels=n_channels, spatial=spatial, **kw
    )


def load_sae(path: Path | str, device: str | torch.device = "cpu") -> BaseSAE:
    """Rebuild whichever architecture `<path>/cfg.json` names and load its weights."""
    cfg = read_config(path)
    try:
        model = sae_class(cfg.architecture)(cfg)
    except ValueError as e:  # a cfg.json whose fields do not fit together
        raise ValueError(f"{Path(path) / 'cfg.json'}: {e}") from e
    model.load_weights(Path(path) / WEIGHTS_FILE)
    model.source = str(path)
    return model.to(device)
