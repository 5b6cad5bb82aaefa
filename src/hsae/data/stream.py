"""Shuffled streaming over an activation store with memory bounded by a buffer, not the store.

A 200k-image SD store is ~33 GB: it cannot be loaded, and reading rows in a global random order
turns every batch into thousands of small random reads. `ShuffledStream` instead visits shards in
a seeded random order, reads each shard front to back in chunks of contiguous rows (sequential
I/O with plain `readinto` calls, so no memory map keeps touched pages resident in the process),
and draws batches at random from a shuffle buffer of `buffer_rows` rows, refilled as it drains
(the shuffle-buffer scheme of tf.data and WebDataset). Every selected row is yielded exactly once
per pass. The order is not a uniform permutation: rows that were close on disk are likelier to
share a batch, and the larger the buffer (a few shards' worth is plenty), the better the mix.

Memory: the buffer plus one chunk plus one batch, whatever the store's size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hsae.data.store import ActivationStore, shard_bounds


@dataclass(frozen=True)
class _Shard:
    file: Path
    offset: int  # bytes of the .npy header
    start: int  # first store row


def _npy_offset(path: Path) -> int:
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        if major == 1:
            np.lib.format.read_array_header_1_0(f)
        else:
            np.lib.format.read_array_header_2_0(f)
        return f.tell()


class ShuffledStream:
    """Iterate (h (b, C, K, K) in the store's dtype, row indices (b,)) batches; the last batch
    of a pass may be short. Each `iter()` is one pass; pass `epoch` to vary the order."""

    def __init__(
        self,
        store: ActivationStore,
        batch_size: int,
        buffer_rows: int = 8192,
        seed: int = 0,
        indices: Sequence[int] | np.ndarray | None = None,
        chunk_rows: int = 64,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if buffer_rows < batch_size:
            raise ValueError(
                f"buffer_rows ({buffer_rows}) must hold at least one batch ({batch_size})"
            )
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.store, self.batch_size, self.buffer_rows = store, batch_size, buffer_rows
        self.seed, self.chunk_rows = seed, chunk_rows
        rows = store.available_indices() if indices is None else np.asarray(indices, np.int64)
        self.rows = np.unique(rows)
        if self.rows.size and (self.rows[0] < 0 or self.rows[-1] >= len(store)):
            raise IndexError(f"row indices outside 0..{len(store) - 1} of store {store.path}")
        self.row_shape = tuple(store.manifest["shape"])
        self.row_bytes = int(np.prod(self.row_shape)) * store.dtype.itemsize
        self._shards = self._shard_files()

    def __len__(self) -> int:
        """Batches per pass."""
        return -(-len(self.rows) // self.batch_size)

    def _shard_files(self) -> dict[int, _Shard]:
        m = self.store.manifest
        out = {}
        for s in m["shards"]:
            f = self.store.path / s["file"]
            start, _ = shard_bounds(int(s["index"]), m["num_images"], m["shard_size"])
            out[int(s["index"])] = _Shard(f, _npy_offset(f), start)
        return out

    def _chunks(self, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, Any]]:
        """(rows, read(dst)) per chunk: shards in random order, each read front to back."""
        size = int(self.store.manifest["shard_size"])
        shard_of = self.rows // size
        for s in rng.permutation(np.unique(shard_of)):
            shard = self._shards.get(int(s))
            if shard is None:
                raise IndexError(f"shard {int(s)} of {self.store.path} is not written yet")
            local = self.rows[shard_of == s] - shard.start
            with open(shard.file, "rb", buffering=0) as f:
                for group in np.split(local, np.flatnonzero(np.diff(local // self.chunk_rows)) + 1):
                    yield group + shard.start, self._reader(f, shard, group)

    def _reader(self, f: Any, shard: _Shard, group: np.ndarray) -> Any:
        lo, hi = int(group[0]), int(group[-1]) + 1

        def read(dst: np.ndarray) -> None:
            # Contiguous rows (a whole store, or a split stored in blocks) land in place.
            raw = dst if hi - lo == len(group) else np.empty((hi - lo, *self.row_shape), dst.dtype)
            f.seek(shard.offset + lo * self.row_bytes)
            if f.readinto(raw.data.cast("B")) != raw.nbytes:
                raise ValueError(f"{shard.file}: shorter than its manifest entry")
            if raw is not dst:
                dst[:] = raw[group - lo]

        return read

    def iter_epoch(self, epoch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rng = np.random.default_rng([self.seed, epoch])
        cap = self.buffer_rows + self.chunk_rows  # room for one more chunk: reads land in place
        buf = np.empty((cap, *self.row_shape), self.store.dtype)
        buf_rows = np.empty(cap, np.int64)
        fill = 0
        for rows, read in self._chunks(rng):
            while fill + len(rows) > cap or fill >= self.buffer_rows + self.batch_size:
                yield self._draw(buf, buf_rows, fill, rng)
                fill -= self.batch_size
            read(buf[fill : fill + len(rows)])
            buf_rows[fill : fill + len(rows)] = rows
            fill += len(rows)
        while fill > 0:
            n = min(self.batch_size, fill)
            yield self._draw(buf, buf_rows, fill, rng, n)
            fill -= n

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.iter_epoch(0)

    def _draw(
        self,
        buf: np.ndarray,
        buf_rows: np.ndarray,
        fill: int,
        rng: np.random.Generator,
        n: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """n random rows out of the first `fill`; the buffer's tail moves into their slots."""
        n = self.batch_size if n is None else n
        pick = rng.choice(fill, size=n, replace=False)
        out, out_rows = buf[pick], buf_rows[pick]
        tail = np.arange(fill - n, fill)
        holes = np.sort(pick[pick < fill - n])
        movers = np.setdiff1d(tail, pick, assume_unique=True)
        buf[holes], buf_rows[holes] = buf[movers], buf_rows[movers]
        return out, out_rows
