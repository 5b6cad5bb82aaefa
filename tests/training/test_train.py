"""Streaming SAE trainer: learning, exact resume, atomic checkpoints, NaN guard, folding, init."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hsae import training as T
from hsae.cli import train as CT
from hsae.data.store import ActivationStore
from hsae.data.store_writer import ActivationStoreWriter
from hsae.sae import build_sae, load_sae, make_config
from hsae.training import TrainConfig, TrainingDivergedError, train
from hsae.training import checkpoint as CK
from hsae.training import loop as LP
from hsae.utils.lock import LOCK_FILE
from hsae.utils.splits import split_rows

C, K, N, N_TEST = 8, 4, 48, 8  # 40 training images × 8 channel tokens of 16 dims
META = {"model": {"model_id": "synthetic"}, "timestep": 700, "hook": "unet.mid_block"}


@pytest.fixture(autouse=True)
def one_thread():
    # The machine is shared: tiny matmuls only get slower with more threads competing.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def no_plot(request, monkeypatch):
    # Drawing the PNG dominates a tiny run on a busy machine; one test asks for the real one.
    if "real_plot" not in request.fixturenames:
        monkeypatch.setattr(LP, "plot_curves", lambda history, path: Path(path).write_bytes(b""))


@pytest.fixture
def real_plot() -> None:
    return None


def synthetic_h(n: int = N, seed: int = 0) -> np.ndarray:
    """Channel maps that are sparse non-negative mixes of 12 fixed K×K atoms, plus an offset."""
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((12, K * K))
    coef = rng.exponential(1.0, (n, C, 12)) * (rng.random((n, C, 12)) < 0.2)
    h = coef @ atoms + 0.5 + 0.05 * rng.standard_normal((n, C, K * K))
    return (3.0 * h).reshape(n, C, K, K).astype(np.float32)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ActivationStore:
    out = tmp_path_factory.mktemp("store")
    w = ActivationStoreWriter.open(
        out,
        meta=META,
        shape=(C, K, K),
        shard_size=16,
        ids=[f"{i:03d}" for i in range(N)],
        splits=[0] * (N - N_TEST) + [2] * N_TEST,
    )
    h = synthetic_h()
    for i in w.pending_shards():
        a, b = w.shard_rows(i)
        w.write_shard(i, h[a:b])
    return ActivationStore(out)


def new_sae(arch: str = "channel_aware", seed: int = 0, **kw: Any):
    torch.manual_seed(seed)
    kw.setdefault("n_latents", 24)
    kw.setdefault("l1_coeff", 0.05)
    if arch.startswith("topk") or arch.startswith("spatial"):
        kw.setdefault("k", 3)
    return build_sae(make_config(arch, C, K, n_train_images=N - N_TEST, **kw))


def tcfg(**kw: Any) -> TrainConfig:
    base = dict(steps=24, batch_images=8, warmup_steps=5, checkpoint_every=12, log_every=4)
    return TrainConfig(**{**base, **kw})


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_sae(path).state_dict()


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


# ----- data order ---------------------------------------------------------------------------------
def test_batches_are_a_pure_function_of_seed_and_position(store) -> None:
    idx = split_rows(store, "train")
    assert np.array_equal(idx, np.arange(N - N_TEST))
    a = T.StoreBatches(store, idx, 8, seed=3)
    seen = [next(a)[1] for _ in range(5)]  # one epoch of 40 images
    assert sorted(torch.cat(seen).tolist()) == list(range(N - N_TEST))
    b = T.StoreBatches(store, idx, 8, seed=3)
    b.load_state_dict(a.state_dict())
    for _ in range(7):  # crosses into the next epoch identically
        (ha, ia), (hb, ib) = next(a), next(b)
        assert torch.equal(ha, hb) and torch.equal(ia, ib)
    h, i = next(T.StoreBatches(store, idx, 8, seed=3))
    assert h.dtype == torch.float32 and h.shape == (8, C, K, K)
    assert np.array_equal(h.numpy(), store[idx[i.numpy()]].astype(np.float32))
    assert not torch.equal(i, next(T.StoreBatches(store, idx, 8, seed=4))[1])
    with pytest.raises(ValueError, match="larger than"):
        T.StoreBatches(store, idx, 41, seed=0)


def test_image_index_is_the_rank_within_the_split(store) -> None:
    assert T.image_index_for_rows(store, np.array([0, 5, 39])).tolist() == [0, 5, 39]
    with pytest.raises(ValueError, match="not in split"):
        T.image_index_for_rows(store, np.array([45]))
    unsplit = PoisonedStore(store, row=-1)
    for splits in (None, [None] * N):  # no partition recorded: every row is a training row
        unsplit.splits = splits
        assert np.array_equal(split_rows(unsplit, "train"), np.arange(N))


# ----- learning -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["channel_aware", "topk_channel"])
def test_loss_decreases_on_structured_data(store, tmp_path: Path, arch: str) -> None:
    metrics = train(new_sae(arch), store, tcfg(steps=60, lr=3e-3), tmp_path, progress=False)
    log = read_log(tmp_path)
    assert [r["step"] for r in log] == list(range(4, 61, 4))
    assert log[-1]["mse"] < 0.5 * log[0]["mse"]
    assert metrics["steps"] == 60 and metrics["final"]["mse"] == log[-1]["mse"]
    assert metrics["tokens"] == 60 * 8 * C and metrics["tokens_per_s"] > 0
    assert 0 <= metrics["final"]["dead_pct"] <= 100 and metrics["final"]["l0"] > 0
    for name in ("cfg.json", "sae.safetensors", "metrics.json", "loss_curves.png"):
        assert (tmp_path / name).is_file(), name
    cfg = load_sae(tmp_path).cfg
    assert (cfg.timestep, cfg.model_id, cfg.hook_point) == (700, "synthetic", "unet.mid_block")
    assert cfg.store_path == str(Path(store.path).resolve())


# ----- resume -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def straight(store, tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted 24-step runs, per architecture, to compare resumed runs against."""
    runs = {}
    with pytest.MonkeyPatch.context() as mp:  # module scope: the autouse no_plot is not active
        mp.setattr(T, "plot_curves", lambda history, path: Path(path).write_bytes(b""))
        for arch in ("channel_aware", "topk_channel"):
            out = tmp_path_factory.mktemp(f"straight-{arch}")
            train(new_sae(arch), store, tcfg(l1_warmup=16), out, progress=False)
            runs[arch] = out
    return runs


def assert_same_run(a: Path, b: Path) -> None:
    assert_same_weights(weights(a), weights(b))
    assert_same_weights(weights(a / T.CHECKPOINT), weights(b / T.CHECKPOINT))
    assert read_log(a) == read_log(b)
    sa, sb = T.read_trainer_state(a / T.CHECKPOINT), T.read_trainer_state(b / T.CHECKPOINT)
    assert sa["data"] == sb["data"] and sa["trainer"]["history"] == sb["trainer"]["history"]
    for (pa, qa), (pb, qb) in zip(
        sa["optimizer"]["state"].items(), sb["optimizer"]["state"].items(), strict=True
    ):
        assert pa == pb and all(torch.equal(qa[k], qb[k]) for k in qa)


@pytest.mark.parametrize("arch", ["channel_aware", "topk_channel"])
def test_resume_matches_an_uninterrupted_run(store, straight, tmp_path: Path, arch: str) -> None:
    train(new_sae(arch), store, tcfg(steps=12, l1_warmup=16), tmp_path, progress=False)
    assert T.read_trainer_state(tmp_path / T.CHECKPOINT)["trainer"]["step"] == 12
    # A differently initialised SAE: everything must come from the checkpoint.
    train(new_sae(arch, seed=9), store, tcfg(l1_warmup=16), tmp_path, resume=True, progress=False)
    assert_same_run(straight[arch], tmp_path)


def test_refuses_to_overwrite_or_change_a_run(store, tmp_path: Path) -> None:
    train(new_sae(), store, tcfg(steps=5), tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="resume"):
        train(new_sae(), store, tcfg(steps=10), tmp_path, progress=False)
    with pytest.raises(ValueError, match="lr"):
        train(new_sae(), store, tcfg(steps=10, lr=0.5), tmp_path, resume=True, progress=False)


# ----- atomic checkpoints -------------------------------------------------------------------------
def test_failed_checkpoint_write_keeps_the_previous_one(store, straight, tmp_path, monkeypatch):
    sae = new_sae()
    real_save, calls = sae.save, []

    def dying_save(path):  # the second checkpoint dies after writing part of its files
        calls.append(path)
        if len(calls) == 2:
            (Path(path) / "sae.safetensors").write_bytes(b"half a file")
            raise KeyboardInterrupt("killed")
        return real_save(path)

    monkeypatch.setattr(sae, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train(sae, store, tcfg(l1_warmup=16), tmp_path, progress=False)
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert hidden == [LOCK_FILE]  # no temp checkpoint left; the (released) lock file stays
    ckpt = T.checkpoint_dir(tmp_path)
    assert ckpt is not None and T.read_trainer_state(ckpt)["trainer"]["step"] == 12
    load_sae(ckpt)  # readable
    train(new_sae(), store, tcfg(l1_warmup=16), tmp_path, resume=True, progress=False)
    assert_same_run(straight["channel_aware"], tmp_path)


def test_failed_swap_or_kill_between_renames_recovers(store, tmp_path, monkeypatch) -> None:
    train(new_sae(), store, tcfg(steps=12), tmp_path, progress=False)
    before = (tmp_path / T.CHECKPOINT / T.STATE_FILE).read_bytes()
    real, calls = CK._replace, []

    def failing_replace(src, dst):  # old checkpoint moved aside, new one fails to move in
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(CK, "_replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        train(new_sae(), store, tcfg(steps=24), tmp_path, resume=True, progress=False)
    monkeypatch.setattr(CK, "_replace", real)
    assert (tmp_path / T.CHECKPOINT / T.STATE_FILE).read_bytes() == before
    # A hard kill between the two renames leaves only the moved-aside copy: it is restored.
    (tmp_path / T.CHECKPOINT).rename(tmp_path / f".{T.CHECKPOINT}.old")
    ckpt = T.checkpoint_dir(tmp_path)
    assert ckpt == tmp_path / T.CHECKPOINT and (ckpt / T.STATE_FILE).read_bytes() == before


# ----- NaN / inf guard ----------------------------------------------------------------------------
def test_huge_learning_rate_stops_with_a_clear_error(store, tmp_path: Path) -> None:
    cfg = tcfg(steps=30, lr=1e30, warmup_steps=0, checkpoint_every=1)
    with pytest.raises(TrainingDivergedError, match=r"step \d+: .* not finite") as err:
        train(new_sae(), store, cfg, tmp_path, progress=False)
    step = T.read_trainer_state(tmp_path / T.CHECKPOINT)["trainer"]["step"]
    assert f"step {step})" in str(err.value) and "learning rate" in str(err.value)
    for p in load_sae(tmp_path / T.CHECKPOINT).parameters():
        assert torch.isfinite(p).all()


def test_a_non_finite_gradient_with_a_finite_loss_names_the_parameter(
    store, tmp_path: Path
) -> None:
    sae = new_sae()
    sae.W_dec.register_hook(lambda g: torch.full_like(g, float("nan")))
    with pytest.raises(TrainingDivergedError, match="the gradient of 'W_dec'"):
        train(sae, store, tcfg(steps=5), tmp_path, progress=False)


class PoisonedStore:
    """The reader API of a real store, with one row turned to inf once `poisoned` is set."""

    def __init__(self, inner: ActivationStore, row: int) -> None:
        self.inner, self.row, self.poisoned = inner, row, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        out = self.inner[idx].copy()
        if self.poisoned:
            out[np.asarray(idx) == self.row] = np.inf
        return out


def test_inf_in_the_data_stops_and_keeps_the_checkpoint(store, tmp_path: Path) -> None:
    bad = PoisonedStore(store, row=7)
    train(new_sae(), bad, tcfg(steps=10, checkpoint_every=5), tmp_path, progress=False)
    files = {p.name: p.read_bytes() for p in (tmp_path / T.CHECKPOINT).iterdir()}
    bad.poisoned = True
    with pytest.raises(TrainingDivergedError, match="input batch itself holds NaN/inf") as err:
        train(new_sae(), bad, tcfg(steps=20, checkpoint_every=5), tmp_path, resume=True,
              progress=False)  # fmt: skip
    assert "step 10)" in str(err.value) and "untouched" in str(err.value)
    assert {p.name: p.read_bytes() for p in (tmp_path / T.CHECKPOINT).iterdir()} == files


# ----- normalisation and init ---------------------------------------------------------------------
def test_input_scale_is_folded_into_the_saved_sae(store, tmp_path: Path) -> None:
    sae = new_sae()
    metrics = train(sae, store, tcfg(steps=10), tmp_path, progress=False)
    s = metrics["input_scale"]
    raw = synthetic_h()[:N_TEST]
    assert s == pytest.approx(
        float(np.sqrt(np.mean(store[np.arange(N - N_TEST)].astype(np.float64) ** 2)))
    )
    h = torch.from_numpy(raw)
    trained, saved = load_sae(tmp_path / T.CHECKPOINT), load_sae(tmp_path)
    assert saved.cfg.input_scale == pytest.approx(s) and trained.cfg.input_scale == 1.0
    with torch.no_grad():
        h_hat, codes = saved(h)
        h_hat_train, codes_train = trained(h / s)
    torch.testing.assert_close(h_hat, s * h_hat_train, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(codes, codes_train, rtol=1e-5, atol=1e-5)
    assert_same_weights(sae.state_dict(), saved.state_dict())  # the caller's sae is the saved one
    tokens = torch.from_numpy(store[np.arange(N - N_TEST)].astype(np.float32) / s).flatten(2)
    assert tokens.pow(2).sum(-1).mean() == pytest.approx(K * K, rel=1e-3)  # E‖token‖² = d_in


@pytest.mark.parametrize("normalize", [False, True])
def test_decoder_bias_starts_at_the_data_mean(store, tmp_path: Path, normalize: bool) -> None:
    cfg = tcfg(steps=0, b_dec_init="mean", normalize=normalize, init_images=10_000)
    train(new_sae(), store, cfg, tmp_path, progress=False)
    train_h = torch.from_numpy(store[np.arange(N - N_TEST)].astype(np.float32))
    mean = train_h.flatten(2).reshape(-1, K * K).mean(0)
    torch.testing.assert_close(load_sae(tmp_path).b_dec[: K * K], mean, rtol=1e-5, atol=1e-5)


def test_geometric_median_resists_outliers() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(200, 4, generator=g) * 0.1 + 1.0, torch.full((20, 4), 1e3)])
    gm = T.geometric_median(x)
    assert (gm - 1.0).abs().max() < 0.1 and (x.mean(0) - 1.0).abs().min() > 50
    torch.testing.assert_close(T.geometric_median(torch.tensor([[0.0, 0], [2, 0], [1, 5]])[:2]),
                               torch.tensor([1.0, 0.0]))  # fmt: skip


def test_loss_curves_png(tmp_path: Path, real_plot) -> None:
    rows = [{"step": s, "loss": 1 / s, "mse": 0.5 / s, "l0": 3.0, "dead_pct": 0.0} for s in (1, 2)]
    T.plot_curves(rows, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----- CLI ----------------------------------------------------------------------------------------
def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    CT.add_train_arguments(p)
    return p.parse_args(list(argv))


def test_train_command_runs_and_resumes(store, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    common = ["--store", str(store.path), "--out", str(out), "--quiet", "--latents", "16"]
    assert CT.train_command(parse(*common, "--steps", "6", "--batch", "4", "--l1", "0.01")) == 0
    assert "6 steps" in capsys.readouterr().out
    cfg = load_sae(out).cfg
    assert (cfg.architecture, cfg.n_latents, cfg.l1_coeff, cfg.context) == (
        "channel_aware", 16, 0.01, "channel+image")  # fmt: skip
    assert CT.train_command(parse(*common, "--steps", "9", "--resume")) == 0
    state = T.read_trainer_state(out / T.CHECKPOINT)
    assert state["trainer"]["step"] == 9 and state["train_config"]["batch_images"] == 4
    with pytest.raises(ValueError, match=r"--lr 0\.5"):
        CT.train_command(parse(*common, "--steps", "12", "--resume", "--lr", "0.5"))
    with pytest.raises(ValueError, match="--k"):
        CT.train_command(parse("--store", str(store.path), "--out", str(tmp_path / "x"),
                              "--architecture", "topk_channel"))  # fmt: skip
    shutil.rmtree(out)
