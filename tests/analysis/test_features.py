"""Feature discovery: AUROC, streaming statistics vs brute force, planted components found (with
their sign), max-activating images and the `hsae features` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from hsae.analysis import code_scan as F
from hsae.analysis import features as FT
from hsae.cli import main
from hsae.data.store import ActivationStore
from hsae.data.store_writer import ActivationStoreWriter
from hsae.editing.intervene import encode_tokens
from hsae.sae import build_sae, make_config
from hsae.sae.selection import resolve_threshold_k

C, K, L = 4, 3, 6
N, N_TRAIN, N_VAL = 120, 80, 10  # the remaining 30 rows are the test split
ATTRS = ["A", "B", "Noise"]
CONST_CH, CONST_LAT = 2, 3  # planted top component: fires on every image, strongest mean


def _orthonormal(n: int, seed: int = 1) -> list[np.ndarray]:
    """n orthonormal K·K patterns: no detector responds to another's pattern."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((K * K, n)))
    return [q[:, i] for i in range(n)]


P, Q, R = _orthonormal(3)  # patterns of A (channel 1), ¬B (channel 3), the constant (channel 2)


def planted_data(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """h (n, C, K, K), ±1 labels (n, 3) and the constant pattern's per-image amplitude.

    A puts 3·P on channel 1; B *removes* 3·Q from channel 3 (present without B, so a detector
    of Q is anti-correlated with B); channel 2 holds exactly (4 + u)·R; "Noise" is independent.
    """
    rng = np.random.default_rng(seed)
    y = rng.random((n, 3)) < 0.5
    y[:4, 0], y[4:8, 0] = True, False  # both classes in every split, whatever the seed
    amp = rng.random(n)
    h = 0.05 * rng.standard_normal((n, C, K * K))
    h[:, 1] += 3 * y[:, [0]] * P
    h[:, 3] += 3 * ~y[:, [1]] * Q
    h[:, CONST_CH] = (4 + amp)[:, None] * R  # noise-free: the amplitude alone orders the images
    return h.reshape(n, C, K, K).astype(np.float32), np.where(y, 1, -1).astype(np.int8), amp


def write_store(out: Path, h: np.ndarray, labels: np.ndarray) -> ActivationStore:
    n = len(h)
    w = ActivationStoreWriter.open(
        out,
        meta={"model": {"model_id": "unit", "image_size": 8}, "t": 0.7, "steps": 10},
        shape=(C, K, K),
        dtype="float32",
        shard_size=32,
        ids=[f"img{i:03d}.png" for i in range(n)],
        attributes=labels,
        attribute_names=ATTRS,
        splits=[0] * N_TRAIN + [1] * N_VAL + [2] * (n - N_TRAIN - N_VAL),
    )
    for i in w.pending_shards():
        a, b = w.shard_rows(i)
        w.write_shard(i, h[a:b])
    return ActivationStore(out)


def planted_sae():
    """Channel-aware SAE whose latents 1, 2, 3 detect P, Q, R (ReLU(⟨x, pattern⟩ − 1.5)); the
    context dims are not read, the rest is zero."""
    sae = build_sae(make_config("channel_aware", C, K, n_latents=L, n_train_images=N_TRAIN))
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            p.zero_()
        for j, pat in ((1, P), (2, Q), (CONST_LAT, R)):
            sae.W_enc[: K * K, j] = torch.from_numpy(pat).float()
            sae.b_enc[j] = -1.5
            sae.W_dec[j, : K * K] = torch.from_numpy(pat).float()
    return sae.eval()


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("features")
    h, labels, amp = planted_data()
    store = write_store(root / "acts", h, labels)
    sae = planted_sae()
    sae.save(root / "sae")
    data = root / "data"
    data.mkdir()
    for i, name in enumerate(store.ids):  # a plain image folder whose names are the store ids
        Image.new("RGB", (8, 8), (i, 255 - i, 7)).save(data / name)
    return {"root": root, "store": store, "sae": sae, "h": h, "labels": labels, "amp": amp}


# ----- AUROC --------------------------------------------------------------------------------------
def test_auroc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    scores = np.where(rng.random((200, 5)) < 0.6, 0.0, rng.random((200, 5)))  # many tied zeros
    scores[:, 1] += y  # informative column
    scores[:, 2] = -scores[:, 1]  # anti-correlated column
    ours = F.auroc(scores, y)
    ref = [roc_auc_score(y, scores[:, j]) for j in range(5)]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    assert ours[1] > 0.9 and ours[2] < 0.1
    assert np.isnan(F.auroc(scores, np.zeros(200, bool))).all()
    with pytest.raises(ValueError, match="labels"):
        F.auroc(scores, y[:10])


# ----- pass 1 against brute force -----------------------------------------------------------------
def test_scan_matches_brute_force(planted: dict) -> None:
    store, sae = planted["store"], planted["sae"]
    rows = np.arange(5, N)  # a batch size that splits shards unevenly
    train = store.indices_for_split("train")
    scan = F.scan_codes(sae, store, rows, 2, batch=7, n_top=4, labelled_rows=train)
    with torch.no_grad():
        all_codes = encode_tokens(sae, torch.from_numpy(planted["h"]), 2).flatten(1).numpy()
    codes = all_codes[rows]
    np.testing.assert_allclose(scan.mean, codes.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(scan.fire, (codes > 0).sum(0))
    np.testing.assert_allclose(scan.max, codes.max(0), rtol=1e-6)
    k = CONST_CH * L + CONST_LAT
    expect = rows[np.argsort(-codes[:, k], kind="stable")[:4]]
    assert scan.top_rows[:, k].tolist() == expect.tolist()
    y = planted["labels"][train] > 0
    np.testing.assert_allclose(scan.pos["sum"], y.T.astype(float) @ all_codes[train], rtol=1e-6)
    np.testing.assert_allclose(scan.lab["fire"], (all_codes[train] > 0).sum(0))


def test_top_components_finds_the_planted_constant(planted: dict) -> None:
    scan = F.scan_codes(planted["sae"], planted["store"], np.arange(N), None, batch=32, n_top=5)
    top = F.top_components(scan, 3, "mean")
    assert (top[0]["token"], top[0]["latent"]) == (CONST_CH, CONST_LAT)
    assert top[0]["component"] == f"{CONST_CH}:{CONST_LAT}"
    assert top[0]["flat_index"] == CONST_CH * L + CONST_LAT
    assert top[0]["freq"] == 1.0
    # Max-activating images: the rows with the largest planted amplitude, best first.
    assert top[0]["top_rows"] == np.argsort(-planted["amp"])[:5].tolist()
    assert F.top_components(scan, 1, "freq")[0]["freq"] == 1.0
    with pytest.raises(ValueError, match="rank-by"):
        F.top_components(scan, 3, "median")


# ----- per-attribute components -------------------------------------------------------------------
def test_best_components_find_planted_features_with_sign(planted: dict) -> None:
    res = F.best_components_per_attribute(planted["sae"], planted["store"], None, n_candidates=4)
    a, b = res["A"]["best"], res["B"]["best"]
    assert (a["token"], a["latent"], a["sign"]) == (1, 1, 1)
    assert a["auroc_train"] > 0.99 and a["auroc_test"] > 0.99
    assert (b["token"], b["latent"], b["sign"]) == (3, 2, -1)  # anti-correlated: fires without B
    assert b["auroc_train"] < 0.01 and b["auroc_test"] < 0.01
    assert res["A"]["n_train"] == N_TRAIN and res["A"]["n_test"] == N - N_TRAIN - N_VAL
    assert abs(res["Noise"]["best"]["auroc_train"] - 0.5) < 0.3  # nothing planted


def test_candidates_agree_with_exhaustive_auroc(planted: dict) -> None:
    store, sae = planted["store"], planted["sae"]
    train = store.indices_for_split("train")
    few = F.best_components_per_attribute(sae, store, 2, n_candidates=3)
    every = F.best_components_per_attribute(sae, store, 2, n_candidates=C * L)
    with torch.no_grad():
        codes = encode_tokens(sae, torch.from_numpy(planted["h"][train]), 2).flatten(1).numpy()
    for j, name in enumerate(ATTRS):
        y = planted["labels"][train, j] > 0
        auc = np.array([roc_auc_score(y, codes[:, k]) for k in range(C * L)])
        best = float(auc[np.argmax(np.abs(auc - 0.5))])
        assert every[name]["best"]["auroc_train"] == pytest.approx(best, abs=1e-12)
        if name != "Noise":  # the planted ones are found from a 3-candidate shortlist too
            assert few[name]["best"]["flat_index"] == every[name]["best"]["flat_index"]


def test_resolve_threshold_k(planted: dict) -> None:
    store, sae = planted["store"], planted["sae"]
    assert resolve_threshold_k(sae, "none", store)[0] is None
    assert resolve_threshold_k(sae, "3", store)[0] == 3
    k, info = resolve_threshold_k(sae, "auto", store, target=0.9)
    assert 1 <= k <= L and info["target_sparsity"] == 0.9 and "train rows" in info["how"]
    for bad in ("0", "abc", str(L + 1)):
        with pytest.raises(ValueError, match="threshold-k"):
            resolve_threshold_k(sae, bad, store)


# ----- the command --------------------------------------------------------------------------------
def test_features_command_writes_tables_and_grids(planted: dict) -> None:
    root = planted["root"]
    out = root / "out"
    args = ["features", "--store", str(root / "acts"), "--sae", str(root / "sae")]
    args += ["--out", str(out), "--data", str(root / "data"), "--top", "3", "--n-images", "4"]
    assert main([*args, "--threshold-k", "2", "--no-progress"]) == 0
    doc = json.loads((out / "features.json").read_text())
    assert doc["settings"]["threshold_k"] == 2
    assert doc["top_components"][0]["component"] == f"{CONST_CH}:{CONST_LAT}"
    assert doc["top_components"][0]["top_ids"][0] == f"img{int(np.argmax(planted['amp'])):03d}.png"
    assert doc["attributes"]["B"]["best"]["component"] == "3:2"
    table = (out / "table.md").read_text()
    assert "| A | 1:1 | 7 | + |" in table and "| B | 3:2 | 20 | − |" in table
    with Image.open(out / FT.TOP_GRID_FILE) as im:  # 3 rows × 4 tiles of 8 px, upscaled 3×
        assert im.size == (4 * 8 * 3, 3 * 8 * 3)
    with Image.open(out / FT.ATTRIBUTE_GRID_FILE) as im:
        assert im.size == (4 * 8 * 3, len(ATTRS) * 8 * 3)
    stats = np.load(out / FT.STATS_FILE)
    assert stats["mean"].shape == (C * L,)


def test_features_without_data_and_with_the_wrong_folder(
    planted: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = planted["root"]
    base = ["features", "--store", str(root / "acts"), "--sae", str(root / "sae")]
    assert main([*base, "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    doc = json.loads((tmp_path / "a" / "features.json").read_text())
    assert "top_grid" not in doc["files"] and "--data" in doc["files"]["note"]
    assert not (tmp_path / "a" / FT.TOP_GRID_FILE).exists()
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (8, 8)).save(other / "unrelated.png")
    rc = main([*base, "--out", str(tmp_path / "b"), "--data", str(other), "--no-progress"])
    assert rc == 2
    assert "not in --data" in capsys.readouterr().err
