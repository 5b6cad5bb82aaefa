"""A Stable-Diffusion-2.1-sized check without weights: the real U-Net and VAE configs (committed
JSON, random weights, nothing downloaded) extract h for one 512×512 image and run one edit step.

It needs ~5 GB of RAM and several minutes on a CPU, more than the suite's budget, so it runs
only with HSAE_SD_CHECK=1 (`make sd-check`); docs/gpu.md records its peak memory.
"""

from __future__ import annotations

import json
import os
import resource
from importlib import resources

import pytest
import torch

from hsae.diffusion.backbone import DiffusionBackbone
from hsae.diffusion.invert import invert, resume

CONFIGS = resources.files("hsae") / "assets" / "configs" / "sd21-base"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("HSAE_SD_CHECK"), reason="set HSAE_SD_CHECK=1"),
]


def _config(name: str) -> dict:
    cfg = json.loads((CONFIGS / f"{name}.json").read_text())
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def _sd21_backbone(tokenizer) -> DiffusionBackbone:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(_config("unet"))
    vae = AutoencoderKL.from_config(_config("vae"))
    # The text encoder only has to emit SD 2.1's 1024-wide states; one layer does.
    text_cfg = {"hidden_size": 1024, "intermediate_size": 64, "num_attention_heads": 16}
    text_cfg |= {"num_hidden_layers": 1, "vocab_size": 1000, "max_position_embeddings": 77}
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, **text_cfg))
    sched = _config("scheduler")
    return DiffusionBackbone(unet, sched, vae, text, tokenizer, model_id="sd21-base-random")


def test_sd21_sized_extract_and_one_edit_step(clip_tokenizer) -> None:
    from hsae.data.extract import h_for_images

    torch.set_num_threads(max(1, torch.get_num_threads()))
    bb = _sd21_backbone(clip_tokenizer)
    assert sum(p.numel() for p in bb.unet.parameters()) > 8e8  # the real 866M-parameter U-Net
    assert bb.image_size == 512 and bb.hspace_shape() == (1280, 8, 8)
    x = torch.rand((1, 3, 512, 512), generator=torch.Generator().manual_seed(0)) * 2 - 1
    steps, t = 2, 0.5  # a 2-step grid: h at its upper timestep after 2 inversion calls
    h = h_for_images(bb, x, t, steps, "")
    assert h.shape == (1, 1280, 8, 8) and torch.isfinite(h).all()
    inv = invert(bb, bb.encode(x), t, steps)
    # Capture: the first resumed call sees exactly z_t, so it captures the extracted h.
    z_plain, captured = resume(bb, inv.z_t, inv.t_index, inv.grid)
    torch.testing.assert_close(captured, h, rtol=1e-4, atol=1e-4)
    # Replace: one edit step with h -> 2h changes the result; the image decodes at 512².
    z_edit, _ = resume(bb, inv.z_t, inv.t_index, inv.grid, h_edit=lambda v: 2 * v)
    assert float((z_edit - z_plain).abs().max()) > 1e-3
    image = bb.decode(z_edit)
    assert image.shape == (1, 3, 512, 512) and torch.isfinite(image).all()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {peak:.2f} GiB")
