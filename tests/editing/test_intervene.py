"""SAE interventions: component parsing, κ scaling, the two modes, mask, Δ."""

from __future__ import annotations

import pytest
import torch

from hsae.editing.intervene import (
    Component,
    intervene,
    neurons_changed,
    parse_component,
    scale_components,
)
from hsae.sae import build_sae, make_config


def _sae(arch: str = "channel_aware", c: int = 6, k: int = 4, n_lat: int = 10):
    torch.manual_seed(0)
    kw = {"n_train_images": 8} if arch in ("channel_aware", "topk_channel") else {}
    if arch in ("topk_channel", "spatial_topk"):
        kw["k"] = 3
    return build_sae(make_config(arch, c, k, n_latents=n_lat, **kw)).eval()


def test_parse_component_forms_and_errors() -> None:
    sae = _sae()
    assert parse_component("2:7", sae) == Component(2, 7)
    assert parse_component("27", sae) == Component(2, 7)  # k = c·L + j with L = 10
    assert Component(2, 7).flat_index(10) == 27
    for bad in ("6:0", "0:10", "60", "a:b", "-1:2"):
        with pytest.raises(ValueError, match="component"):
            parse_component(bad, sae)


def test_scale_components_per_row_kappa() -> None:
    a = torch.ones(3, 4, 5)
    out = scale_components(a, [Component(1, 2)], torch.tensor([0.0, 2.0, 5.0]))
    assert out[:, 1, 2].tolist() == [0.0, 2.0, 5.0]
    out[:, 1, 2] = 1
    assert torch.equal(out, a)
    with pytest.raises(ValueError, match="kappa"):
        scale_components(a, [Component(0, 0)], torch.ones(2))


@pytest.mark.parametrize("arch", ["channel_aware", "flat", "spatial_topk", "topk_channel"])
def test_kappa_one_modes(arch: str) -> None:
    sae = _sae(arch)
    h = torch.randn(2, 6, 4, 4)
    comp = [Component(0, 1)]
    assert torch.equal(intervene(sae, h, comp, 1.0, mode="error_preserving"), h)
    recon = intervene(sae, h, comp, 1.0, mode="reconstruction")
    h_hat = sae.decode(sae.encode(h))
    torch.testing.assert_close(recon, h_hat)


def test_edit_moves_only_the_component_direction_and_mask_limits_it() -> None:
    sae = _sae()
    h = torch.randn(1, 6, 4, 4).abs()
    codes = sae.encode(h)
    c, j = (codes[0] == codes[0].max()).nonzero()[0].tolist()
    out = intervene(sae, h, [Component(c, j)], 3.0, mode="error_preserving")
    delta = out - h
    # channel-aware decoding is per channel: only channel c can change, by 2·α·w_j
    assert delta[0, [i for i in range(6) if i != c]].abs().max() == 0
    want = 2 * codes[0, c, j] * sae.decoder_directions[j].reshape(4, 4)
    torch.testing.assert_close(delta[0, c], want)
    mask = torch.zeros(4, 4)
    mask[:2] = 1
    masked = intervene(sae, h, [Component(c, j)], 3.0, mode="error_preserving", mask=mask)
    assert (masked - h)[0, c, 2:].abs().max() == 0
    torch.testing.assert_close((masked - h)[0, c, :2], want[:2])
    assert int(neurons_changed(h, out)[0]) == int((want.abs() > 1e-4 * h.abs().max()).sum())
    with pytest.raises(ValueError, match="mask"):
        intervene(sae, h, [Component(c, j)], 3.0, mask=torch.ones(3, 3))
    with pytest.raises(ValueError, match="mode"):
        intervene(sae, h, [Component(c, j)], 3.0, mode="paper")


def test_threshold_k_applies_before_the_edit() -> None:
    sae = _sae()
    h = torch.randn(2, 6, 4, 4)
    plain = intervene(sae, h, [Component(0, 0)], 1.0, threshold_k=2)
    from hsae.analysis.reconstruction import encode_decode

    torch.testing.assert_close(plain, encode_decode(sae, h, threshold_k=2)[0])


def test_edit_step_count_all_numbers_and_range() -> None:
    from hsae.editing.intervene import edit_step_count

    assert edit_step_count("all", 34) == 35
    assert edit_step_count(1, 34) == 1 and edit_step_count(35, 34) == 35
    for bad in (0, 36):
        with pytest.raises(ValueError, match=r"--edit-steps must be in 1\.\.35 .* got"):
            edit_step_count(bad, 34, "--edit-steps")


def test_half_window_is_the_first_half_of_the_resumed_steps() -> None:
    from hsae.editing.intervene import edit_step_count, parse_edit_steps

    assert parse_edit_steps("half") == "half" and parse_edit_steps("HALF") == "half"
    assert edit_step_count("half", 7) == 4  # 8 resumed steps
    assert edit_step_count("half", 6) == 4  # 7 resumed steps, rounded up
    assert edit_step_count("half", 0) == 1
