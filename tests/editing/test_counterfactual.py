"""`hsae counterfactual`: the edit → re-invert → undo protocol, baselines, the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import hsae.editing.counterfactual as cfm
from hsae import cli
from hsae.diffusion.invert import invert, resume
from hsae.editing.counterfactual import (
    direction_counterfactual,
    sae_counterfactual,
    text_counterfactual,
)
from hsae.editing.edit import top_components
from hsae.sae import build_sae, make_config

T, STEPS = 0.5, 4


def tiny_sae(c: int = 16, k: int = 8):
    torch.manual_seed(0)
    return build_sae(make_config("channel_aware", c, k, n_latents=8, n_train_images=4)).eval()


def rand_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, size, size), generator=g) * 2 - 1


# ----- the protocol -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def case(make_pixel_backbone):
    bb = make_pixel_backbone()
    sae = tiny_sae()
    inv = invert(bb, bb.encode(rand_images(2)), T, STEPS)
    h = resume(bb, inv.z_t, inv.t_index, inv.grid)[1]
    comp = top_components(sae, h, None, 1)[0][0][0]
    return bb, sae, inv, comp


def test_sae_counterfactual_edits_with_kappa_then_undoes_with_one_over_kappa(case, monkeypatch):
    bb, sae, inv, comp = case
    calls = []
    real = cfm.edit_batch

    def spy(backbone, sae_, inversion, components, kappas, *args, **kw):
        res = real(backbone, sae_, inversion, components, kappas, *args, **kw)
        calls.append((inversion, list(kappas), res))
        return res

    monkeypatch.setattr(cfm, "edit_batch", spy)
    x_rec, cf = sae_counterfactual(bb, sae, inv, [comp], 4.0, "error_preserving", 2)
    assert [c[1] for c in calls] == [[4.0], [0.25]]
    (inv1, _, first), (inv2, _, second) = calls
    assert inv1 is inv and torch.equal(x_rec, first.reference)
    assert torch.equal(cf.edited, first.images[:, 0])
    # the undo starts from the inversion of the *edited* image, on the same grid
    want = invert(bb, bb.encode(cf.edited), T, STEPS)
    assert torch.equal(inv2.z_t, want.z_t) and inv2.t_index == inv.t_index
    assert torch.equal(cf.restored, second.images[:, 0])
    assert (cf.edited - x_rec).abs().max() > 1e-4
    with pytest.raises(ValueError, match="non-zero"):
        sae_counterfactual(bb, sae, inv, [comp], 0.0)


def test_neutral_edits_leave_the_image_and_direction_baseline(case):
    bb, sae, inv, comp = case
    x_rec, cf = sae_counterfactual(bb, sae, inv, [comp], 1.0, "error_preserving")
    assert torch.equal(cf.edited, x_rec)  # κ = 1, error-preserving: no edit at all
    d = torch.randn(16, 8, 8, generator=torch.Generator().manual_seed(0))
    zero = direction_counterfactual(bb, inv, d, 0.0)
    torch.testing.assert_close(zero.edited, x_rec, rtol=0, atol=1e-5)
    moved = direction_counterfactual(bb, inv, d, 2.0)
    assert (moved.edited - x_rec).abs().max() > 1e-3
    # the undo: the edited image inverted again and resumed with h − s·d at the first step
    inv2 = invert(bb, bb.encode(moved.edited), T, STEPS)
    z, _ = resume(bb, inv2.z_t, inv2.t_index, inv2.grid, h_edit=lambda h: h - 2.0 * d)
    torch.testing.assert_close(moved.restored, bb.decode(z), rtol=0, atol=1e-5)


def test_text_baseline_on_a_conditional_model(sd_backbone):
    x = rand_images(1, size=16)
    inv = invert(sd_backbone, sd_backbone.encode(x), T, STEPS, prompt="")
    cf = text_counterfactual(sd_backbone, inv, "", "a cat")
    assert cf.edited.shape == cf.restored.shape == (1, 3, 16, 16)
    x_rec = sd_backbone.decode(resume(sd_backbone, inv.z_t, inv.t_index, inv.grid)[0])
    assert (cf.edited - x_rec).abs().max() > 1e-6


# ----- command line -----------------------------------------------------------------------------
main = cli.main


@pytest.fixture(scope="module")
def cli_case(tmp_path_factory, make_pixel_backbone, pixel_pipeline_dir):
    from hsae.data.extract import extract
    from hsae.data.images import ImageDataset
    from hsae.data.store import ActivationStore
    from hsae.toy.toyfaces import write_dataset

    root = tmp_path_factory.mktemp("cf-cli")
    data = write_dataset(root / "data", 16, seed=0, progress=False)
    bb = make_pixel_backbone()
    ds = ImageDataset(data, 32)
    store = ActivationStore(extract(ds, bb, root / "acts", T, STEPS, progress=False))
    train = store.indices_for_split("train")
    frac = (np.asarray(store.attributes)[train] > 0).mean(axis=0)
    attribute = store.attribute_names[int(np.argmin(np.abs(frac - 0.5)))]  # present and absent
    tiny_sae().save(root / "sae")
    return root, data, pixel_pipeline_dir, attribute


def _args(root, data, model, out, *extra: str) -> list[str]:
    return [
        "counterfactual",
        "--data",
        str(data),
        "--split",
        "all",
        "--n",
        "3",
        "--batch",
        "2",
        "--sae",
        str(root / "sae"),
        "--store",
        str(root / "acts"),
        "--model",
        str(model),
        "--component",
        "0:1",
        "--kappa",
        "3",
        "--cache-dir",
        str(root / "cache"),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_cli_counterfactual_with_mean_difference_baseline(cli_case, tmp_path):
    root, data, model, attribute = cli_case
    out = tmp_path / "cf"
    assert main(_args(root, data, model, out, "--attribute", attribute)) == 0
    doc = json.loads((out / "counterfactual.json").read_text())
    assert doc["images"] == ["000001.png", "000002.png", "000003.png"]
    assert (doc["t"], doc["steps"]) == (T, STEPS)  # defaults read from the store
    methods = doc["per_image"]["methods"]
    assert list(methods) == ["SAE 0:1 κ=3", f"mean-difference {attribute} s=1"]
    for m in methods.values():
        for key in ("edit_vs_rec", "restored_vs_input", "restored_vs_rec"):
            assert len(m[key]["ssim"]) == 3 and all(-1 <= v <= 1 for v in m[key]["ssim"])
    assert len(doc["grid_columns"]) == 6 and (out / "grid.png").is_file()
    table = (out / "table.md").read_text()
    assert "mean-difference" in table and "Inversion floor" in table


def test_cli_counterfactual_errors(cli_case, tmp_path, capsys):
    root, data, model, _ = cli_case
    assert main(_args(root, data, model, tmp_path, "--edit-prompt", "a cat")) == 2
    assert "text-conditional" in capsys.readouterr().err
    assert main(_args(root, data, model, tmp_path, "--attribute", "Nope")) == 2
    assert "Nope" in capsys.readouterr().err
    args = _args(root, data, model, tmp_path)
    args[args.index("--kappa") + 1] = "0"
    assert main(args) == 2
    assert "non-zero" in capsys.readouterr().err
