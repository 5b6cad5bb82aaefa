"""The feature atlas on a planted world whose answers are known: which latent writes which
attribute (with its sign), which it fires on, the effect per unit size, the files it writes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor

from hsae.data.store import ActivationStore
from hsae.data.store_writer import ActivationStoreWriter
from hsae.editing.atlas import AtlasConfig, AtlasInputs, latent_aurocs, run_atlas
from hsae.editing.atlas_write import ATLAS_FILE, format_atlas, latent_label, write_atlas
from hsae.sae import build_sae, make_config

C, S, L = 3, 4, 6  # h = the image itself: 3 channels of 4×4
N, N_TRAIN, N_VAL = 48, 32, 8  # the last 8 rows are the test split, never used
AMP, BIAS = 1.5, 0.45


def _patterns() -> tuple[Tensor, ...]:
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((S * S, 3)))
    return tuple(torch.tensor(q[:, i].reshape(S, S), dtype=torch.float32) for i in range(3))


P, Q, R = _patterns()
# latent → (pattern it reads, pattern it writes); latent 0 is dead
PLANTED = {1: (P, P), 2: (Q, Q), 3: (R, R), 4: (P, Q), 5: (Q, -Q)}


def planted_images() -> tuple[Tensor, np.ndarray]:
    """A puts AMP·P on channel 1, B puts AMP·Q on channel 2; channel 0 holds R (no label)."""
    g = torch.Generator().manual_seed(0)
    i = torch.arange(N)
    a, b = (i % 2 == 0), ((i // 2) % 2 == 0)
    x = 0.01 * torch.randn(N, C, S, S, generator=g)
    x[:, 0] += (0.6 + 0.3 * torch.rand(N, generator=g))[:, None, None] * R
    x[:, 1] += a[:, None, None] * AMP * P
    x[:, 2] += b[:, None, None] * AMP * Q
    return x, np.where(torch.stack([a, b], 1).numpy(), 1, -1).astype(np.int8)


class FakeClassifier:
    """A reads P on channel 1, B reads Q on channel 2, Z (no store label) reads R on channel 0."""

    attribute_names = ("A", "B", "Z")

    def predict_logits(self, x: Tensor) -> Tensor:
        a = (x[:, 1] * P).sum((1, 2)) - AMP / 2
        b = (x[:, 2] * Q).sum((1, 2)) - AMP / 2
        z = (x[:, 0] * R).sum((1, 2)) - 0.75
        return torch.stack([a, b, z], 1)


class FakeRunner:
    """Image = h: inversion is the identity and a resume renders the edited h (one step)."""

    def __init__(self) -> None:
        self.resumes: list[int] = []

    def invert(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return x.clone(), x.clone(), x.clone()

    def resume(self, state: Tensor, idx: np.ndarray, edit, window) -> Tensor:
        self.resumes.append(len(idx))
        return edit(state[torch.as_tensor(idx)].clone())


def planted_sae():
    sae = build_sae(make_config("channel_aware", C, S, n_latents=L, n_train_images=N_TRAIN))
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            p.zero_()
        for j, (read, write) in PLANTED.items():
            sae.W_enc[: S * S, j] = read.flatten()
            sae.b_enc[j] = -BIAS
            sae.W_dec[j, : S * S] = write.flatten()
    return sae.eval()


def _store(out: Path, x: Tensor, labels: np.ndarray) -> ActivationStore:
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
def atlas(tmp_path_factory: pytest.TempPathFactory) -> dict:
    x, labels = planted_images()
    root = tmp_path_factory.mktemp("atlas")
    runner = FakeRunner()
    inputs = AtlasInputs(
        store=_store(root / "acts", x, labels),
        sae=planted_sae(),
        classifier=FakeClassifier(),
        runner=runner,
        load_images=lambda rows: x[torch.as_tensor(rows)],
    )
    cfg = AtlasConfig(n_latents=5, n_images=N_VAL, size=0.5, n_examples=2, n_top=3, batch=5)
    doc, pictures = run_atlas(inputs, cfg)
    written = write_atlas(root / "features", doc, pictures)
    return {"doc": written, "out": root / "features", "x": x, "runner": runner}


def _by_latent(doc: dict) -> dict[int, dict]:
    return {r["latent"]: r for r in doc["latents"]}


def test_latents_are_picked_by_auroc_in_turns_and_the_dead_one_is_left_out(atlas: dict) -> None:
    doc = atlas["doc"]
    assert [r["latent"] for r in doc["latents"]] == [1, 2, 4, 5, 3]
    assert [r.get("picked_for") for r in doc["latents"][:4]] == ["A", "B", "A", "B"]


def test_each_latent_is_labelled_by_what_it_writes_and_what_it_fires_on(atlas: dict) -> None:
    got = {
        j: (r["writes"]["attribute"], r["writes"]["sign"], (r["fires_on"] or {}).get("attribute"))
        for j, r in _by_latent(atlas["doc"]).items()
    }
    assert got[1] == ("A", 1, "A") and got[2] == ("B", 1, "B")
    assert got[4] == ("B", 1, "A")  # reads P (fires with A), writes Q (moves B)
    assert got[5] == ("B", -1, "B")  # fires with B, and adding it removes B
    assert got[3][:2] == ("Z", 1)  # writes the classifier's attribute the store has no label of
    rec = _by_latent(atlas["doc"])
    assert rec[1]["fires_on"]["sign"] == 1 and rec[1]["fires_on"]["auroc_train"] == 1.0
    assert [rec[j]["writes_what_it_fires_on"] for j in (1, 2, 4, 5)] == [True, True, False, False]
    assert latent_label(rec[5]) == "writes B (−), fires on B (+)"
    summary = atlas["doc"]["summary"]
    assert summary["n_write_what_they_fire_on"] == 2 and summary["n_same_attribute"] == 3
    assert all(r["writes"]["above_control"] for r in atlas["doc"]["latents"])


def test_effects_are_per_unit_edit_size_over_every_attribute(atlas: dict) -> None:
    """Latent 1 adds ā·P to each of the 3 channels: logit A moves by u·ā and the edit size is
    u·ā·√3/‖h‖, so the effect per unit size is ‖h‖/√3 on every image; B and Z do not move."""
    rec = _by_latent(atlas["doc"])[1]
    assert list(rec["effect"]) == ["A", "B", "Z"]
    val = atlas["x"][N_TRAIN : N_TRAIN + N_VAL]
    want = float(val.flatten(1).norm(dim=1).mean()) / math.sqrt(3)
    assert rec["effect"]["A"] == pytest.approx(want, rel=1e-4)
    assert rec["effect_add"]["A"] == pytest.approx(want, rel=1e-4)
    assert rec["effect_remove"]["A"] == pytest.approx(want, rel=1e-4)  # linear: both sides agree
    assert abs(rec["effect"]["B"]) < 1e-4 and abs(rec["effect"]["Z"]) < 1e-4
    assert rec["size_measured"] == pytest.approx(0.5, rel=1e-5) and rec["n_images"] == N_VAL
    assert _by_latent(atlas["doc"])[5]["effect"]["B"] < 0
    control = atlas["doc"]["control"]
    assert set(control["effect"]) == {"A", "B", "Z"} and control["max_abs_effect"] < want


def test_edits_are_batched_and_the_cards_files_are_written(atlas: dict) -> None:
    # per measured feature (the control + 5 latents): 2·8 rows in chunks of 5, then (latents)
    # the 2 examples at ±2·size in one chunk of 4
    assert atlas["runner"].resumes == [5, 5, 5, 1] + [5, 5, 5, 1, 4] * 5
    out, rec = atlas["out"], _by_latent(atlas["doc"])[1]
    assert (out / ATLAS_FILE).is_file()
    for key in ("drives", "edits", "effects"):
        assert (out / rec["files"][key]).is_file(), key
    assert all(int(i[:-4]) % 2 == 1 for i in rec["top_ids"])  # rows 0, 2, …: images with A
    assert len(rec["top_ids"]) == 3 and len(rec["example_ids"]) == 2
    table = format_atlas(atlas["doc"])
    assert "2 of 5 latents write the attribute they fire on" in table
    assert "| 4 | 5 | B (+, 1.000) | B (−) |" in table


def test_latent_aurocs_match_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    score = rng.integers(0, 3, size=(40, 4)).astype(float)  # many ties
    labels = rng.random((40, 2)) < 0.4
    got = latent_aurocs(score, labels)
    for j in range(4):
        for a in range(2):
            assert got[j, a] == pytest.approx(roc_auc_score(labels[:, a], score[:, j]))
    assert np.isnan(latent_aurocs(score, np.ones((40, 1), dtype=bool))).all()


def test_cli_refuses_bad_atlas_options_before_any_work(
    atlas: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hsae.cli import main

    sae = tmp_path / "sae"
    planted_sae().save(sae)
    base = ["features", "--store", str(atlas["out"].parent / "acts"), "--sae", str(sae)]
    out = tmp_path / "features"
    assert main([*base, "--out", str(out), "--atlas", "--atlas-size", "0"]) == 2
    assert "--atlas-size must be a positive edit size" in capsys.readouterr().err
    assert not out.exists()  # refused before the features were computed
    with pytest.raises(SystemExit):  # argparse's own refusal
        main([*base, "--out", str(out), "--atlas", "--atlas-rank", "x"])
