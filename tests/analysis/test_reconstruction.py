"""Evaluation stage (Table 2): metric definitions, streaming, thresholding, baselines, the CLI,
and spliced fidelity through a tiny U-Net."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from hsae.analysis import reconstruction as E
from hsae.cli import eval as EC
from hsae.cli import main
from hsae.data.store import ActivationStore
from hsae.data.store_writer import ActivationStoreWriter
from hsae.sae import FlatSAE, build_sae, make_config
from hsae.sae import selection as S
from hsae.utils.splits import split_rows

C, K = 4, 3
D = C * K * K
N, N_TRAIN, N_TEST = 64, 48, 12  # 48 train, 4 val, 12 test


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(before)


def synthetic_h(n: int = N, seed: int = 0) -> np.ndarray:
    """Rank-5 structure + an offset + a little noise, so PCA and SAEs have something to find."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((5, D))
    coef = rng.standard_normal((n, 5)) * np.array([5, 4, 3, 2, 1])
    h = coef @ basis + 1.5 + 0.05 * rng.standard_normal((n, D))
    return h.reshape(n, C, K, K).astype(np.float32)


def write_store(out: Path, h: np.ndarray, shape: tuple[int, ...] = (C, K, K)) -> ActivationStore:
    n = len(h)
    w = ActivationStoreWriter.open(
        out,
        meta={"model": {"model_id": "unit"}, "t": 0.7, "timestep": 701, "steps": 10, "prompt": ""},
        shape=shape,
        dtype="float32",
        shard_size=16,
        ids=[f"{i:03d}.png" for i in range(n)],
        splits=[0] * N_TRAIN + [1] * (n - N_TRAIN - N_TEST) + [2] * N_TEST,
    )
    for i in w.pending_shards():
        a, b = w.shard_rows(i)
        w.write_shard(i, h[a:b])
    return ActivationStore(out)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ActivationStore:
    return write_store(tmp_path_factory.mktemp("store"), synthetic_h())


def channel_sae(n_latents: int = 16, l1: float = 1e-3):
    return build_sae(
        make_config("channel_aware", C, K, n_latents=n_latents, l1_coeff=l1, n_train_images=N_TRAIN)
    )


# ----- metric definitions -------------------------------------------------------------------------
def test_metrics_match_a_direct_numpy_computation() -> None:
    rng = np.random.default_rng(1)
    h = rng.standard_normal((20, C, K, K)) * 3 + 1
    h_hat = h + rng.standard_normal(h.shape)
    m = E.reconstruction_metrics(torch.from_numpy(h), torch.from_numpy(h_hat))
    x, y = h.reshape(20, -1), h_hat.reshape(20, -1)
    ev = 1 - ((x - y) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    cos = np.mean((x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1))
    assert m["ev"] == pytest.approx(ev, rel=1e-12)
    assert m["cosine"] == pytest.approx(cos, rel=1e-12)
    assert m["mse"] == pytest.approx(((x - y) ** 2).mean(), rel=1e-12)
    assert m["mae"] == pytest.approx(np.abs(x - y).mean(), rel=1e-12)
    assert m["n_images"] == 20


def test_perfect_and_mean_reconstructions() -> None:
    h = torch.from_numpy(synthetic_h(30)).double()
    perfect = E.reconstruction_metrics(h, h)
    assert perfect["ev"] == 1.0 and perfect["mse"] == 0.0 and perfect["mae"] == 0.0
    assert perfect["cosine"] == pytest.approx(1.0, abs=1e-12)
    mean = E.reconstruction_metrics(h, h.mean(0, keepdim=True).expand_as(h))
    assert mean["ev"] == pytest.approx(0.0, abs=1e-12)


def test_streaming_equals_one_shot() -> None:
    rng = np.random.default_rng(2)
    h = rng.standard_normal((37, D)) * 10 + 100  # large offset: catches Σh² − Nμ² cancellation
    h_hat = h + rng.standard_normal(h.shape)
    acc = E.ReconAccumulator()
    for a in range(0, 37, 5):
        acc.update(h[a : a + 5], h_hat[a : a + 5])
    streamed, one = acc.result(), E.reconstruction_metrics(h, h_hat)
    for key in ("ev", "cosine", "mse", "mae"):
        assert streamed[key] == pytest.approx(one[key], rel=1e-10), key


def test_code_stats_by_hand() -> None:
    codes = torch.zeros(2, 3, 4)  # 2 images, 3 tokens, 4 latents
    codes[0, 0, 1] = codes[0, 2, 1] = codes[1, 1, 2] = 1.0
    s = E.code_stats(codes)
    assert s["active_per_image"] == 1.5 and s["l0"] == pytest.approx(3 / 6)
    assert s["dead_frac"] == 0.5 and s["sparsity"] == pytest.approx(1 - 3 / 24)


# ----- models on a store --------------------------------------------------------------------------
def test_evaluate_model_streams_and_thresholding_cuts_l0(store) -> None:
    sae = channel_sae()
    rows = store.indices_for_split("test")
    small = E.evaluate_model(sae, store, rows, batch=5)
    big = E.evaluate_model(sae, store, rows, batch=64)
    for key in ("ev", "cosine", "mse", "mae", "l0", "active_per_image"):
        assert small[key] == pytest.approx(big[key], rel=1e-6), key
    h = torch.from_numpy(store[rows])
    with torch.no_grad():
        direct = E.reconstruction_metrics(h, sae.decode(sae.encode(h)))
    assert small["ev"] == pytest.approx(direct["ev"], rel=1e-6)
    thr = E.evaluate_model(sae, store, rows, batch=5, threshold_k=1)
    assert thr["l0"] < small["l0"] and len(thr["active_values"]) == N_TEST
    assert sum(thr["active_values"]) / N_TEST == pytest.approx(thr["active_per_image"])


def test_full_rank_pca_explains_everything_and_run_rows(store) -> None:
    models = EC.fit_baselines(store, pca=[D, 2], random_latents=8, batch=16, seed=0)
    models["sae"] = channel_sae()
    rows = E.evaluate_run(store, models, split="test", k_for_threshold="auto")
    by = {r["method"]: r for r in rows}
    full = next(r for r in rows if r["architecture"] == "pca" and r["n_latents"] == D)
    assert full["ev"] == pytest.approx(1.0, abs=1e-5) and full["cosine"] == pytest.approx(1.0)
    two = next(r for r in rows if r["architecture"] == "pca" and r["n_latents"] == 2)
    assert 0.3 < two["ev"] < full["ev"]
    rnd = next(r for r in rows if r["architecture"] == "random")
    assert rnd["ev"] < -10 and not rnd["thresholded"]
    thr = [r for r in rows if r["thresholded"]]
    assert len(thr) == 1 and thr[0]["model_key"] == "sae"
    assert thr[0]["k_sample_sparsity"] == pytest.approx(0.95, abs=0.1)
    assert thr[0]["active_per_image"] < by["sae"]["active_per_image"]


def test_shape_mismatch_and_missing_split(store, tmp_path: Path) -> None:
    wrong = build_sae(make_config("flat", 2, K, n_latents=4))
    wrong.save(tmp_path / "wrong")
    with pytest.raises(ValueError, match=r"\(2, 3, 3\).*\(4, 3, 3\)") as e:
        S.load_checked(tmp_path / "wrong", store)
    assert str(tmp_path / "wrong") in str(e.value) and str(store.path) in str(e.value)
    unsplit = write_store(tmp_path / "nosplit", synthetic_h(N))
    unsplit.manifest["splits"] = [0] * N  # in memory only: a store without test rows
    with pytest.raises(ValueError, match="no rows in split 'test'"):
        split_rows(unsplit, "test")


# ----- CLI ----------------------------------------------------------------------------------------
def test_cli_writes_metrics_table_and_plot(store, tmp_path: Path, capsys) -> None:
    for i, l1 in enumerate((1e-3, 1e-2)):
        channel_sae(l1=l1).save(tmp_path / f"sae{i}")
    out = tmp_path / "eval"
    argv = [
        "eval",
        "--store",
        str(store.path),
        "--sae",
        str(tmp_path / "sae0"),
        str(tmp_path / "sae1"),
    ]
    assert main([*argv, "--fit-pca", "4", "--random", "8", "--out", str(out)]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert len(doc["rows"]) == 6 and doc["settings"]["split"] == "test"  # 2 SAEs ×2, PCA, random
    assert "command" in doc and doc["settings"]["threshold_k"] == "auto"
    table = (out / "table.md").read_text()
    assert table.startswith("| method | active values/image | EV |") and "pca L=4" in table
    assert (out / "ev_vs_budget.png").stat().st_size > 0
    assert "thresholded k=" in capsys.readouterr().out


def test_cli_errors_are_one_line(store, tmp_path: Path, capsys) -> None:
    build_sae(make_config("flat", 2, K, n_latents=4)).save(tmp_path / "wrong")
    argv = ["eval", "--store", str(store.path), "--out", str(tmp_path / "o")]
    assert main([*argv, "--sae", str(tmp_path / "wrong")]) == 2
    assert "the activation store" in capsys.readouterr().err
    assert main([*argv, "--fit-pca", "2", "--threshold-k", "zero"]) == 2
    assert "--threshold-k" in capsys.readouterr().err
    assert main([*argv, "--random", "4", "--spliced", "2"]) == 2
    assert "--data" in capsys.readouterr().err
    assert S.parse_threshold_k("none") is None and S.parse_threshold_k("3") == 3


# ----- spliced fidelity ---------------------------------------------------------------------------
def identity_flat_sae(c: int, k: int) -> FlatSAE:
    """ReLU(h)·I − ReLU(−h)·I = h exactly: decode(encode(h)) == h, bit for bit."""
    d = c * k * k
    sae = build_sae(make_config("flat", c, k, n_latents=2 * d))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    assert isinstance(sae, FlatSAE)
    return sae


@pytest.mark.slow
def test_spliced_identity_is_lossless_and_a_bad_sae_is_not(make_pixel_backbone) -> None:
    backbone = make_pixel_backbone("epsilon")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    c, k, _ = backbone.hspace_shape()
    ident = identity_flat_sae(c, k)
    edits = {"identity": E.sae_edit(ident), "zero": lambda h: torch.zeros_like(h)}
    res = E.spliced_fidelity_many(backbone, images, edits, t=0.5, steps=4)
    r = res["identity"]
    assert r["mse_spliced_vs_clean"] == 0.0 and math.isinf(r["psnr_spliced_vs_clean"])
    assert r["recovered"] == 1.0 and r["h_ev"] == 1.0
    assert r["mse_spliced_vs_input"] == r["mse_clean_vs_input"]
    assert res["zero"]["mse_spliced_vs_clean"] > 0 and res["zero"]["recovered"] < 1.0
    one = E.spliced_fidelity(backbone, images, ident, t=0.5, steps=4, mean_ablation=False)
    assert one["mse_spliced_vs_clean"] == 0.0 and "recovered" not in one


def test_k_store_chooses_k_on_another_stores_train_split(store, tmp_path: Path) -> None:
    """A held-out store with only test rows is evaluated with k chosen on the training store."""
    h = synthetic_h(24, seed=3)
    w = ActivationStoreWriter.open(
        tmp_path / "test-only",
        meta={"model": {"model_id": "unit"}, "t": 0.7, "timestep": 701, "steps": 10, "prompt": ""},
        shape=(C, K, K),
        dtype="float32",
        shard_size=16,
        ids=[f"t{i:03d}.png" for i in range(24)],
        splits=[2] * 24,
    )
    for i in w.pending_shards():
        a, b = w.shard_rows(i)
        w.write_shard(i, h[a:b])
    held_out = ActivationStore(tmp_path / "test-only")
    models = {"sae": channel_sae()}
    with pytest.raises(ValueError, match="train"):
        E.evaluate_run(held_out, models, split="test", k_for_threshold="auto")
    rows = E.evaluate_run(held_out, models, split="test", k_for_threshold="auto", k_store=store)
    k_direct, _ = S.choose_threshold_k(models["sae"], store, S.train_sample_rows(store))
    thr = next(r for r in rows if r["thresholded"])
    assert thr["threshold_k"] == k_direct and thr["n_images"] == 24


def test_threshold_k_above_the_latents_names_the_loaded_sae(tmp_path: Path) -> None:
    from hsae.sae import load_sae

    build_sae(make_config("channel_aware", 4, 2, n_latents=8, n_train_images=2)).save(tmp_path)
    sae = load_sae(tmp_path)
    assert S.resolve_threshold_k(sae, "8")[0] == 8
    with pytest.raises(ValueError, match=rf"exceeds the 8 latents of the SAE at {tmp_path} "):
        S.resolve_threshold_k(sae, "9")
