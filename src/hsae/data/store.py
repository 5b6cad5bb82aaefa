"""Sharded, memory-mappable on-disk store of H-space activations h_t (N, C, K, K).

Layout of a store folder::

    manifest.json        run metadata, geometry, ids, splits, shard list (rewritten atomically)
    attributes.npy       (N, A) int8 ±1 labels, written atomically once (absent without labels)
    shard-00000.npy ...  np.save arrays (rows, C, K, K), float16 by default, read with mmap

Shard i always covers rows [i * shard_size, min((i + 1) * shard_size, N)). A shard counts only once
the manifest lists it: its file is written to a hidden temp file in the same folder, fsynced and
renamed, and only then is {index, file, rows, bytes, sha256} added to the manifest. So a killed
writer leaves either a listed, complete shard or nothing the reader will ever look at; a shard file
the manifest does not list is overwritten on resume, and temp files are never read (stale ones are
removed when a writer opens the folder). One folder has one writer at a time: the writer holds
a lock on the folder (hsae.utils.lock, dropped by the kernel if the writer dies).

Reading checks what the manifest promises: a shard's size when the store is opened, and its
sha256 the first time this process reads rows from it (a process-wide cache keyed by path, size
and mtime, so a shard is hashed once per process however often it is opened). `verify()` (the
`hsae store verify` command) hashes every shard.

This module knows nothing of SAEs or diffusers: run metadata arrives as a JSON-able dict.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hsae.data.store_format import _REDO, MANIFEST, _validate_manifest, num_shards, shard_bounds
from hsae.utils.io import read_json, sha256_file
from hsae.utils.splits import SPLIT_CODES

# ----- writer ------------------------------------------------------------------------------------


# ----- reader ------------------------------------------------------------------------------------
# Shards whose sha256 this process has checked: (real path, size, mtime_ns, expected sha256).
_VERIFIED: set[tuple[str, int, int, str]] = set()


class ActivationStore:
    """Read-only view of a store: rows come from per-shard memory maps, never a full load.

    check_checksums=False skips the first-read sha256 (sizes are still checked at open)."""

    def __init__(
        self, path: Path | str, allow_incomplete: bool = False, check_checksums: bool = True
    ) -> None:
        self.path = Path(path)
        self.check_checksums = check_checksums
        if not (self.path / MANIFEST).is_file():
            what = "folder" if self.path.is_dir() else "path"
            raise FileNotFoundError(
                f"no activation store at {self.path}: {MANIFEST} missing "
                f"({what} {'exists' if self.path.exists() else 'does not exist'}); "
                "create one with `hsae extract`"
            )
        self.manifest = _validate_manifest(
            self.path, read_json(self.path / MANIFEST, "activation store manifest")
        )
        m = self.manifest
        done = len(m["shards"])
        total = num_shards(m["num_images"], m["shard_size"])
        if not allow_incomplete and (not m["complete"] or done != total):
            raise ValueError(
                f"activation store {self.path} is incomplete ({done}/{total} shards written); "
                "re-run the same `hsae extract` command to finish it "
                "(or open it with allow_incomplete=True)"
            )
        self._entries = {int(s["index"]): s for s in m["shards"]}
        self._shards: dict[int, np.ndarray] = {i: self._open(s) for i, s in self._entries.items()}
        self._checked: set[int] = set()
        self._attributes: np.ndarray | None = self._load_attributes()

    # ----- metadata ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.manifest["num_images"])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), *self.manifest["shape"])  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.manifest["dtype"])

    @property
    def meta(self) -> dict[str, Any]:
        return self.manifest["meta"]

    @property
    def ids(self) -> list[str]:
        return self.manifest["ids"]

    @property
    def attribute_names(self) -> list[str]:
        return list(self.manifest.get("attribute_names") or [])

    @property
    def attributes(self) -> np.ndarray | None:
        return self._attributes

    @property
    def splits(self) -> list[int | None] | None:
        """CelebA partition code per row (0 train, 1 val, 2 test), or None if unknown."""
        return self.manifest.get("splits")

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    @property
    def skipped(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("skipped") or [])

    def conversions(self) -> dict[str, int] | None:
        """Images converted on loading (mode, size, frames), summed over the written shards;
        None for a store written without these counts."""
        if not any("conversions" in s for s in self.manifest["shards"]):
            return None
        total: dict[str, int] = {}
        for entry in self.manifest["shards"]:
            for kind, n in (entry.get("conversions") or {}).items():
                total[kind] = total.get(kind, 0) + int(n)
        return total

    def nbytes_on_disk(self) -> int:
        files = [self.path / MANIFEST] + [self.path / s["file"] for s in self.manifest["shards"]]
        if self.manifest.get("attributes_file"):
            files.append(self.path / self.manifest["attributes_file"])
        return sum(f.stat().st_size for f in files if f.is_file())

    def available_indices(self) -> np.ndarray:
        """Rows whose shard is written (all rows of a complete store)."""
        n, size = len(self), int(self.manifest["shard_size"])
        parts = [np.arange(*shard_bounds(i, n, size)) for i in sorted(self._shards)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def indices_for_split(self, split: str) -> np.ndarray:
        """Row indices of `split` ("train", "val", "test" or "all"), ascending."""
        if split == "all":
            return np.arange(len(self))
        if split not in SPLIT_CODES:
            raise ValueError(f"unknown split {split!r}; expected one of {[*SPLIT_CODES, 'all']}")
        splits = self.splits
        if splits is None or all(s is None for s in splits):
            raise ValueError(f"activation store {self.path} has no train/val/test partition")
        code = SPLIT_CODES[split]
        return np.array([i for i, s in enumerate(splits) if s == code], dtype=np.int64)

    # ----- rows --------------------------------------------------------------------------------
    def __getitem__(self, key: int | slice | Sequence[int] | np.ndarray) -> np.ndarray:
        """int → (C, K, K); slice / int array / bool mask → (n, C, K, K), in the order asked."""
        if isinstance(key, int | np.integer):
            return self._rows(np.array([self._norm(int(key))]))[0]
        if isinstance(key, slice):
            return self._rows(np.arange(*key.indices(len(self))))
        idx = np.asarray(key)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"boolean mask has shape {idx.shape}, expected ({len(self)},)")
            idx = np.flatnonzero(idx)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise IndexError(f"index a store with an int, a slice or a 1-D int array, not {key!r}")
        idx = idx.astype(np.int64)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"row index out of range for a store of {n} images")
        return self._rows(idx % n)

    def iter_batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        indices: Sequence[int] | np.ndarray | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (h (b, C, K, K), row indices (b,)); the last batch may be short."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = self.available_indices() if indices is None else np.asarray(indices, np.int64)
        if shuffle:
            order = np.random.default_rng(seed).permutation(order)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield self[idx], idx

    def verify(self) -> int:
        """Check every listed shard against its sha256; return how many were checked."""
        bad = [s["file"] for s in self.manifest["shards"] if not self._hash_ok(s, cached=False)]
        if bad:
            raise ValueError(
                f"activation store {self.path}: checksum mismatch in {len(bad)} shard(s): "
                f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} (files corrupted or "
                f"edited): {_REDO}"
            )
        self._checked.update(self._entries)
        return len(self.manifest["shards"])

    # ----- internals ---------------------------------------------------------------------------
    def _norm(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} out of range for a store of {n} images")
        return i % n

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), *self.manifest["shape"]), dtype=self.dtype)
        size = int(self.manifest["shard_size"])
        shard_of = idx // size
        for s in np.unique(shard_of):
            where = np.flatnonzero(shard_of == s)
            mm = self._shards.get(int(s))
            if mm is not None and int(s) not in self._checked:
                self._check_shard(int(s))
            if mm is None:
                raise IndexError(
                    f"rows {idx[where][:3].tolist()}... are in shard {int(s)}, "
                    f"which {self.path} has not written yet (incomplete store)"
                )
            out[where] = mm[idx[where] - int(s) * size]
        return out

    def _check_shard(self, i: int) -> None:
        """sha256 of shard i against the manifest, once per process (see the module doc)."""
        entry = self._entries[i]
        if self.check_checksums and not self._hash_ok(entry, cached=True):
            raise ValueError(
                f"activation store {self.path}: {entry['file']} does not match its sha256 in "
                f"{MANIFEST} (corrupted or edited since it was written): {_REDO}"
            )
        self._checked.add(i)

    def _hash_ok(self, entry: dict[str, Any], cached: bool) -> bool:
        f = self.path / entry["file"]
        st = f.stat()
        key = (str(f.resolve()), st.st_size, st.st_mtime_ns, str(entry["sha256"]))
        if cached and key in _VERIFIED:
            return True
        ok = sha256_file(f) == entry["sha256"]
        if ok:
            _VERIFIED.add(key)
        return ok

    def _open(self, entry: dict[str, Any]) -> np.ndarray:
        f = self.path / entry["file"]
        if not f.is_file():
            raise FileNotFoundError(
                f"activation store {self.path}: shard {entry['file']} is listed in {MANIFEST} "
                f"but missing on disk: {_REDO}"
            )
        size, want = f.stat().st_size, entry.get("bytes")
        if want is not None and size != int(want):
            raise ValueError(
                f"activation store {self.path}: {entry['file']} is {size} bytes, {MANIFEST} says "
                f"{want} (truncated or replaced): {_REDO}"
            )
        try:
            mm = np.load(f, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"activation store {self.path}: cannot read {f.name}: {e}") from e
        m = self.manifest
        i = int(entry["index"])
        start, stop = shard_bounds(i, m["num_images"], m["shard_size"])
        if mm.shape[0] != stop - start or int(entry["rows"]) != stop - start:
            raise ValueError(
                f"activation store {self.path}: {f.name} has {mm.shape[0]} rows "
                f"(manifest says {entry['rows']}), expected {stop - start} for rows "
                f"[{start}, {stop})"
            )
        if list(mm.shape[1:]) != list(m["shape"]) or str(mm.dtype) != m["dtype"]:
            raise ValueError(
                f"activation store {self.path}: {f.name} holds {mm.dtype} {mm.shape[1:]}, "
                f"manifest says {m['dtype']} {tuple(m['shape'])}"
            )
        return mm

    def _load_attributes(self) -> np.ndarray | None:
        name = self.manifest.get("attributes_file")
        if not name:
            return None
        f = self.path / name
        if not f.is_file():
            raise FileNotFoundError(f"activation store {self.path}: {name} missing")
        arr = np.load(f, allow_pickle=False)
        expected = (len(self), len(self.attribute_names))
        if arr.shape != expected:
            raise ValueError(f"{f}: attributes have shape {arr.shape}, expected {expected}")
        return arr
