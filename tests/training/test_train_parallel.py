"""Data-parallel SAE training over 2 CPU processes (gloo): the weights of one process at the same
global batch, and checkpoints that resume at another world size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hsae.data.store import ActivationStore
from hsae.data.store_writer import ActivationStoreWriter
from hsae.sae import WEIGHTS_FILE, build_sae, make_config
from hsae.training.config import TrainConfig
from hsae.training.distributed import Parallel, train_parallel

N, SHAPE, BATCH = 48, (8, 4, 4), 8


def _cfg(steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_images=BATCH, split="all", warmup_steps=2,
                       checkpoint_every=3, log_every=1, init_images=32)  # fmt: skip


def _train(store: str, out: str, steps: int, resume: bool = False) -> None:
    torch.set_num_threads(1)
    s = ActivationStore(store)
    torch.manual_seed(0)
    sae = build_sae(make_config("channel_aware", SHAPE[0], SHAPE[1], n_latents=16,
                                n_train_images=N))  # fmt: skip
    train_parallel(sae, s, _cfg(steps), out, resume=resume, progress=False)


def _launch(*args: object) -> None:
    from accelerate import debug_launcher

    debug_launcher(_train, args=tuple(str(a) if isinstance(a, Path) else a for a in args))


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / WEIGHTS_FILE)


def _close(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("acts") / "acts"
    ids = [f"{i}" for i in range(N)]
    w = ActivationStoreWriter.open(path, {"model": "test"}, SHAPE, "float32", N, ids)
    w.write_shard(0, np.random.default_rng(0).standard_normal((N, *SHAPE), dtype=np.float32))
    return path


@pytest.fixture(scope="module")
def single(store: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "sae"
    _train(str(store), str(out), 6)
    return out


def test_two_processes_match_one_at_the_same_global_batch(store, single, tmp_path) -> None:
    _launch(store, tmp_path / "sae", 6)
    _close(single, tmp_path / "sae")
    assert (tmp_path / "sae" / "metrics.json").is_file()


def test_checkpoints_resume_at_another_world_size(store, single, tmp_path) -> None:
    _launch(store, tmp_path / "a", 3)  # two processes, then one
    _train(str(store), str(tmp_path / "a"), 6, resume=True)
    _close(single, tmp_path / "a")
    _train(str(store), str(tmp_path / "b"), 3)  # one process, then two
    _launch(store, tmp_path / "b", 6, True)
    _close(single, tmp_path / "b")


def test_an_indivisible_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        Parallel(0, 3).local(torch.zeros(BATCH))


def test_ranks_share_the_global_batch() -> None:
    x = torch.arange(BATCH)
    parts = [Parallel(r, 2).local(x) for r in range(2)]
    assert [len(p) for p in parts] == [BATCH // 2] * 2
    assert torch.equal(torch.cat(parts), x)
