"""`hsae interpolate`: slerp, the batched SAE-space walk and its end points, the command."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from hsae import cli
from hsae.analysis.reconstruction import sae_edit
from hsae.diffusion.invert import invert, resume
from hsae.editing.interpolate import interpolate_pair, interpolate_z, slerp
from hsae.sae import build_sae, make_config

T, STEPS = 0.5, 4


def tiny_sae():
    torch.manual_seed(0)
    return build_sae(make_config("channel_aware", 16, 8, n_latents=8, n_train_images=4)).eval()


def rand_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 3, 32, 32), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_slerp_end_points_norm_and_parallel_fallback():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    out = slerp(a, b, torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(out[0], a)
    torch.testing.assert_close(out[2], b)
    torch.testing.assert_close(out[1], torch.tensor([2**-0.5, 2**-0.5]))  # norm kept
    lerp = interpolate_z(a, b, torch.tensor([0.5]), "lerp")
    torch.testing.assert_close(lerp[0], torch.tensor([0.5, 0.5]))
    par = slerp(a, 2 * a, torch.tensor([0.5]))
    torch.testing.assert_close(par[0], 1.5 * a)
    z = torch.randn(2, 3, 4, 4)
    assert interpolate_z(z[0], z[1], torch.linspace(0, 1, 5), "a").shape == (5, 3, 4, 4)
    assert torch.equal(interpolate_z(z[0], z[1], torch.linspace(0, 1, 3), "a")[2], z[0])
    with pytest.raises(ValueError, match="z-interp"):
        interpolate_z(a, b, torch.tensor([0.5]), "cubic")


@pytest.fixture(scope="module")
def case(make_pixel_backbone):
    bb = make_pixel_backbone()
    inv = invert(bb, bb.encode(rand_images(2)), T, STEPS)
    return bb, tiny_sae(), inv


def test_end_frames_are_the_spliced_resumes_of_a_and_b(case):
    bb, sae, inv = case
    res = interpolate_pair(bb, sae, inv, 4, threshold_k=2, h_baseline=True)
    assert res.frames.shape == (4, 3, 32, 32) and res.h_frames.shape == (4, 3, 32, 32)
    plain = bb.decode(resume(bb, inv.z_t, inv.t_index, inv.grid)[0])
    torch.testing.assert_close(res.ends, plain, rtol=0, atol=1e-5)
    spliced = bb.decode(resume(bb, inv.z_t, inv.t_index, inv.grid, h_edit=sae_edit(sae, 2))[0])
    torch.testing.assert_close(res.frames[[0, -1]], spliced, rtol=0, atol=1e-4)
    # the raw-h path at s = 0 / 1 is A / B itself
    torch.testing.assert_close(res.h_frames[[0, -1]], plain, rtol=0, atol=1e-4)
    mid = (res.frames[1:-1] - res.frames[[0]]).abs().flatten(1).amax(dim=1)
    assert (mid > 1e-3).all()


def test_window_and_z_interp_a(case):
    bb, sae, inv = case
    one = interpolate_pair(bb, sae, inv, 3, z_interp="a")
    three = interpolate_pair(bb, sae, inv, 3, z_interp="a", window=3)
    assert (one.frames[1:] - one.frames[0]).abs().max() > 1e-4  # h alone moves the image
    assert (one.frames - three.frames).abs().max() > 1e-6
    with pytest.raises(ValueError, match="frames"):
        interpolate_pair(bb, sae, inv, 1)
    with pytest.raises(ValueError, match="window"):
        interpolate_pair(bb, sae, inv, 3, window=9)


main = cli.main


def test_cli_interpolate(tmp_path, pixel_pipeline_dir):
    from hsae.utils.viz import save_grid

    tiny_sae().save(tmp_path / "sae")
    x = rand_images(2, seed=5)
    for i, name in enumerate("ab"):
        save_grid([x[i : i + 1]], tmp_path / f"{name}.png", scale=1)
    out = tmp_path / "out"
    argv = ["interpolate", "--a", str(tmp_path / "a.png"), "--b", str(tmp_path / "b.png")]
    argv += ["--sae", str(tmp_path / "sae"), "--model", str(pixel_pipeline_dir), "--frames", "5"]
    argv += ["--t", str(T), "--steps", str(STEPS), "--threshold-k", "3", "--h-baseline"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    doc = json.loads((out / "interpolate.json").read_text())
    assert doc["s"] == [0.0, 0.25, 0.5, 0.75, 1.0] and doc["z_interp"] == "slerp"
    assert doc["threshold_k"] == 3 and doc["grid_rows"] == ["sae", "raw h"]
    assert len(doc["frames"]["sae"]) == 5 and doc["frames"]["sae"][0]["mse_to_prev"] == 0
    with Image.open(out / "interpolate.gif") as gif:
        assert gif.n_frames == 8 and gif.size == (128, 128)  # 5 forth, 3 back; 4× upscaled
    with Image.open(out / "grid.png") as grid:
        assert grid.size == (9 * 32 * 3, 2 * 32 * 3)
    assert (out / "table.md").read_text().count("| sae |") == 5
