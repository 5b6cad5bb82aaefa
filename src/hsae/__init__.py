"""hspace-sae: H-space sparse autoencoders for diffusion models.

The public API, in the order of the method (this example runs as a test)::

    >>> import torch
    >>> from hsae import DiffusionBackbone, capture_h, invert
    >>> backbone = DiffusionBackbone.load("toy")  # or a diffusers folder / hub id
    >>> images = torch.zeros(1, 3, backbone.image_size, backbone.image_size)  # in [-1, 1]
    >>> inv = invert(backbone, backbone.encode(images), t=0.7, steps=10)  # DDIM to t = 0.7T
    >>> h = capture_h(backbone, inv)  # H-space: unet.mid_block's output at that step
    >>> tuple(h.shape)
    (1, 128, 8, 8)

Names are imported on first use, so `import hsae` stays cheap (the CLI and the SAE package do
not pay for diffusers until they need it).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # diffusion: the model, inversion, the H-space hook
    "DiffusionBackbone": "hsae.diffusion.backbone",
    "invert": "hsae.diffusion.invert",
    "resume": "hsae.diffusion.invert",
    "capture_h": "hsae.diffusion.invert",
    "ddim_grid": "hsae.diffusion.invert",
    "hspace_hook": "hsae.diffusion.hspace",
    # data: images and the activation store
    "ImageDataset": "hsae.data.images",
    "load_image": "hsae.data.images",
    "ActivationStore": "hsae.data.store",
    "ActivationStoreWriter": "hsae.data.store_writer",
    # SAEs
    "SAEConfig": "hsae.sae.base",
    "BaseSAE": "hsae.sae.base",
    "ChannelAwareSAE": "hsae.sae.channel_aware",
    "FlatSAE": "hsae.sae.flat",
    "SpatialTopKSAE": "hsae.sae.spatial",
    "TopKChannelSAE": "hsae.sae.topk",
    "build_sae": "hsae.sae.registry",
    "make_config": "hsae.sae.registry",
    "load_sae": "hsae.sae.registry",
    "threshold_codes": "hsae.sae.threshold",
    # training
    "TrainConfig": "hsae.training.config",
    "train": "hsae.training.loop",
    # editing
    "HSpaceEditor": "hsae.editing.editor",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hsae' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
