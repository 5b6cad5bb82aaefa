"""Shared fixtures: tiny seeded random diffusers models built from config (no downloads).

- `sd_parts` / `sd_backbone` / `sd_pipeline_dir`: a Stable-Diffusion-like latent model (U-Net with
  cross-attention, AutoencoderKL, a one-layer CLIP text encoder, and a CLIP tokenizer built offline
  from a byte-level vocab.json + merges.txt written to a temp folder).
- `pixel_unet` / `make_pixel_backbone` / `pixel_pipeline_dir`: a tiny `UNet2DModel` pixel DDPM.
- `make_oracle_backbone`: an exact-prediction "U-Net" for a Gaussian (or point-mass) data set, so
  inversion can be checked against closed forms.
- `load_script`: import a file of scripts/ or benchmarks/ as a module (not part of the package).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

# No test may reach the network: hub ids fail fast instead of downloading.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
from torch import nn

# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two spinning
# threads per test process make every U-Net call ~20x slower. HSAE_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("HSAE_TEST_THREADS", "1")))

SD_SCHEDULER = dict(  # the SD 1.x / 2.x scheduler config shape
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="leading",
    prediction_type="epsilon",
)


# ----- Stable-Diffusion-like --------------------------------------------------------------------
def _bytes_to_unicode() -> list[str]:
    """GPT-2 / CLIP byte → printable-unicode table (the 256 base symbols of byte-level BPE)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tiny_clip_vocab(folder: os.PathLike) -> None:
    """vocab.json + merges.txt of a 517-token byte-level CLIP BPE (ids < 1000)."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    chars = _bytes_to_unicode()
    for suffix in ("", "</w>"):
        for c in chars:
            vocab[c + suffix] = len(vocab)
    merges = ["a b</w>", "c a", "ca t</w>"]
    for m in merges:
        vocab[m.replace(" ", "")] = len(vocab)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")


@pytest.fixture(scope="session")
def clip_tokenizer(tmp_path_factory):
    from transformers import CLIPTokenizer

    folder = tmp_path_factory.mktemp("clip-vocab")
    write_tiny_clip_vocab(folder)
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


@pytest.fixture(scope="session")
def sd_parts(clip_tokenizer) -> dict:
    """Seeded tiny SD components: latent 4×8×8, image 3×16×16, text (1, 77, 8), h 8×4×4."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=2,
        attention_head_dim=2,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(4, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=2,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=8,
            intermediate_size=16,
            num_attention_heads=2,
            num_hidden_layers=1,
            vocab_size=1000,
            max_position_embeddings=77,
            projection_dim=8,
        )
    )
    return dict(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=clip_tokenizer,
        scheduler_config=dict(SD_SCHEDULER),
    )


@pytest.fixture(scope="session")
def sd_backbone(sd_parts):
    from hsae.diffusion.backbone import DiffusionBackbone

    return DiffusionBackbone(**sd_parts, model_id="tiny-sd")


@pytest.fixture(scope="session")
def sd_pipeline_dir(sd_parts, tmp_path_factory):
    """The tiny SD saved as a diffusers StableDiffusionPipeline folder."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=sd_parts["vae"],
        text_encoder=sd_parts["text_encoder"],
        tokenizer=sd_parts["tokenizer"],
        unet=sd_parts["unet"],
        scheduler=DDIMScheduler.from_config(sd_parts["scheduler_config"]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = tmp_path_factory.mktemp("tiny-sd")
    pipe.save_pretrained(str(folder))
    return folder


# ----- pixel DDPM --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pixel_unet():
    """Seeded tiny UNet2DModel: image 3×32×32, h 16×8×8."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
        norm_num_groups=4,
        attention_head_dim=8,
    ).eval()


def ddpm_config(prediction_type: str = "epsilon", **kw) -> dict:
    from diffusers import DDPMScheduler

    return dict(DDPMScheduler(prediction_type=prediction_type, **kw).config)


@pytest.fixture(scope="session")
def make_pixel_backbone(pixel_unet) -> Callable:
    """make_pixel_backbone(prediction_type="epsilon", **scheduler_kw) → DiffusionBackbone."""
    from hsae.diffusion.backbone import DiffusionBackbone

    def make(prediction_type: str = "epsilon", **kw):
        return DiffusionBackbone(
            pixel_unet, ddpm_config(prediction_type, **kw), model_id=f"tiny-{prediction_type}"
        )

    return make


@pytest.fixture(scope="session")
def pixel_pipeline_dir(pixel_unet, tmp_path_factory):
    """The tiny pixel DDPM saved as a diffusers DDPMPipeline folder."""
    from diffusers import DDPMPipeline, DDPMScheduler

    folder = tmp_path_factory.mktemp("tiny-ddpm")
    DDPMPipeline(unet=pixel_unet, scheduler=DDPMScheduler()).save_pretrained(str(folder))
    return folder


# ----- oracle ------------------------------------------------------------------------------------
class OracleUNet(nn.Module):
    """Exact denoiser for data ~ N(mean, std² I) per pixel (std = 0: a point mass at `mean`).

    At ᾱ = alphas_cumprod[t], z = √ᾱ x + √(1-ᾱ) ε has E[ε | z] = √(1-ᾱ)(z - √ᾱ mean) / (ᾱ std² +
    1 - ᾱ). That ε goes through `mid_block` (an nn.Identity, so the H-space hook sees and can edit
    it), then is returned as the scheduler's `prediction_type` (epsilon, v_prediction or sample).
    """

    def __init__(
        self,
        mean: torch.Tensor,
        alphas_cumprod: torch.Tensor,
        prediction_type: str,
        std: float = 0.0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        c, s, _ = mean.shape
        self.config = SimpleNamespace(sample_size=s, in_channels=c, cross_attention_dim=None)
        self.mid_block = nn.Identity()
        self._anchor = nn.Parameter(torch.zeros((), dtype=dtype))  # sets backbone device/dtype
        self.register_buffer("mean", mean.to(dtype))
        self.register_buffer("acp", alphas_cumprod.to(dtype))
        self.prediction_type = prediction_type
        self.std = float(std)
        self.n_calls = 0

    def forward(self, z: torch.Tensor, t: torch.Tensor, **_: object) -> SimpleNamespace:
        self.n_calls += 1
        a = self.acp[t].view(-1, 1, 1, 1)
        eps = (1 - a).sqrt() * (z - a.sqrt() * self.mean) / (a * self.std**2 + 1 - a)
        eps = self.mid_block(eps)
        x0 = (z - (1 - a).sqrt() * eps) / a.sqrt()
        if self.prediction_type == "epsilon":
            out = eps
        elif self.prediction_type == "v_prediction":
            out = a.sqrt() * eps - (1 - a).sqrt() * x0
        else:
            out = x0
        return SimpleNamespace(sample=out)


@pytest.fixture(scope="session")
def make_oracle_backbone() -> Callable:
    """make_oracle_backbone(prediction_type, std=0.0, scheduler=SD_SCHEDULER, shape=(2, 4, 4))."""
    from diffusers import DDIMScheduler

    from hsae.diffusion.backbone import DiffusionBackbone

    def make(
        prediction_type: str = "epsilon",
        std: float = 0.0,
        scheduler: dict | None = None,
        shape: tuple[int, int, int] = (2, 4, 4),
        seed: int = 0,
    ):
        cfg = {**(scheduler or SD_SCHEDULER), "prediction_type": prediction_type}
        acp = DDIMScheduler.from_config(cfg).alphas_cumprod
        mean = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        unet = OracleUNet(mean, acp, prediction_type, std=std)
        return DiffusionBackbone(unet, cfg, model_id=f"oracle-{prediction_type}")

    return make


@pytest.fixture(scope="session")
def load_script() -> Callable:
    """load(name, folder="scripts"): a file of scripts/ or benchmarks/ as a module. Its folder
    goes on sys.path first, since benchmarks import their sibling modules."""
    root = Path(__file__).resolve().parents[1]

    def load(name: str, folder: str = "scripts"):
        if str(root / folder) not in sys.path:
            sys.path.insert(0, str(root / folder))
        spec = importlib.util.spec_from_file_location(name, root / folder / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
