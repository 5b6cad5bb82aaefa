"""The fair edit benchmark: a planted world where the right features must be found and must edit,
the common size axis, Wilson intervals, and the command through a tiny real U-Net."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from hsae.cli import main
from hsae.data.store import ActivationStore
from hsae.data.store_writer import ActivationStoreWriter
from hsae.editing import bench as EB
from hsae.editing import bench_methods as BM
from hsae.editing.bench_metrics import summarize, wilson
from hsae.editing.bench_report import BENCH_FILE, TABLE_FILE, write_editbench
from hsae.sae import build_sae, make_config

C, S, L = 3, 4, 6  # h = the image itself: 3 channels of 4×4
N, N_TRAIN, N_VAL = 72, 40, 16  # the last 16 rows are the test split
AMP = 1.5
BIAS = 0.45


def _patterns() -> tuple[Tensor, Tensor, Tensor]:
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((S * S, 3)))
    return tuple(torch.tensor(q[:, i].reshape(S, S), dtype=torch.float32) for i in range(3))


P, Q, R = _patterns()


def planted_images() -> tuple[Tensor, np.ndarray]:
    """A adds AMP·P to channel 1; B adds AMP·Q to channel 2; channel 0 holds R (fodder)."""
    g = torch.Generator().manual_seed(0)
    i = torch.arange(N)
    a, b = (i % 2 == 0), ((i // 2) % 2 == 0)
    x = 0.01 * torch.randn(N, C, S, S, generator=g)
    x[:, 0] += (0.6 + 0.3 * torch.rand(N, generator=g))[:, None, None] * R
    x[:, 1] += a[:, None, None] * AMP * P
    x[:, 2] += b[:, None, None] * AMP * Q
    labels = np.where(torch.stack([a, b], 1).numpy(), 1, -1).astype(np.int8)
    return x, labels


class FakeClassifier:
    attribute_names = ("A", "B")

    def predict_logits(self, x: Tensor) -> Tensor:
        a = (x[:, 1] * P).sum((1, 2)) - AMP / 2
        b = (x[:, 2] * Q).sum((1, 2)) - AMP / 2
        return torch.stack([a, b], 1)


class FakeRunner:
    """Image = h: inversion is the identity and a resume renders the edited h (one step)."""

    def invert(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return x.clone(), x.clamp(-1, 1), x.clone()

    def resume(self, state: Tensor, idx: np.ndarray, edit, window) -> Tensor:
        return edit(state[torch.as_tensor(idx)].clone()).clamp(-1, 1)


def planted_sae():
    sae = build_sae(make_config("channel_aware", C, S, n_latents=L, n_train_images=N_TRAIN))
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            p.zero_()
        for j, pat in ((1, P), (2, Q), (3, R)):
            sae.W_enc[: S * S, j] = pat.flatten()
            sae.b_enc[j] = -BIAS
            sae.W_dec[j, : S * S] = pat.flatten()
    return sae.eval()


def _write_store(out: Path, x: Tensor, labels: np.ndarray) -> ActivationStore:
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
    return ActivationStore(out)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    x, labels = planted_images()
    root = tmp_path_factory.mktemp("editbench")
    store = _write_store(root / "acts", x, labels)
    inputs = EB.BenchInputs(
        store=store,
        saes={"ca": planted_sae()},
        classifier=FakeClassifier(),
        runner=FakeRunner(),
        load_images=lambda rows: x[torch.as_tensor(rows)],
    )
    cfg = EB.EditBenchConfig(
        n_test=16,
        n_val=16,
        sizes=(0.1, 0.5, 1.5),
        windows=(1,),
        n_candidates=3,
        effect_images=8,
        top_channels=1,
        pca_components=4,
        n_examples=2,
        batch=7,  # chunks that cut across sizes
        progress=False,
    )
    doc = EB.run_editbench(inputs, cfg)
    written = write_editbench(root / "bench", doc)
    return {"doc": written, "out": root / "bench", "inputs": inputs}


def test_planted_latent_is_chosen_by_auroc_and_by_effect(planted: dict) -> None:
    feats = planted["doc"]["attributes"]["A"]["features"]
    assert feats["ca latent add (auroc)"]["latent"] == 1
    assert feats["ca latent add (effect)"]["latent"] == 1
    assert feats["ca latent add (auroc)"]["sign"] == 1
    assert feats["ca component scale"]["component"] == "1:1"
    assert feats["ca latent add (auroc)"]["selection"] == "train AUROC"
    assert feats["ca latent add (effect)"]["selection"] == "validation effect"
    assert planted["doc"]["attributes"]["B"]["features"]["ca latent add (auroc)"]["latent"] == 2


def test_curves_share_one_size_axis_and_the_right_features_flip(planted: dict) -> None:
    curves = planted["doc"]["attributes"]["A"]["curves"]["1"]
    for label, rows in curves.items():
        for r in rows:
            if not r["n"]:
                continue
            if label == "ca component scale" and r["direction"] == "add":
                assert r["size"] == 0.0  # κ cannot move a component that is silent (α = 0)
                assert r["flipped"] == 0.0  # and an image it did not move was not flipped
            else:
                assert r["size"] == pytest.approx(r["target_size"], rel=1e-3), label
            assert r["direction"] in ("add", "remove")
    big = {
        lab: {r["direction"]: r for r in rows if r["target_size"] == 1.5}
        for lab, rows in curves.items()
    }
    # P lives in channel 1 only: the latent at its top channel flips every image both ways,
    # the latent spread over all 3 channels spends 2/3 of its size elsewhere and flips fewer.
    top = big["ca latent@1 add (auroc)"]
    assert top["add"]["flipped"] == 1.0 and top["remove"]["flipped"] == 1.0
    assert top["add"]["preserved"] == 1.0
    assert big["ca latent add (auroc)"]["add"]["flipped"] < top["add"]["flipped"]
    assert big["mean_diff"]["add"]["flipped"] == 1.0
    assert big["random"]["add"]["flipped"] < 0.5


def test_every_rate_has_a_wilson_interval_and_outputs_exist(planted: dict) -> None:
    out, doc = planted["out"], planted["doc"]
    r = doc["attributes"]["A"]["curves"]["1"]["mean_diff"][0]
    lo, hi = r["flipped_ci"]
    assert lo <= r["flipped"] <= hi
    assert json.loads((out / BENCH_FILE).read_text())["settings"]["n_test"] == 16
    table = (out / TABLE_FILE).read_text()
    assert "| ca latent add (auroc) | add |" in table
    assert (out / doc["attributes"]["A"]["curves_png"]).is_file()
    assert doc["attributes"]["A"]["matched"]["add"]["size"] in (0.1, 0.5, 1.5)


def test_wilson_matches_the_closed_form() -> None:
    lo, hi = wilson(5, 10)
    assert (lo, hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)
    assert all(math.isnan(v) for v in wilson(0, 0))
    # ±10 points at 100 images, the bar for a rate near 0.5
    lo, hi = wilson(50, 100)
    assert hi - lo < 0.2


def test_summarize_reports_none_for_empty_groups() -> None:
    m = {"flipped": np.array([True, False]), "all_preserved": np.array([True, True])}
    m["preserved"] = np.array([1.0, 0.5])
    s = summarize(m, np.array([False, False]))
    assert s["n"] == 0 and s["flipped"] is None and s["flipped_ci"] is None


def test_matched_size_rule() -> None:
    rows = [
        {"direction": "add", "target_size": 0.5, "n": 4, "flipped": 0.5, "preserved": 1.0},
        {"direction": "add", "target_size": 1.0, "n": 4, "flipped": 0.75, "preserved": 0.96},
        {"direction": "add", "target_size": 2.0, "n": 4, "flipped": 1.0, "preserved": 0.5},
    ]
    assert EB.matched_size(rows, "add", 0.95)["size"] == 1.0
    assert EB.matched_size(rows, "remove", 0.95)["size"] is None


def test_oriented_strength_follows_the_sign() -> None:
    f = BM.direction_feature(torch.ones(C, S, S), "d", sign=-1)
    assert BM.oriented_u(f, 0.5, 0.25) == -2.0


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="--sizes"):
        EB.EditBenchConfig(sizes=(0.0,)).check()
    with pytest.raises(ValueError, match="--mode"):
        EB.EditBenchConfig(mode="x").check()


# ----- the command on a tiny real U-Net -------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(pixel_pipeline_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """24 toyfaces (train/val/test) extracted with the tiny pixel DDPM (h 16×8×8)."""
    root = tmp_path_factory.mktemp("editbench-tiny")
    for name, seed in (("data", 0), ("other", 5)):
        cmd = ["data", "toyfaces", "--n", "24", "--seed", str(seed), "--out", str(root / name)]
        assert main(cmd) == 0
    ext = ["extract", "--data", str(root / "data"), "--model", str(pixel_pipeline_dir)]
    assert main([*ext, "--out", str(root / "acts"), "--steps", "3", "--no-progress"]) == 0
    torch.manual_seed(0)
    build_sae(make_config("spatial_topk", 16, 8, n_latents=8, k=2)).save(root / "sp")
    return {"root": root}


def _bench_args(root: Path, data: str, out: str) -> list[str]:
    return [
        "editbench", "--store", str(root / "acts"), "--sae", f"sp={root / 'sp'}",
        "--data", str(root / data), "--out", str(root / out), "--attributes", "Smiling",
        "--n-test", "3", "--n-val", "2", "--sizes", "0.5", "--candidates", "2",
        "--effect-images", "2", "--pca-components", "3", "--no-progress",
    ]  # fmt: skip


def test_editbench_command_on_a_tiny_unet(tiny_run: dict) -> None:
    root = tiny_run["root"]
    assert main([*_bench_args(root, "data", "bench"), "--windows", "1", "all"]) == 0
    doc = json.loads((root / "bench" / BENCH_FILE).read_text())
    assert doc["settings"]["windows"] == ["1", "all"]
    res = doc["attributes"]["Smiling"]
    assert set(res["curves"]) == {"1", "all"}
    assert {"sp latent add (auroc)", "pca (auroc)", "mean_diff", "random"} <= set(res["features"])
    n_test = doc["settings"]["n_test"]
    assert n_test >= 1
    for rows in res["curves"]["all"].values():
        assert sum(r["n"] for r in rows) == n_test  # every test image edited once per size
    assert (root / "bench" / res["curves_png"]).is_file()


def test_editbench_refuses_images_that_are_not_the_stores(
    tiny_run: dict, capsys: pytest.CaptureFixture
) -> None:
    root = tiny_run["root"]
    assert main(_bench_args(root, "other", "bench-other")) == 2
    assert "do not reproduce the h_t" in capsys.readouterr().err


class CountingRunner(FakeRunner):
    """FakeRunner that counts the image rows it resumes (the benchmark's cost)."""

    def __init__(self) -> None:
        self.rows = 0

    def resume(self, state: Tensor, idx: np.ndarray, edit, window) -> Tensor:
        self.rows += len(idx)
        return super().resume(state, idx, edit, window)


def _sized_inputs(planted: dict, runner: FakeRunner, cache: Path | None = None) -> EB.BenchInputs:
    base = planted["inputs"]
    return EB.BenchInputs(
        store=base.store,
        saes=base.saes,
        classifier=base.classifier,
        runner=runner,
        load_images=base.load_images,
        cache_dir=cache,
    )


SIZED = {
    "n_test": 16,
    "n_val": 16,
    "sizes": (0.1, 0.5, 1.5),
    "windows": (1, "all"),
    "n_candidates": 3,
    "effect_images": 8,
    "top_channels": 1,
    "pca_components": 4,
    "n_examples": 2,
    "batch": 7,
    "progress": False,
}


def test_validated_sizes_group_caps_and_side_windows(planted: dict) -> None:
    cfg = EB.EditBenchConfig(**SIZED, max_group=3, test_sizes="matched", side_windows="selected")
    doc = EB.run_editbench(_sized_inputs(planted, FakeRunner()), cfg)
    res = doc["attributes"]["A"]
    matched = {d: res["matched"][d]["size"] for d in ("add", "remove")}
    main_rows = res["curves"]["all"]["mean_diff"]
    # Main window: the validated size of each direction and the largest swept one, nothing else.
    for d in ("add", "remove"):
        sizes = sorted(r["target_size"] for r in main_rows if r["direction"] == d)
        assert sizes == sorted({matched[d], 1.5})
    assert all(r["n"] <= 3 for r in main_rows)  # groups capped
    # Side window: the validated size only, and no AUROC pick where an effect pick exists.
    side = res["curves"]["1"]
    assert all(len(rows) == 2 for rows in side.values())
    assert "ca latent add (effect)" in side and "ca latent add (auroc)" not in side
    assert "ca latent add (auroc)" in res["curves"]["all"]
    assert {"select_s", "matched_size_s", "test_window_all_s"} <= set(res["timings"])
    assert {"statistics_s", "invert_s", "attributes_s"} <= set(doc["timings"])


def test_validated_sizes_drop_the_largest_row(planted: dict) -> None:
    cfg = EB.EditBenchConfig(**SIZED, max_group=3, test_sizes="validated")
    res = EB.run_editbench(_sized_inputs(planted, FakeRunner()), cfg)["attributes"]["A"]
    for d in ("add", "remove"):
        size = res["matched"][d]["size"]
        rows = [r for r in res["curves"]["all"]["mean_diff"] if r["direction"] == d]
        assert [r["target_size"] for r in rows] == ([size] if size is not None else [])


def test_sizing_cuts_the_resumed_rows(planted: dict) -> None:
    full, sized = CountingRunner(), CountingRunner()
    EB.run_editbench(_sized_inputs(planted, full), EB.EditBenchConfig(**SIZED))
    cfg = EB.EditBenchConfig(**SIZED, max_group=3, test_sizes="matched", side_windows="selected")
    EB.run_editbench(_sized_inputs(planted, sized), cfg)
    assert 0 < sized.rows < full.rows / 2


def test_a_rerun_reuses_finished_parts(planted: dict, tmp_path: Path) -> None:
    cfg = EB.EditBenchConfig(**SIZED, test_sizes="matched")
    first = CountingRunner()
    doc1 = EB.run_editbench(_sized_inputs(planted, first, tmp_path), cfg)
    parts = sorted(p.name for p in (tmp_path / ".partial").iterdir())
    assert parts == ["attribute-A.pt", "attribute-B.pt", "images.pt"]
    again = CountingRunner()
    doc2 = EB.run_editbench(_sized_inputs(planted, again, tmp_path), cfg)
    assert again.rows == 0 and first.rows > 0  # nothing resumed again
    assert doc1["attributes"]["A"]["curves"] == doc2["attributes"]["A"]["curves"]
    # A lost attribute is redone alone; other settings ignore the saved parts.
    (tmp_path / ".partial" / "attribute-B.pt").unlink()
    third = CountingRunner()
    EB.run_editbench(_sized_inputs(planted, third, tmp_path), cfg)
    assert 0 < third.rows < first.rows
    fourth = CountingRunner()
    other = EB.EditBenchConfig(**{**SIZED, "sizes": (0.2, 0.5, 1.5)}, test_sizes="matched")
    EB.run_editbench(_sized_inputs(planted, fourth, tmp_path), other)
    assert fourth.rows == first.rows
    # A torn part file is redone, not read.
    (tmp_path / ".partial" / "attribute-A.pt").write_bytes(b"torn")
    fifth = CountingRunner()
    EB.run_editbench(_sized_inputs(planted, fifth, tmp_path), other)
    assert 0 < fifth.rows < first.rows


def test_bad_sizing_options_are_refused() -> None:
    with pytest.raises(ValueError, match="--test-sizes"):
        EB.EditBenchConfig(test_sizes="some").check()
    with pytest.raises(ValueError, match="--side-windows"):
        EB.EditBenchConfig(side_windows="x").check()
    with pytest.raises(ValueError, match="--max-group"):
        EB.EditBenchConfig(max_group=0).check()
