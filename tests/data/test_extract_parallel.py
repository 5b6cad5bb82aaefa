"""Extraction over 2 CPU processes (gloo, through accelerate): shards split by rank, one
manifest, a killed rank resumes, and the store equals the single-process one bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from hsae.data.extract import Ranks, extract
from hsae.data.images import ImageDataset
from hsae.data.store import MANIFEST, ActivationStore
from hsae.diffusion.backbone import DiffusionBackbone
from hsae.utils.lock import LOCK_FILE

N, SHARD, BATCH, STEPS, T = 12, 2, 2, 4, 0.5


def _run(model: str, data: Path, out: Path, ranks: Ranks | None = None, fail: int = -1) -> None:
    torch.set_num_threads(1)  # the same kernels in every process: bit-identical rows
    bb = DiffusionBackbone.load(model)
    ds: Any = ImageDataset(data, bb.image_size)
    if fail >= 0:
        ds = _FailingAt(ds, fail)
    opts = {"batch": BATCH, "shard_size": SHARD, "progress": False}
    extract(ds, bb, out, T, STEPS, ranks=ranks or Ranks.from_launcher(), **opts)


class _FailingAt:
    """The data set, dying when row `bad` is read: a process killed mid-run."""

    def __init__(self, ds: ImageDataset, bad: int) -> None:
        self.ds, self.fail_row = ds, bad

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ds, name)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if i == self.fail_row:
            raise RuntimeError("killed")
        return self.ds[i]


def _launch(model: str, data: Path, out: Path) -> None:
    from accelerate import debug_launcher

    debug_launcher(_run, args=(model, str(data), str(out)), num_processes=2)


def _files(store: Path) -> dict[str, bytes]:
    # The lock file holds its last holder's pid and time, not data.
    return {p.name: p.read_bytes() for p in sorted(store.iterdir()) if p.name != LOCK_FILE}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from hsae.toy.toyfaces import write_dataset

    return write_dataset(tmp_path_factory.mktemp("faces") / "data", N, progress=False)


@pytest.fixture(scope="module")
def reference(pixel_pipeline_dir, images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "acts"
    _run(str(pixel_pipeline_dir), images, out, Ranks())
    return out


def test_two_processes_equal_one_bit_for_bit(pixel_pipeline_dir, images, reference, tmp_path):
    out = tmp_path / "acts"
    _launch(str(pixel_pipeline_dir), images, out)
    assert _files(out) == _files(reference)  # shards and manifest, byte for byte
    assert ActivationStore(out).complete


def test_a_killed_rank_resumes(pixel_pipeline_dir, images, reference, tmp_path) -> None:
    model, out = str(pixel_pipeline_dir), tmp_path / "acts"
    # Rank 0 of 2 dies in its second shard (rows 4-5) after finishing shard 0 ...
    with pytest.raises(RuntimeError, match="killed"):
        _run(model, images, out, Ranks(0, 2), fail=2 * SHARD)
    # ... while rank 1 finishes shards 1, 3, 5 but never sees the manifest updated.
    _run(model, images, out, Ranks(1, 2))
    listed = ActivationStore(out, allow_incomplete=True).manifest["shards"]
    assert listed == [] and len(list(out.glob("shard-*.entry.json"))) == 4
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.npy")}
    _launch(model, images, out)  # the same command again, at two processes
    assert _files(out) == _files(reference)
    for name, mtime in kept.items():  # finished shards were adopted, not redone
        assert (out / name).stat().st_mtime_ns == mtime
    assert not list(out.glob("*.entry.json")) and (out / MANIFEST).is_file()
