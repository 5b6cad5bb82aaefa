"""The editing API: its docstring example runs, and its edits follow the rules they name."""

from __future__ import annotations

import doctest

import pytest
import torch

import hsae
from hsae.editing import editor as E
from hsae.editing.units import direction_feature, sae_feature
from hsae.sae import build_sae, make_config


@pytest.mark.slow
def test_docstring_example_runs() -> None:
    from hsae.diffusion.backbone import toy_model_path

    if not (toy_model_path() / "model_index.json").is_file():
        pytest.skip("bundled toy model not present")
    result = doctest.testmod(E, verbose=False)
    assert result.attempted >= 5 and result.failed == 0


def test_exported_from_the_package() -> None:
    assert hsae.HSpaceEditor is E.HSpaceEditor


def _sae(arch: str = "channel_aware"):
    torch.manual_seed(0)
    kw: dict = {"k": 2} if arch == "spatial_topk" else {}
    if arch == "channel_aware":
        kw["n_train_images"] = 4
    return build_sae(make_config(arch, 4, 3, n_latents=5, **kw)).eval()


@pytest.mark.parametrize("arch", ["channel_aware", "spatial_topk", "flat"])
def test_rules_are_exact(arch: str) -> None:
    sae = _sae(arch)
    h = torch.randn(2, 4, 3, 3)
    from hsae.editing.intervene import encode_tokens, n_tokens

    m = n_tokens(sae)
    add = sae_feature(sae, 1, None, "add", torch.full((m,), 0.5))
    assert torch.equal(add.apply(h, 0.0), h)  # strength 0: h bit for bit
    codes = encode_tokens(sae, h).clone()
    codes[:, :, 1] += 2.0 * 0.5
    want = h + sae.decode(codes.reshape_as(sae.encode(h))) - sae.decode(sae.encode(h))
    assert torch.allclose(add.apply(h, 2.0), want, atol=1e-5)
    scale = sae_feature(sae, 1, [0], "scale", unit="component")
    k = 3.0
    codes = encode_tokens(sae, h).clone()
    codes[:, 0, 1] *= k
    want = h + sae.decode(codes.reshape_as(sae.encode(h))) - sae.decode(sae.encode(h))
    assert torch.allclose(scale.apply(h, scale.strength_to_u(k)), want, atol=1e-5)


def test_direction_feature_adds_the_vector() -> None:
    d = torch.randn(4, 3, 3)
    f = direction_feature(d, "d")
    h = torch.randn(2, 4, 3, 3)
    assert torch.allclose(f.apply(h, torch.tensor([1.0, -2.0])), h + torch.stack([d, -2 * d]))


def test_bad_inputs_name_what_was_expected() -> None:
    sae = _sae()
    with pytest.raises(ValueError, match="latent 9"):
        sae_feature(sae, 9, None, "add", torch.ones(4))
    with pytest.raises(ValueError, match="rule"):
        sae_feature(sae, 0, None, "shift", torch.ones(4))
    with pytest.raises(ValueError, match="token 7"):
        sae_feature(sae, 0, [7], "add", torch.ones(4))
