"""Stable Diffusion 2.1-base with random weights for the benchmarks: the real U-Net and VAE from
the committed configs (`hsae/assets/configs/sd21-base`, nothing downloaded), a one-layer text
encoder that emits SD 2.1's 1024-wide states, and a tokenizer for the empty prompt only.

`tiny=True` builds the same kinds of model at toy sizes (h 64×8×8 of a 32×32 image), so the
GPU check runs anywhere in seconds.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from hsae.diffusion.backbone import DiffusionBackbone

CONFIGS = resources.files("hsae") / "assets" / "configs" / "sd21-base"
TINY_UNET = {
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "sample_size": 16,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
}
TINY_VAE = {
    "block_out_channels": (16, 32),
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "latent_channels": 4,
    "norm_num_groups": 8,
}


class EmptyPromptTokenizer:
    """What DiffusionBackbone.condition needs of a tokenizer, for prompt "" only: BOS, then EOS
    padding to 77 tokens (ids 0 and 1 of the one-layer text encoder's vocabulary)."""

    model_max_length = 77

    def __call__(self, prompts: list[str], **_: Any) -> SimpleNamespace:
        if any(prompts):
            raise ValueError("the random SD benchmark model has no vocabulary: use prompt ''")
        ids = torch.ones((len(prompts), self.model_max_length), dtype=torch.long)
        ids[:, 0] = 0
        return SimpleNamespace(input_ids=ids)


def write_byte_level_vocab(folder: Path) -> None:
    """vocab.json + merges.txt of a byte-level CLIP BPE with ids < 1000 (the text encoder's
    vocabulary): a real CLIPTokenizer, so the saved pipeline loads like a downloaded one."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in bytes_to_unicode().values():
            vocab[c + suffix] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def config(name: str) -> dict[str, Any]:
    cfg = json.loads((CONFIGS / f"{name}.json").read_text())
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def sd21_random_backbone(tiny: bool = False, seed: int = 0) -> DiffusionBackbone:
    """SD 2.1-base's U-Net (866M parameters, h 1280×8×8 at 512²) and VAE, random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET) if tiny else UNet2DConditionModel.from_config(
        config("unet"))  # fmt: skip
    vae = AutoencoderKL(**TINY_VAE) if tiny else AutoencoderKL.from_config(config("vae"))
    width = 32 if tiny else 1024
    text_cfg = {"hidden_size": width, "intermediate_size": 64, "num_attention_heads": 4}
    text_cfg |= {"num_hidden_layers": 1, "vocab_size": 1000, "max_position_embeddings": 77}
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, **text_cfg))
    name = "sd21-base-random" + ("-tiny" if tiny else "")
    return DiffusionBackbone(
        unet, config("scheduler"), vae, text, EmptyPromptTokenizer(), model_id=name
    )
