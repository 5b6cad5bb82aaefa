"""H-space hook on unet.mid_block: capture, replace, call selection, clean-up, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hsae.diffusion.hspace import HSpaceRecorder, hspace_hook, mid_block_of

# (fixture name, U-Net input shape, expected h shape per sample)
UNETS = {
    "sd": ((4, 8, 8), (8, 4, 4)),
    "pixel": ((3, 32, 32), (16, 8, 8)),
}


@pytest.fixture(params=sorted(UNETS))
def unet_case(request, sd_parts, pixel_unet):
    """(call(z) -> U-Net output, unet, input shape, h shape) for both diffusers U-Net classes."""
    name = request.param
    in_shape, h_shape = UNETS[name]
    if name == "sd":
        unet = sd_parts["unet"]
        cond = torch.randn((1, 77, 8), generator=torch.Generator().manual_seed(3))

        def call(z):
            t = torch.full((z.shape[0],), 500, dtype=torch.long)
            return unet(z, t, encoder_hidden_states=cond.expand(z.shape[0], -1, -1)).sample

    else:
        unet = pixel_unet

        def call(z):
            return unet(z, torch.full((z.shape[0],), 500, dtype=torch.long)).sample

    z = torch.randn((2, *in_shape), generator=torch.Generator().manual_seed(1))
    return call, unet, z, h_shape


def _n_hooks(unet: nn.Module) -> int:
    return len(unet.mid_block._forward_hooks)


@torch.no_grad()
def test_capture_shape(unet_case):
    call, unet, z, h_shape = unet_case
    with hspace_hook(unet) as rec:
        call(z)
    assert isinstance(rec, HSpaceRecorder)
    assert rec.calls == 1 and len(rec.captured) == 1
    assert rec.last.shape == (2, *h_shape)


@torch.no_grad()
def test_hook_paths_are_bit_identical_to_no_hook(unet_case):
    call, unet, z, _ = unet_case
    ref = call(z)
    with hspace_hook(unet) as rec:
        captured = call(z)
    h = rec.last
    with hspace_hook(unet, capture=False, replace=lambda h: h):
        identity = call(z)
    with hspace_hook(unet, replace=h) as rec2:
        replaced = call(z)
    assert torch.equal(captured, ref)
    assert torch.equal(identity, ref)
    assert torch.equal(replaced, ref)
    assert torch.equal(rec2.last, h)  # capture sees the original h on a replaced call too


@torch.no_grad()
def test_nontrivial_replacement_changes_output_and_capture_keeps_original(unet_case):
    call, unet, z, _ = unet_case
    ref = call(z)
    with hspace_hook(unet) as rec:
        call(z)
    h = rec.last
    with hspace_hook(unet, replace=lambda x: 2 * x + 1) as rec2:
        edited = call(z)
    assert not torch.allclose(edited, ref)
    assert torch.equal(rec2.last, h)  # captured before replacement


@torch.no_grad()
def test_calls_selects_loop_iterations(unet_case):
    call, unet, z, _ = unet_case
    ref = call(z)
    with hspace_hook(unet, capture={1, 2}, replace=torch.zeros_like, calls={0}) as rec:
        outs = [call(z) for _ in range(3)]
    assert rec.calls == 3
    assert len(rec.captured) == 2  # capture={1, 2}
    assert not torch.allclose(outs[0], ref)
    assert torch.equal(outs[1], ref)
    assert torch.equal(outs[2], ref)


@torch.no_grad()
def test_wrong_shape_replacement_is_a_clear_error(unet_case):
    call, unet, z, h_shape = unet_case
    bad = torch.zeros((2, h_shape[0] + 1, *h_shape[1:]))
    with (
        pytest.raises(ValueError, match=r"replacement h has shape .* expected"),
        hspace_hook(unet, replace=bad),
    ):
        call(z)
    assert _n_hooks(unet) == 0
    with (
        pytest.raises(ValueError, match="shape"),
        hspace_hook(unet, replace=lambda h: h[:, :1]),
    ):
        call(z)
    assert _n_hooks(unet) == 0


@torch.no_grad()
def test_hook_removed_after_block_and_after_exception(unet_case):
    call, unet, z, _ = unet_case
    before = _n_hooks(unet)
    with hspace_hook(unet, replace=torch.zeros_like):
        assert _n_hooks(unet) == before + 1
    assert _n_hooks(unet) == before
    with pytest.raises(RuntimeError, match="boom"), hspace_hook(unet, replace=torch.zeros_like):
        raise RuntimeError("boom")
    assert _n_hooks(unet) == before
    # ... and a later plain call is the unhooked model again.
    ref = call(z)
    with hspace_hook(unet, capture=False):
        assert torch.equal(call(z), ref)


def test_last_without_any_call_is_a_clear_error(pixel_unet):
    with hspace_hook(pixel_unet) as rec, pytest.raises(RuntimeError, match="nothing captured"):
        rec.last  # noqa: B018


def test_module_without_mid_block():
    with pytest.raises(ValueError, match="mid_block"), hspace_hook(nn.Linear(2, 2)):
        pass
    with pytest.raises(ValueError, match="mid_block"):
        mid_block_of(nn.Sequential())
