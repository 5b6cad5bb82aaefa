"""Attribute probes (Table 1 protocol): a planted signal is found, noise stays at chance, the
streamed top-column selection matches an in-memory computation, and the CLI writes its files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hsae.analysis import probe as P
from hsae.cli import main
from hsae.data.store import ActivationStore
from hsae.data.store_writer import ActivationStoreWriter
from hsae.sae import build_sae, load_sae, make_config
from hsae.sae.threshold import codes_as_tokens, threshold_codes

C, K, L = 8, 3, 16
N_TRAIN, N_VAL, N_TEST = 240, 20, 100
N = N_TRAIN + N_VAL + N_TEST
NAMES = ["Signal", "Noise", "Rare"]


def planted_direction(seed: int = 0) -> np.ndarray:
    v = np.random.default_rng([seed, 1]).standard_normal(K * K)
    return v / np.linalg.norm(v)


def planted_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """h ~ N(0, 1) plus ±3 along one direction of channel 0 for "Signal"; "Noise" is a coin flip
    independent of h; "Rare" is present in ~10 % of images, also independent of h."""
    rng = np.random.default_rng(seed)
    signal = rng.random(N) < 0.5
    labels = np.stack([signal, rng.random(N) < 0.5, rng.random(N) < 0.1], axis=1)
    h = rng.standard_normal((N, C, K * K))
    h[:, 0] += 3.0 * np.where(signal, 1.0, -1.0)[:, None] * planted_direction(seed)
    return h.reshape(N, C, K, K).astype(np.float32), np.where(labels, 1, -1).astype(np.int8)


def flat_sae_with_a_planted_pair() -> torch.nn.Module:
    """A random flat SAE whose latents 0 and 1 read +v and −v of channel 0: like a trained SAE,
    its strongest codes carry the signal, so they survive 95 % thresholding."""
    model = build_sae(make_config("flat", C, K, n_latents=48))
    v = torch.from_numpy(planted_direction()).float()
    with torch.no_grad():
        model.W_enc[:, :2] = 0.0
        model.W_enc[: K * K, 0], model.W_enc[: K * K, 1] = 3 * v, -3 * v
    return model


def write_store(out: Path, h: np.ndarray, attrs: np.ndarray | None) -> ActivationStore:
    w = ActivationStoreWriter.open(
        out,
        meta={"model": {"model_id": "unit"}, "t": 0.7},
        shape=(C, K, K),
        dtype="float16",
        shard_size=64,
        ids=[f"{i:04d}.png" for i in range(len(h))],
        attributes=attrs,
        attribute_names=NAMES if attrs is not None else None,
        splits=[0] * N_TRAIN + [1] * N_VAL + [2] * N_TEST,
    )
    for i in w.pending_shards():
        a, b = w.shard_rows(i)
        w.write_shard(i, h[a:b])
    return ActivationStore(out)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RUN/acts (planted store), RUN/sae (random-init channel-aware SAE), RUN/flat (flat SAE)."""
    run = tmp_path_factory.mktemp("run")
    write_store(run / "acts", *planted_data())
    torch.manual_seed(0)
    cfg = make_config("channel_aware", C, K, n_latents=L, n_train_images=N_TRAIN)
    build_sae(cfg).save(run / "sae")
    flat_sae_with_a_planted_pair().save(run / "flat")
    return run


@pytest.fixture(scope="module")
def doc(run_dir: Path) -> dict:
    store = ActivationStore(run_dir / "acts")
    return P.run_probe(store, run_dir / "sae", run_dir / "flat", n_components=32)


def test_planted_signal_is_found_and_noise_stays_at_chance(doc: dict) -> None:
    assert [m["key"] for m in doc["methods"]] == ["sae", "flat_sae", "pca", "random", "majority"]
    for key in ("sae", "flat_sae", "pca", "random"):
        res = doc["results"][key]
        assert res["Signal"]["accuracy"] >= 0.9, (key, res["Signal"])
        assert 0.3 <= res["Noise"]["balanced_accuracy"] <= 0.7, (key, res["Noise"])
        assert doc["mean"][key]["accuracy"] == pytest.approx(
            np.mean([res[a]["accuracy"] for a in NAMES])
        )
    assert all(r["balanced_accuracy"] == 0.5 for r in doc["results"]["majority"].values())
    assert doc["n_train"] == N_TRAIN and doc["n_test"] == N_TEST


def test_methods_record_their_settings(doc: dict) -> None:
    m = {d["key"]: d for d in doc["methods"]}
    assert m["sae"]["threshold_k"] >= 1 and m["sae"]["n_features"] == 32
    assert m["sae"]["n_columns_total"] == C * L
    # L = 16 latents per token: k = 1 already keeps ≥ 1/16 of them, so 95 % is out of reach.
    assert 0.5 <= m["sae"]["threshold_sample_sparsity"] <= 1.0
    assert m["flat_sae"]["n_columns_total"] == 48 and m["flat_sae"]["n_features"] == 32
    assert m["pca"]["n_features"] == 32 and "capped_from" not in m["pca"]
    assert m["random"]["n_features"] == 32


def test_streamed_top_columns_match_an_in_memory_computation(run_dir: Path) -> None:
    store = ActivationStore(run_dir / "acts")
    sae = P.sae_method("sae", "SAE", run_dir / "sae", store, 2, 0.95, 0)
    rows = store.indices_for_split("train")
    P.select_columns(store, rows, [sae], n=20, batch=7)  # batches cross shard boundaries
    with torch.no_grad():
        model = load_sae(run_dir / "sae").eval()
        h = torch.from_numpy(store[rows].astype(np.float32))
        codes = threshold_codes(codes_as_tokens(model.encode(h)), 2).flatten(1).numpy()
    expected = np.sort(np.argsort(-codes.astype(np.float64).mean(0), kind="stable")[:20])
    np.testing.assert_array_equal(sae.columns, expected)
    feats = P.extract_features(store, rows, [sae], batch=7)["sae"]
    np.testing.assert_allclose(feats, codes[:, expected], rtol=1e-5, atol=1e-6)


def test_top_columns_ties_and_short_inputs() -> None:
    means = np.array([0.0, 2.0, 1.0, 2.0, 0.0])
    np.testing.assert_array_equal(P.top_columns(means, 2), [1, 3])
    np.testing.assert_array_equal(P.top_columns(means, 3), [1, 2, 3])
    np.testing.assert_array_equal(P.top_columns(means, 99), np.arange(5))


def test_balanced_accuracy_and_one_class_train() -> None:
    y = np.array([True, True, True, False])
    assert P.balanced_accuracy(y, np.array([True, True, True, True])) == 0.5
    assert P.balanced_accuracy(y, np.array([True, False, True, False])) == pytest.approx(5 / 6)
    x = np.zeros((4, 2))
    r = P.fit_probe(x, np.ones(4, bool), x, y)
    assert r["note"] == "one class in train" and r["accuracy"] == 0.75


def test_pca_is_capped_below_the_number_of_train_images(run_dir: Path) -> None:
    store = ActivationStore(run_dir / "acts")
    m = P.pca_method(store, store.indices_for_split("train")[:40], n=512, batch=64)
    # 40 train images: at most 39 informative components (and never more than C·K·K = 72).
    assert m.info["n_features"] <= 39 and m.info["capped_from"] == 512


def test_cli_writes_probe_json_and_table(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    out = run_dir / "probe"
    argv = ["probe", "--store", str(run_dir / "acts"), "--sae", str(run_dir / "sae")]
    assert main([*argv, "--out", str(out), "--n-components", "24", "--threshold-k", "none"]) == 0
    doc = json.loads((out / P.PROBE_FILE).read_text())
    assert doc["settings"]["n_components"] == 24 and doc["attributes"] == NAMES
    assert doc["methods"][0]["threshold_k"] is None
    table = (out / P.TABLE_FILE).read_text()
    assert "## Accuracy" in table and "## Balanced accuracy" in table
    assert table.count("| **mean** |") == 2
    for name in ("SAE unthresholded", "PCA-24", "random-24", "majority", "Signal", "Rare"):
        assert name in table
    assert "wrote" in capsys.readouterr().out


def test_cli_errors_name_the_problem(tmp_path: Path, run_dir: Path, capsys) -> None:
    h, _ = planted_data()
    write_store(tmp_path / "unlabelled", h, None)
    argv = ["probe", "--store", str(tmp_path / "unlabelled"), "--sae", str(run_dir / "sae")]
    assert main(argv) == 2
    assert "no attribute labels" in capsys.readouterr().err
    argv = ["probe", "--store", str(run_dir / "acts"), "--sae", str(tmp_path / "nope")]
    assert main([*argv, "--out", str(tmp_path / "p")]) == 2
    assert "not found" in capsys.readouterr().err
    argv[-1] = str(run_dir / "sae")
    assert main([*argv, "--threshold-k", "99", "--out", str(tmp_path / "p")]) == 2
    assert "exceeds" in capsys.readouterr().err
