"""ShuffledStream: every row once per pass, seeded order, memory bounded by the buffer."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import psutil
import pytest

from hsae.data.store import ActivationStore
from hsae.data.store_writer import ActivationStoreWriter
from hsae.data.stream import ShuffledStream


def _store(path: Path, n: int, shape: tuple[int, int, int], shard: int) -> ActivationStore:
    ids = [f"{i:06d}.png" for i in range(n)]
    w = ActivationStoreWriter.open(path, {"kind": "test"}, shape, shard_size=shard, ids=ids)
    rng = np.random.default_rng(0)
    for i in w.pending_shards():
        a, b = w.shard_rows(i)
        h = rng.standard_normal((b - a, *shape), dtype=np.float32)
        h[:, 0, 0, 0] = np.arange(a, b)  # row number readable from the data itself
        w.write_shard(i, h)
    return ActivationStore(path)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> ActivationStore:
    return _store(tmp_path_factory.mktemp("s") / "acts", 100, (2, 2, 2), 16)


def test_every_row_once_with_its_own_values(small: ActivationStore) -> None:
    batches = list(ShuffledStream(small, batch_size=8, buffer_rows=24, seed=3))
    rows = np.concatenate([r for _, r in batches])
    assert sorted(rows.tolist()) == list(range(100))
    assert rows.tolist() != sorted(rows.tolist())  # shuffled
    assert [len(r) for _, r in batches] == [8] * 12 + [4]
    for h, r in batches:
        np.testing.assert_array_equal(h, small[r])
        np.testing.assert_array_equal(h[:, 0, 0, 0], r.astype(np.float16))


def test_order_is_seeded_and_indices_select(small: ActivationStore) -> None:
    def order(**kw: object) -> list[int]:
        s = ShuffledStream(small, batch_size=5, buffer_rows=20, **kw)  # type: ignore[arg-type]
        return np.concatenate([r for _, r in s.iter_epoch(int(kw.pop("epoch", 0)))]).tolist()

    assert order(seed=1) == order(seed=1)
    assert order(seed=1) != order(seed=2)
    picked = np.arange(0, 100, 3)
    assert sorted(order(seed=1, indices=picked)) == picked.tolist()
    with pytest.raises(ValueError, match="must hold at least one batch"):
        ShuffledStream(small, batch_size=30, buffer_rows=20)


def test_peak_rss_stays_flat_over_a_store_many_buffers_large(tmp_path: Path) -> None:
    store = _store(tmp_path / "big", 6144, (64, 8, 8), 256)  # 48 MiB of float16 rows
    stream = ShuffledStream(store, batch_size=64, buffer_rows=512)  # a 4 MiB buffer
    buffer_bytes = 512 * stream.row_bytes
    assert store.nbytes_on_disk() > 10 * buffer_bytes
    proc = psutil.Process()
    gc.collect()
    base = peak = proc.memory_info().rss
    seen = 0
    for h, _ in stream:
        seen += len(h)
        peak = max(peak, proc.memory_info().rss)
    assert seen == len(store)
    # Buffer + one chunk + one batch, plus allocator slack; a full read would add 48 MiB.
    assert peak - base < 2 * buffer_bytes + 8 * 2**20, (peak - base) / 2**20
