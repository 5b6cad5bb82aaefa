"""Sparse autoencoders on H-space tensors h (B, C, K, K); no diffusers, no backbone.

Architectures (cfg.json `architecture`): "channel_aware" (the paper), "flat", "topk_channel",
"spatial_topk". `load_sae(path)` rebuilds whichever one a checkpoint folder holds.
"""

from hsae.sae.base import CFG_FILE, WEIGHTS_FILE, BaseSAE, SAEConfig
from hsae.sae.betavae import BetaVAE
from hsae.sae.channel_aware import UNSEEN_IMAGE_COORD, ChannelAwareSAE
from hsae.sae.flat import FlatSAE
from hsae.sae.pca import PCABaseline
from hsae.sae.random_proj import RandomBaseline
from hsae.sae.registry import (
    build_sae,
    known_architectures,
    load_sae,
    make_config,
    register,
    sae_class,
)
from hsae.sae.spatial import SpatialTopKSAE
from hsae.sae.threshold import choose_k_for_sparsity, sparsity, threshold_codes
from hsae.sae.topk import TopKChannelSAE, topk_relu

__all__ = [
    "CFG_FILE",
    "UNSEEN_IMAGE_COORD",
    "WEIGHTS_FILE",
    "BaseSAE",
    "BetaVAE",
    "ChannelAwareSAE",
    "FlatSAE",
    "PCABaseline",
    "RandomBaseline",
    "SAEConfig",
    "SpatialTopKSAE",
    "TopKChannelSAE",
    "build_sae",
    "choose_k_for_sparsity",
    "known_architectures",
    "load_sae",
    "make_config",
    "register",
    "sae_class",
    "sparsity",
    "threshold_codes",
    "topk_relu",
]
