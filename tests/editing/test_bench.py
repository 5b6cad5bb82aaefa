"""Attribute-edit benchmark: sweep planning, the strength rule, metrics, a planted world where the
benchmark must rank the methods correctly, and the command through a tiny real U-Net."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from hsae.cli import main
from hsae.data.store import ActivationStore, ActivationStoreWriter
from hsae.editing import bench as EB
from hsae.editing.intervene import Component
from hsae.sae import build_sae, make_config

C, S, L = 3, 4, 6  # h = the image itself: 3 channels of 4×4
N, N_TRAIN, N_VAL = 60, 36, 12  # the last 12 rows are the test split
AMP = 1.5  # amplitude of the planted patterns
BIAS = 0.45  # detector threshold: α = ⟨x, pattern⟩ − BIAS


def _patterns() -> tuple[Tensor, Tensor, Tensor]:
    """Orthonormal 4×4 maps (no detector answers another's pattern): P lives in the top half
    only (A's region), Q and R everywhere."""
    rng = np.random.default_rng(0)
    m = rng.standard_normal((S * S, 3))
    m[S * S // 2 :, 0] = 0  # P: top half
    q, _ = np.linalg.qr(m)  # Gram-Schmidt from P on: P keeps its support
    return tuple(torch.tensor(q[:, i].reshape(S, S), dtype=torch.float32) for i in range(3))


P, Q, R = _patterns()
TOP_HALF = torch.zeros(S, S, dtype=torch.bool)
TOP_HALF[:2] = True


def planted_images() -> tuple[Tensor, np.ndarray]:
    """A adds AMP·P to channel 1; B is present when channel 2 *lacks* AMP·Q; channel 0 always
    holds an R of random amplitude (fodder for the random control). A and B are balanced and
    independent in every block of 4 rows, so the mean difference of A holds no Q."""
    g = torch.Generator().manual_seed(0)
    i = torch.arange(N)
    a, b = (i % 2 == 0), ((i // 2) % 2 == 0)
    x = 0.01 * torch.randn(N, C, S, S, generator=g)
    x[:, 0] += (0.6 + 0.3 * torch.rand(N, generator=g))[:, None, None] * R
    x[:, 1] += a[:, None, None] * AMP * P
    x[:, 2] += (~b)[:, None, None] * AMP * Q
    labels = np.where(torch.stack([a, b], 1).numpy(), 1, -1).astype(np.int8)
    return x, labels


class FakeClassifier:
    """A ⇔ ⟨x₁, P⟩ > AMP/2; B ⇔ ⟨x₂, Q⟩ < AMP/2 (the planted ground truth, read off pixels)."""

    attribute_names = ("A", "B")

    def predict(self, x: Tensor) -> Tensor:
        a = (x[:, 1] * P).sum((1, 2)) > AMP / 2
        b = (x[:, 2] * Q).sum((1, 2)) < AMP / 2
        return torch.stack([a, b], 1)


class FakeRunner:
    """Image = h: inversion is the identity and a resume renders the edited h directly."""

    def invert(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return x.clone(), x.clamp(-1, 1), x.clone()

    def resume(self, state: Tensor, idx: np.ndarray, edit) -> Tensor:
        return edit(state[torch.as_tensor(idx)].clone()).clamp(-1, 1)


def planted_sae():
    """Latents 1, 2, 3 detect P, Q, R; decoders chosen so κ = 0 removes P / Q entirely."""
    sae = build_sae(make_config("channel_aware", C, S, n_latents=L, n_train_images=N_TRAIN))
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            p.zero_()
        for j, pat, scale in ((1, P, AMP / (AMP - BIAS)), (2, Q, AMP / (AMP - BIAS)), (3, R, 1.0)):
            sae.W_enc[: S * S, j] = pat.flatten()
            sae.b_enc[j] = -BIAS
            sae.W_dec[j, : S * S] = scale * pat.flatten()
    return sae.eval()


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    x, labels = planted_images()
    out = tmp_path_factory.mktemp("editbench") / "acts"
    w = ActivationStoreWriter.open(
        out,
        meta={"model": {"model_id": "fake"}, "t": 0.7, "steps": 10, "prompt": ""},
        shape=(C, S, S),
        dtype="float32",
        shard_size=16,
        ids=[f"{i + 1:06d}.png" for i in range(N)],
        attributes=labels,
        attribute_names=["A", "B"],
        splits=[0] * N_TRAIN + [1] * N_VAL + [2] * (N - N_TRAIN - N_VAL),
    )
    for i in w.pending_shards():
        a, b = w.shard_rows(i)
        w.write_shard(i, x[a:b])
    store = ActivationStore(out)
    inputs = EB.BenchInputs(
        store=store,
        sae=planted_sae(),
        classifier=FakeClassifier(),
        runner=FakeRunner(),
        load_images=lambda rows: x[torch.as_tensor(rows)],
        masks=lambda ids, attr: TOP_HALF.expand(len(ids), S, S) if attr == "A" else None,
    )
    cfg = EB.EditBenchConfig(
        n_images=12,
        n_val=12,
        kappas=(-1.0, 0.0, 0.5, 1.0, 2.0, 5.0),
        scales=(0.5, 1.0, 2.0),
        threshold_k="2",
        n_examples=2,
        batch=7,  # chunks that cut across strengths
        progress=False,
    )
    doc = EB.run_editbench(inputs, cfg)
    written = EB.write_editbench(out.parent / "bench", doc)
    return {"doc": written, "out": out.parent / "bench", "inputs": inputs, "cfg": cfg}


# ----- the planted world --------------------------------------------------------------------------
def test_planted_component_is_chosen_and_ranked_above_random(planted: dict) -> None:
    a = planted["doc"]["attributes"]["A"]
    assert a["components"]["sae"]["component"] == "1:1" and a["components"]["sae"]["sign"] == 1
    assert a["components"]["random"]["component"] != "1:1"
    sae, rnd, md = a["test"]["sae"], a["test"]["random"], a["test"]["mean_diff"]
    # Ablating the detector removes A everywhere, touches nothing else and nothing outside A's
    # region; scaling it up cannot add A where it does not fire (α = 0 there).
    assert sae["remove"]["flip_rate"] == 1.0 and sae["remove"]["preservation"] == 1.0
    assert sae["remove"]["change_outside"] == pytest.approx(0.0, abs=1e-7)
    assert sae["remove"]["change_inside"] > 0.01
    assert sae["add"]["flip_rate"] == 0.0
    assert a["chosen"]["sae"]["remove"]["strength"] == 0.0  # κ = −1 flips too, but edits more
    # The supervised direction adds and removes; the random component does neither.
    assert md["add"]["flip_rate"] == 1.0 and md["remove"]["flip_rate"] == 1.0
    assert rnd["add"]["flip_rate"] == 0.0 and rnd["remove"]["flip_rate"] == 0.0
    assert rnd["remove"]["change_outside"] > 0.001
    assert sae["remove"]["n"] + sae["add"]["n"] == 12 == a["n_test_with"] + a["n_test_without"]


def test_anti_correlated_component_edits_the_other_way(planted: dict) -> None:
    b = planted["doc"]["attributes"]["B"]
    assert b["components"]["sae"]["component"] == "2:2" and b["components"]["sae"]["sign"] == -1
    # B is "Q absent": adding B means κ < 1 on the Q detector, which works; removing B would need
    # Q where the detector is silent, which no κ provides.
    assert b["chosen"]["sae"]["add"]["strength"] <= 0.5
    assert b["test"]["sae"]["add"]["flip_rate"] == 1.0
    assert b["test"]["sae"]["remove"]["flip_rate"] == 0.0
    assert b["test"]["sae"]["add"]["change_outside"] is None  # no region known for B


def test_val_sweep_covers_every_strength_on_its_group(planted: dict) -> None:
    a = planted["doc"]["attributes"]["A"]
    rows = a["val_sweep"]["sae"]
    assert [r["strength"] for r in rows] == [-1.0, 0.0, 0.5, 2.0, 5.0]  # κ = 1 is no edit
    assert [r["direction"] for r in rows] == ["remove"] * 3 + ["add"] * 2
    assert {r["n"] for r in rows if r["direction"] == "remove"} == {6}  # 6 of 12 val have A
    md = {r["strength"]: r for r in a["val_sweep"]["mean_diff"]}
    assert set(md) == {0.5, 1.0, 2.0, -0.5, -1.0, -2.0}
    assert md[2.0]["h_change"] > md[1.0]["h_change"] > md[0.5]["h_change"]


def test_outputs_written(planted: dict) -> None:
    out, doc = planted["out"], planted["doc"]
    on_disk = json.loads((out / EB.BENCH_FILE).read_text())
    assert on_disk["summary"]["sae"]["remove"]["flip_rate"] == pytest.approx(0.5)  # A 1, B 0
    assert set(on_disk["attributes"]) == {"A", "B"}
    table = (out / EB.TABLE_FILE).read_text()
    assert "| A | sae | 1:1 (+) | κ=2 (n=6) | 0.00 |" in table
    assert "| B | sae | 2:2 (−) |" in table and "## Mean over attributes" in table
    from PIL import Image

    with Image.open(out / doc["attributes"]["A"]["grid"]) as im:  # 5 rows × (2 + 2) tiles
        assert im.size == (4 * S * 3, 5 * S * 3)


# ----- pieces -------------------------------------------------------------------------------------
def test_plan_sweep_sends_each_strength_to_its_group() -> None:
    sae = planted_sae()
    pred = torch.tensor([True, False, False])
    for sign in (1, -1):
        m = EB.sae_method(
            "sae", sae, Component(1, 1), sign, (0.0, 1.0, 3.0), "error_preserving", {}
        )
        idx, s = EB.plan_sweep(pred, m)
        by = {k: idx[s == k].tolist() for k in (0.0, 3.0)}
        add_k, remove_k = (3.0, 0.0) if sign > 0 else (0.0, 3.0)  # sign −1: κ < 1 adds
        assert by[add_k] == [1, 2] and by[remove_k] == [0]
        assert 1.0 not in s
    md = EB.direction_method(torch.zeros(C, S, S), (2.0,), {})
    idx, s = EB.plan_sweep(pred, md)
    assert idx.tolist() == [1, 2, 0] and s.tolist() == [2.0, 2.0, -2.0]


def _row(strength: float, direction: str, flip: float, keep: float, h: float, n: int = 5) -> dict:
    return dict(strength=strength, direction=direction, n=n, flip_rate=flip, preservation=keep,
                h_change=h)  # fmt: skip


def test_choose_strength_rule() -> None:
    rows = [
        _row(2, "add", 0.5, 0.95, 0.1),
        _row(5, "add", 0.9, 0.92, 0.3),
        _row(9, "add", 1.0, 0.50, 0.9),  # flips most but breaks other attributes
        _row(5.5, "add", 0.9, 0.99, 0.2),  # same flip as κ=5 with a smaller edit
        _row(0, "remove", 0.2, 0.5, 0.1),
        _row(-1, "remove", 0.8, 0.6, 0.5),
    ]
    assert EB.choose_strength(rows, "add", 0.9)["strength"] == 5.5
    assert EB.choose_strength(rows, "add", 0.99)["strength"] == 5.5
    assert EB.choose_strength(rows, "add", 1.0)["strength"] == 5.5  # none keeps: most preserving
    assert EB.choose_strength(rows, "remove", 0.9)["strength"] == -1  # most preserving: 0.6
    empty = [_row(k, "add", None, None, None, n=0) for k in (1.5, 2, 4)]  # type: ignore[arg-type]
    assert EB.choose_strength(empty, "add", 0.9) == {
        "strength": 2,
        "reason": "no validation image in this group: median",
    }
    assert EB.choose_strength(rows, "sideways", 0.9)["strength"] is None


def test_pixel_change_inside_and_outside() -> None:
    ref = torch.zeros(2, 3, S, S)
    x = ref.clone()
    x[0, :, :2] = 1.0  # change only the top half of image 0, by 0.5 in [0, 1] units
    x[1] = -0.4
    out = EB.pixel_change(x, ref, TOP_HALF.expand(2, S, S))
    np.testing.assert_allclose(out["change_inside"], [0.5, 0.2])
    np.testing.assert_allclose(out["change_outside"], [0.0, 0.2])
    np.testing.assert_allclose(out["change"], [0.25, 0.2])
    assert np.isnan(EB.pixel_change(x, ref, None)["change_outside"]).all()
    whole = EB.pixel_change(x, ref, torch.ones(2, S, S, dtype=torch.bool))
    assert np.isnan(whole["change_outside"]).all()  # no pixel outside: undefined, not 0


def test_toyfaces_masks_follow_each_face(tmp_path: Path) -> None:
    from hsae.toy.toyfaces import ToyFacesConfig, attribute_region_mask, write_dataset

    write_dataset(tmp_path / "faces", 3, seed=4, progress=False)
    ids = ["000001.png", "000003.png"]
    m = EB.toyfaces_masks(tmp_path / "faces", ids, "Eyeglasses", 32)
    assert m is not None and m.shape == (2, 32, 32)
    for row, index in ((0, 0), (1, 2)):
        ref = attribute_region_mask(4, index, "Eyeglasses", ToyFacesConfig())
        assert torch.equal(m[row], torch.from_numpy(ref))
    assert not torch.equal(m[0], m[1])  # nuisance shifts the region
    assert EB.toyfaces_masks(tmp_path / "faces", ids, "Eyeglasses", 64) is None  # other size
    assert EB.toyfaces_masks(tmp_path, ids, "Eyeglasses", 32) is None  # not a toyfaces folder
    assert EB.toyfaces_masks(tmp_path / "faces", ["x.png"], "Eyeglasses", 32) is None


def test_config_and_argument_errors() -> None:

    for bad, match in (
        (dict(mode="paper"), "mode"),
        (dict(kappas=(1.0,)), "kappas"),
        (dict(scales=(0.0,)), "scales"),
        (dict(n_images=0), "n-images"),
        (dict(min_preservation=2.0), "min-preservation"),
    ):
        with pytest.raises(ValueError, match=match):
            EB.EditBenchConfig(**bad).check()  # type: ignore[arg-type]


def test_random_component_fires_and_is_not_the_chosen_one(planted: dict) -> None:
    from hsae.analysis.features import scan_codes

    inputs = planted["inputs"]
    train = inputs.store.indices_for_split("train")
    scan = scan_codes(inputs.sae, inputs.store, train, None, 16, 1)
    picks = {EB.random_component(scan, inputs.sae, 1 * L + 1, seed)[0] for seed in range(8)}
    assert 1 * L + 1 not in picks and all(scan.fire[k] > 0 for k in picks)


# ----- through a real (tiny) diffusion model ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(pixel_pipeline_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """20 toyfaces (16 train, 2 val, 2 test) extracted with the tiny pixel DDPM (h 16×8×8)."""
    root = tmp_path_factory.mktemp("editbench-tiny")
    for name, seed in (("data", 0), ("other", 5)):
        cmd = ["data", "toyfaces", "--n", "20", "--seed", str(seed), "--out", str(root / name)]
        assert main(cmd) == 0
    ext = ["extract", "--data", str(root / "data"), "--model", str(pixel_pipeline_dir)]
    assert main([*ext, "--out", str(root / "acts"), "--steps", "3", "--no-progress"]) == 0
    torch.manual_seed(0)
    cfg = make_config("channel_aware", 16, 8, n_latents=8, n_train_images=16)
    build_sae(cfg).save(root / "sae")
    return {"root": root}


def _bench_args(root: Path, data: str, out: str) -> list[str]:
    return [
        "editbench", "--store", str(root / "acts"), "--sae", str(root / "sae"),
        "--data", str(root / data), "--out", str(root / out), "--attributes", "Smiling",
        "Blue_Background", "--n-images", "2", "--n-val", "2", "--kappas", "0", "5",
        "--scales", "1", "--no-progress",
    ]  # fmt: skip


@pytest.mark.slow
def test_editbench_command_on_a_tiny_unet(tiny_run: dict) -> None:
    root = tiny_run["root"]
    assert main([*_bench_args(root, "data", "bench"), "--edit-steps", "all"]) == 0
    doc = json.loads((root / "bench" / EB.BENCH_FILE).read_text())
    s = doc["settings"]
    assert (s["n_test"], s["n_val"], s["val_source"], s["edit_steps"]) == (2, 2, "val", "all")
    assert s["steps"] == 3 and s["mode"] == "error_preserving"
    for attr in ("Smiling", "Blue_Background"):
        res = doc["attributes"][attr]
        assert set(res["test"]) == set(EB.METHODS)
        assert (root / "bench" / res["grid"]).is_file()
        for m in EB.METHODS:
            assert sum(res["test"][m][d]["n"] for d in EB.DIRECTIONS) == 2
    assert "| Smiling | sae |" in (root / "bench" / EB.TABLE_FILE).read_text()


def test_editbench_refuses_images_that_are_not_the_stores(
    tiny_run: dict, capsys: pytest.CaptureFixture
) -> None:
    root = tiny_run["root"]
    assert main(_bench_args(root, "other", "bench-other")) == 2
    assert "do not reproduce the h_t" in capsys.readouterr().err


def test_error_preserving_kappa_one_is_the_unedited_resume(
    tiny_run: dict, pixel_pipeline_dir: Path
) -> None:
    from hsae.analysis.features import load_rows_images
    from hsae.diffusion.backbone import DiffusionBackbone
    from hsae.sae import load_sae

    root = tiny_run["root"]
    store, sae = ActivationStore(root / "acts"), load_sae(root / "sae")
    runner = EB.DiffusionRunner(DiffusionBackbone.load(str(pixel_pipeline_dir)), 0.7, 3, batch=2)
    x = load_rows_images(store, root / "data", np.arange(3), 32)
    state, x_clean, _ = runner.invert(x)
    m = EB.sae_method("sae", sae, Component(0, 0), 1, (1.0,), "error_preserving", {})
    # The same rows as the first inversion chunk: the very same computation, bit for bit.
    x_same = runner.resume(state, np.array([0, 1]), m.make_edit(torch.ones(2)))
    assert torch.equal(x_same, x_clean[:2])
    # Another batch composition only reorders float sums.
    x_mixed = runner.resume(state, np.array([2, 0]), m.make_edit(torch.ones(2)))
    torch.testing.assert_close(x_mixed, x_clean[[2, 0]], rtol=0, atol=1e-4)
