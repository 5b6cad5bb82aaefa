"""`hsae edit` and its API: κ = 1 identities, batched sweeps, Δ, window, mask, inversion cache."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from hsae import cli
from hsae.analysis.reconstruction import sae_edit
from hsae.diffusion.inversion_cache import (
    InversionCache,
    cache_key,
    cache_root,
    invert_cached,
    model_key,
)
from hsae.diffusion.invert import invert, resume
from hsae.editing.edit import edit_batch, parse_mask, top_components
from hsae.editing.intervene import Component, intervene
from hsae.sae import build_sae, make_config
from hsae.sae.selection import resolve_threshold_k

T, STEPS = 0.5, 4  # 3 resumed steps on the DDPM grid 0, 250, 500, 750


def tiny_sae(c: int = 16, k: int = 8, n_latents: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    cfg = make_config("channel_aware", c, k, n_latents=n_latents, n_train_images=4)
    return build_sae(cfg).eval()


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 3, 32, 32), generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def case(make_pixel_backbone):
    bb = make_pixel_backbone()
    sae = tiny_sae()
    inv = invert(bb, bb.encode(images()), T, STEPS)
    h = resume(bb, inv.z_t, inv.t_index, inv.grid)[1]
    comp = top_components(sae, h, None, 1)[0][0][0]  # image 0's strongest: α > 0
    return bb, sae, inv, comp


def plain(bb, inv, repeat: int = 1, edit=None) -> torch.Tensor:
    z = inv.z_t.repeat_interleave(repeat, dim=0)
    return bb.decode(resume(bb, z, inv.t_index, inv.grid, h_edit=edit)[0])


def test_error_preserving_kappa_one_is_bit_identical_to_plain_resume(case):
    bb, sae, inv, comp = case
    res = edit_batch(bb, sae, inv, [comp], [1.0, 4.0], "error_preserving", threshold_k=2)
    assert res.images.shape == (2, 2, 3, 32, 32) and res.reference.shape == (2, 3, 32, 32)
    assert torch.equal(res.images[:, 0], res.reference)
    # the same batch layout without any hook: [reference, κ=1, κ=4] rows of each image
    ref = plain(bb, inv, repeat=3).reshape(2, 3, 3, 32, 32)
    assert torch.equal(res.reference, ref[:, 0]) and torch.equal(res.images[:, 0], ref[:, 1])
    torch.testing.assert_close(res.reference, plain(bb, inv), rtol=0, atol=1e-5)
    assert (res.images[0, 1] - res.reference[0]).abs().max() > 1e-4  # κ = 4 did something
    assert res.delta[:, 0].tolist() == [0, 0]


def test_reconstruction_kappa_one_is_the_spliced_sae_reconstruction(case):
    bb, sae, inv, comp = case
    for k in (None, 2):
        res = edit_batch(bb, sae, inv, [comp], [1.0], "reconstruction", threshold_k=k)
        torch.testing.assert_close(res.images[:, 0], plain(bb, inv, edit=sae_edit(sae, k)))
        assert (res.images[:, 0] - res.reference).abs().max() > 1e-4  # the splice is visible
        assert res.delta[:, 0].tolist() == [0, 0]  # Δ counts the edit, not the splice
        assert (res.delta_vs_h[:, 0] > 0).all()


def test_sweep_rows_match_independent_edits(case):
    bb, sae, inv, comp = case
    kappas = [0.0, 3.0, -2.0]
    sweep = edit_batch(bb, sae, inv, [comp], kappas, "reconstruction", reference=False)
    assert sweep.reference is None and sweep.images.shape[:2] == (2, 3)
    for v, kappa in enumerate(kappas):
        one = edit_batch(bb, sae, inv, [comp], [kappa], "reconstruction", reference=False)
        torch.testing.assert_close(sweep.images[:, v], one.images[:, 0], rtol=0, atol=1e-5)
        torch.testing.assert_close(sweep.delta[:, v], one.delta[:, 0])
    diffs = [(sweep.images[0, v] - sweep.images[0, 1]).abs().max() for v in (0, 2)]
    assert min(diffs) > 1e-4


def test_delta_h_edit_alpha_and_mask(case):
    bb, sae, inv, comp = case
    res = edit_batch(bb, sae, inv, [comp], [5.0], "error_preserving")
    want = intervene(sae, res.h_ref, [comp], 5.0, "error_preserving")
    torch.testing.assert_close(res.h_edit[:, 0], want)
    assert res.n_neurons == 16 * 8 * 8
    # channel-aware: one component lives in one channel's K×K map
    assert 0 < int(res.delta[0, 0]) <= 64
    assert torch.equal(res.delta, res.delta_vs_h)
    assert res.alpha.shape == (2, 1) and float(res.alpha[0, 0]) > 0
    mask = parse_mask(["0:2,:"], 8)
    masked = edit_batch(bb, sae, inv, [comp], [5.0], "error_preserving", mask=mask)
    assert 0 < int(masked.delta[0, 0]) <= 16
    moved = (masked.h_edit[0, 0] - masked.h_ref[0]).abs().sum(dim=0)
    assert moved[2:].max() == 0


def test_window_edits_more_steps(case):
    bb, sae, inv, comp = case
    one = edit_batch(bb, sae, inv, [comp], [5.0], "error_preserving", window=1)
    three = edit_batch(bb, sae, inv, [comp], [5.0], "error_preserving", window=3)
    assert torch.equal(one.h_edit, three.h_edit)  # the first step is the same edit
    assert (one.images - three.images).abs().max() > 1e-6
    every = edit_batch(bb, sae, inv, [comp], [5.0], "error_preserving", window="all")
    assert torch.equal(every.images, three.images)  # t = 0.5 of 4 steps: 3 resumed steps
    with pytest.raises(ValueError, match="window"):
        edit_batch(bb, sae, inv, [comp], [5.0], window=4)
    with pytest.raises(ValueError, match="component"):
        edit_batch(bb, sae, inv, [], [5.0])
    with pytest.raises(ValueError, match="kappa"):
        edit_batch(bb, sae, inv, [comp], [float("nan")])


def test_parse_mask():
    m = parse_mask(["0:2,1:3", "-1:,-1:"], 4)
    want = torch.zeros(4, 4)
    want[0:2, 1:3] = 1
    want[3, 3] = 1
    assert torch.equal(m, want)
    assert parse_mask(None, 4) is None and parse_mask([], 4) is None
    for bad in ("0:2", "0:2,3:3", "a:2,0:1", "0:9,0:1", "0-2,0:1"):
        with pytest.raises(ValueError, match="mask"):
            parse_mask([bad], 4)


def test_resolve_threshold_k_auto_without_store():
    sae = tiny_sae()
    h = torch.randn(3, 16, 8, 8).abs()
    k, info = resolve_threshold_k(sae, "auto", None, h, 0.5)
    assert 1 <= k <= 8 and "no store" in info["how"] and info["target_sparsity"] == 0.5
    assert resolve_threshold_k(sae, None, None, h) == (None, {"threshold_k": None, "how": "none"})
    with pytest.raises(ValueError, match="--store"):
        resolve_threshold_k(sae, "auto", None, None)
    assert resolve_threshold_k(sae, 3, None, None)[0] == 3
    with pytest.raises(ValueError, match="threshold-k"):
        resolve_threshold_k(sae, 9, None, None)


# ----- inversion cache --------------------------------------------------------------------------
def test_invert_cached_hits_and_matches(make_pixel_backbone, tmp_path):
    bb = make_pixel_backbone()
    x = images(3, seed=1)
    cache = InversionCache.open(tmp_path / "c")
    first = invert_cached(bb, x[:2], T, STEPS, cache=cache)
    assert (cache.hits, cache.misses) == (0, 2)
    both = invert_cached(bb, x, T, STEPS, cache=cache)  # 2 hits, 1 new row
    assert (cache.hits, cache.misses) == (2, 3)
    assert torch.equal(both.z_t[:2], first.z_t)
    torch.testing.assert_close(both.z_t, invert(bb, bb.encode(x), T, STEPS).z_t)
    assert (both.t_index, both.timestep) == (first.t_index, first.timestep)
    files = sorted((tmp_path / "c").rglob("*"))
    assert len([f for f in files if f.suffix == ".safetensors"]) == 3
    assert not [f for f in files if f.name.endswith(".tmp")]


def test_corrupt_cache_file_is_recomputed(make_pixel_backbone, tmp_path, capsys):
    bb = make_pixel_backbone()
    x = images(1, seed=2)
    cache = InversionCache.open(tmp_path)
    good = invert_cached(bb, x, T, STEPS, cache=cache)
    (path,) = list(tmp_path.rglob("*.safetensors"))
    path.write_bytes(b"not a safetensors file")
    again = invert_cached(bb, x, T, STEPS, cache=cache)
    assert torch.equal(again.z_t, good.z_t) and cache.recomputed == 1
    assert "recomputing" in capsys.readouterr().err
    assert invert_cached(bb, x, T, STEPS, cache=cache).z_t.shape == good.z_t.shape
    assert cache.hits == 1  # the rewritten file is good again


def test_cache_key_depends_on_everything(make_pixel_backbone, sd_backbone):
    bb = make_pixel_backbone()
    x = images(1)[0]
    m = model_key(bb)
    k = cache_key(x, m, 0.7, 50, "")
    assert k == cache_key(x.clone(), m, 0.7, 50, "")
    others = [
        cache_key(x + 1e-3, m, 0.7, 50, ""),
        cache_key(x, m, 0.6, 50, ""),
        cache_key(x, m, 0.7, 25, ""),
        cache_key(x, m, 0.7, 50, "a cat"),
        cache_key(x, model_key(make_pixel_backbone("v_prediction")), 0.7, 50, ""),
        cache_key(x, {**m, "weights": "0" * 16}, 0.7, 50, ""),
    ]
    assert len({k, *others}) == 7
    assert model_key(sd_backbone)["weights"] != m["weights"]


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HSAE_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("HSAE_CACHE")
    assert cache_root() == Path("~/.cache/hsae/inversions").expanduser()


# ----- command line ----------------------------------------------------------------------------
main = cli.main


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory, pixel_pipeline_dir):
    from hsae.utils.viz import save_grid

    root = tmp_path_factory.mktemp("edit-cli")
    sae = tiny_sae()
    sae.save(root / "sae")
    x = images(2, seed=3)
    for i in range(2):
        save_grid([x[i : i + 1]], root / f"img{i}.png", scale=1)
    return root, pixel_pipeline_dir


def _edit_args(root: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "edit",
        "--image",
        str(root / "img0.png"),
        str(root / "img1.png"),
        "--sae",
        str(root / "sae"),
        "--model",
        str(model),
        "--t",
        str(T),
        "--steps",
        str(STEPS),
        "--cache-dir",
        str(root / "cache"),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_cli_edit_writes_outputs_and_reuses_the_cache(cli_inputs, tmp_path, capsys):
    root, model = cli_inputs
    args = ["--component", "0:1", "13", "--kappa", "1", "--kappa", "4", "0"]
    args += ["--mode", "error_preserving", "--mask", "0:4,0:8", "--window", "2"]
    assert main(_edit_args(root, model, tmp_path / "a", *args)) == 0
    doc = json.loads((tmp_path / "a" / "edit.json").read_text())
    assert doc["components"] == ["0:1", "1:5"] and doc["flat_indices"] == [1, 13]
    assert doc["kappas"] == [1.0, 4.0, 0.0] and doc["mode"] == "error_preserving"
    assert doc["cache"]["misses"] == 2 and doc["threshold_k"] is not None  # auto, no store
    assert len(doc["rows"]) == 6 and doc["n_neurons"] == 1024
    assert doc["rows"][0]["delta"] == 0 and doc["rows"][0]["pixel_vs_unedited"]["mse"] == 0
    for name in ("grid.png", "diff.png", "table.md", "img0_kappa4.png", "img1_unedited.png"):
        assert (tmp_path / "a" / name).is_file(), name
    table = (tmp_path / "a" / "table.md").read_text()
    assert table.count("\n| img") == 6 and "Δ neurons" in table
    capsys.readouterr()
    assert main(_edit_args(root, model, tmp_path / "b", "--component", "0:1", "--kappa", "2")) == 0
    doc = json.loads((tmp_path / "b" / "edit.json").read_text())
    assert doc["cache"] == {"dir": str(root / "cache"), "hits": 2, "misses": 0}
    assert doc["mode"] == "error_preserving" and doc["window"] == "all"  # measured defaults
    assert doc["rule"] == "scale" and doc["codes"] == "raw"  # --kappa implies the scale rule
    assert main(_edit_args(root, model, tmp_path / "c", "--component", "0:1", "--kappa", "2",
                           "--paper")) == 0  # fmt: skip
    doc = json.loads((tmp_path / "c" / "edit.json").read_text())
    assert (doc["mode"], doc["window"], doc["rule"]) == ("reconstruction", 1, "scale")


def test_cli_edit_latent_add_rule(cli_inputs, tmp_path):
    root, model = cli_inputs
    args = ["--latent", "1", "--strength", "0", "3", "--window", "2"]
    assert main(_edit_args(root, model, tmp_path, *args)) == 0
    doc = json.loads((tmp_path / "edit.json").read_text())
    assert doc["rule"] == "add" and doc["feature"]["unit"] == "latent"
    assert doc["rows"][0]["delta"] == 0 and doc["rows"][0]["pixel_vs_unedited"]["mse"] == 0
    assert doc["rows"][1]["delta"] > 0  # the add rule moves h even where the latent is silent
    assert doc["size_first_step"][0][0] == 0 and doc["size_first_step"][0][1] > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--component", "16:0", "--kappa", "2"], "component"),
        (["--component", "0:0", "--kappa", "2", "--mask", "9:9,0:1"], "mask"),
        (["--component", "0:0", "--kappa", "2", "--threshold-k", "x"], "threshold-k"),
        (["--latent", "0", "--kappa", "2", "--paper"], "--paper"),
        (["--latent", "0"], "--strength"),
        (["--latent", "0", "--strength", "1", "--tokens", "a,b"], "--tokens"),
    ],
)
def test_cli_edit_errors(cli_inputs, tmp_path, capsys, extra, message):
    root, model = cli_inputs
    assert main(_edit_args(root, model, tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_edit_missing_image(cli_inputs, tmp_path, capsys):
    root, model = cli_inputs
    args = _edit_args(root, model, tmp_path, "--component", "0:0", "--kappa", "2")
    args[2] = str(root / "nope.png")
    assert main(args) == 2
    assert "nope.png" in capsys.readouterr().err


@pytest.mark.slow
def test_toy_model_smoke(tmp_path):
    """The real toy model with a random SAE of its H-space shape: one image, 10 steps."""
    from hsae.diffusion.backbone import DiffusionBackbone, toy_model_path

    if not (toy_model_path() / "model_index.json").is_file():
        pytest.skip("bundled toy model not present")
    bb = DiffusionBackbone.load("toy")
    c, k, _ = bb.hspace_shape()
    sae = tiny_sae(c, k, n_latents=16)
    inv = invert_cached(bb, images(1, seed=4), 0.7, 10, cache=InversionCache.open(tmp_path))
    h = resume(bb, inv.z_t, inv.t_index, inv.grid)[1]
    comp = top_components(sae, h, None, 1)[0][0][0]
    res = edit_batch(bb, sae, inv, [comp], [1.0, 50.0], "error_preserving")
    assert torch.equal(res.images[:, 0], res.reference)
    assert int(res.delta[0, 1]) > 0 and res.n_neurons == c * k * k
    assert isinstance(comp, Component)


def test_parse_edit_steps():
    from hsae.editing.intervene import parse_edit_steps

    assert parse_edit_steps("3") == 3 and parse_edit_steps("ALL") == "all"
    for bad in ("0", "-1", "some"):
        with pytest.raises(argparse.ArgumentTypeError, match="step count"):
            parse_edit_steps(bad)
