"""DiffusionBackbone: geometry, encode/decode, conditioning, prediction types, loading."""

from __future__ import annotations

import json

import pytest
import torch

from hsae.diffusion.backbone import DiffusionBackbone


# ----- geometry and data path ------------------------------------------------------------------
def test_sd_geometry(sd_backbone):
    assert sd_backbone.vae_scale == 2
    assert sd_backbone.image_size == 16
    assert sd_backbone.latent_shape == (4, 8, 8)
    assert sd_backbone.hspace_shape() == (8, 4, 4)
    d = sd_backbone.describe()
    assert d["kind"] == "latent" and d["unet_class"] == "UNet2DConditionModel"
    assert d["prediction_type"] == "epsilon" and d["latent_shape"] == [4, 8, 8]
    json.dumps(d)  # a manifest must be able to hold it


def test_pixel_geometry(make_pixel_backbone):
    bb = make_pixel_backbone()
    assert bb.vae_scale == 1
    assert bb.image_size == 32
    assert bb.latent_shape == (3, 32, 32)
    assert bb.hspace_shape() == (16, 8, 8)
    d = bb.describe()
    assert d["kind"] == "pixel" and d["unet_class"] == "UNet2DModel"
    json.dumps(d)


def test_weights_fingerprint_tells_retrained_models_apart(pixel_unet, make_pixel_backbone):
    import copy

    from hsae.diffusion.backbone import DiffusionBackbone

    config = dict(make_pixel_backbone().scheduler.config)

    def fingerprint(unet) -> str:
        return DiffusionBackbone(unet, config, model_id="toy").describe()["weights"]

    same = fingerprint(copy.deepcopy(pixel_unet))
    assert same == fingerprint(pixel_unet) and len(same) == 16
    other = copy.deepcopy(pixel_unet)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    assert fingerprint(other) != same  # same name "toy", other weights: another model


def test_sd_encode_decode_shapes(sd_backbone):
    x = torch.rand((2, 3, 16, 16), generator=torch.Generator().manual_seed(0)) * 2 - 1
    z0 = sd_backbone.encode(x)
    assert z0.shape == (2, 4, 8, 8)
    assert torch.equal(z0, sd_backbone.encode(x))  # posterior mean: deterministic
    y = sd_backbone.decode(z0)
    assert y.shape == (2, 3, 16, 16)
    assert y.min() >= -1 and y.max() <= 1


def test_pixel_encode_decode_are_identity(make_pixel_backbone):
    bb = make_pixel_backbone()
    x = torch.rand((2, 3, 32, 32), generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(bb.encode(x), x)
    assert torch.equal(bb.decode(x), x)
    assert torch.equal(bb.decode(3 * x), (3 * x).clamp(-1, 1))


def test_condition(sd_backbone, make_pixel_backbone):
    c = sd_backbone.condition("")
    assert c.shape == (1, 77, 8)
    assert sd_backbone.condition("") is c  # cached
    assert not torch.equal(sd_backbone.condition("a cat"), c)
    assert make_pixel_backbone().condition("") is None
    assert make_pixel_backbone().condition("a cat") is None


def test_conditional_unet_needs_text_encoder(sd_parts):
    with pytest.raises(ValueError, match="text encoder"):
        DiffusionBackbone(sd_parts["unet"], sd_parts["scheduler_config"], vae=sd_parts["vae"])


# ----- prediction types ------------------------------------------------------------------------
def _example():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn((2, 3, 4, 4), generator=g, dtype=torch.float64)
    eps = torch.randn((2, 3, 4, 4), generator=g, dtype=torch.float64)
    alpha = 0.36  # √ᾱ = 0.6, √(1-ᾱ) = 0.8
    z = 0.6 * x0 + 0.8 * eps
    return x0, eps, alpha, z


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_split_output_recovers_x0_and_eps(make_pixel_backbone, prediction_type):
    x0, eps, alpha, z = _example()
    out = {
        "epsilon": eps,
        "v_prediction": 0.6 * eps - 0.8 * x0,  # v = √ᾱ ε − √(1-ᾱ) x0
        "sample": x0,
    }[prediction_type]
    bb = make_pixel_backbone(prediction_type)
    assert bb.prediction_type == prediction_type
    split = bb.split_output(out, z, alpha)
    torch.testing.assert_close(split.x0, x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(split.eps, eps, rtol=0, atol=1e-12)


def test_unsupported_prediction_type(make_pixel_backbone):
    with pytest.raises(ValueError, match=r"prediction_type 'flow'.*expected one of"):
        make_pixel_backbone("flow")
    bb = make_pixel_backbone()
    bb.prediction_type = "flow"  # set after construction: split_output must not guess
    x0, _, alpha, z = _example()
    with pytest.raises(ValueError, match="prediction_type"):
        bb.split_output(x0, z, alpha)


def test_predict_matches_direct_unet_call(sd_backbone, make_pixel_backbone, pixel_unet):
    g = torch.Generator().manual_seed(0)
    z = torch.randn((2, 3, 32, 32), generator=g)
    with torch.no_grad():
        ref = pixel_unet(z, torch.tensor([10, 10])).sample
    assert torch.equal(make_pixel_backbone().predict(z, 10, None), ref)
    z = torch.randn((2, 4, 8, 8), generator=g)
    c = sd_backbone.condition("")
    with torch.no_grad():
        ref = sd_backbone.unet(z, torch.tensor([10, 10]), encoder_hidden_states=c.repeat(2, 1, 1))
        assert torch.equal(sd_backbone.predict(z, 10, c), ref.sample)


# ----- loading ---------------------------------------------------------------------------------
@torch.no_grad()
def test_load_sd_pipeline_folder(sd_pipeline_dir, sd_backbone):
    bb = DiffusionBackbone.load(str(sd_pipeline_dir))
    assert type(bb.unet).__name__ == "UNet2DConditionModel"
    assert bb.vae is not None and bb.is_conditional
    assert bb.model_id == str(sd_pipeline_dir)
    assert bb.prediction_type == "epsilon"
    assert bb.scheduler.config.steps_offset == 1
    assert bb.scheduler.config.timestep_spacing == "leading"
    assert bb.latent_shape == sd_backbone.latent_shape
    assert bb.image_size == sd_backbone.image_size
    for prompt in ("", "a cat"):
        torch.testing.assert_close(bb.condition(prompt), sd_backbone.condition(prompt))
    z = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    c = sd_backbone.condition("")
    torch.testing.assert_close(bb.predict(z, 500, c), sd_backbone.predict(z, 500, c))
    x = torch.rand((1, 3, 16, 16), generator=torch.Generator().manual_seed(1)) * 2 - 1
    torch.testing.assert_close(bb.encode(x), sd_backbone.encode(x))


@torch.no_grad()
def test_load_pixel_pipeline_folder(pixel_pipeline_dir, make_pixel_backbone):
    bb = DiffusionBackbone.load(str(pixel_pipeline_dir))
    assert type(bb.unet).__name__ == "UNet2DModel"
    assert bb.vae is None and not bb.is_conditional
    assert bb.prediction_type == "epsilon"
    z = torch.randn((1, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        bb.predict(z, 500, None), make_pixel_backbone().predict(z, 500, None)
    )


def test_load_toy_honours_env(pixel_pipeline_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HSAE_TOY_MODEL", str(pixel_pipeline_dir))
    assert DiffusionBackbone.load("toy").latent_shape == (3, 32, 32)
    monkeypatch.setenv("HSAE_TOY_MODEL", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        DiffusionBackbone.load("toy")


def test_load_missing_folder(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        DiffusionBackbone.load(str(missing))


def test_load_unsupported_unet_class(tmp_path):
    from diffusers import DDPMScheduler

    (tmp_path / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "DanceDiffusionPipeline",
                "_diffusers_version": "0.30.0",
                "unet": ["diffusers", "UNet1DModel"],
                "scheduler": ["diffusers", "DDPMScheduler"],
            }
        )
    )
    DDPMScheduler().save_pretrained(str(tmp_path / "scheduler"))
    with pytest.raises(ValueError, match="UNet1DModel"):
        DiffusionBackbone.load(str(tmp_path))


def test_backbone_to_moves_every_network(sd_backbone) -> None:
    sd_backbone.condition("")
    assert sd_backbone.to("cpu") is sd_backbone and sd_backbone.device == torch.device("cpu")
    assert not sd_backbone._cond_cache  # cached prompt embeddings belong to the old device
    for module in (sd_backbone.unet, sd_backbone.vae, sd_backbone.text_encoder):
        assert all(p.device.type == "cpu" for p in module.parameters())
