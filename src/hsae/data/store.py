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

import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hsae.utils.io import atomic_write_bytes, atomic_write_json, read_json, sha256_file
from hsae.utils.jsonable import jsonable as json_policy
from hsae.utils.lock import LOCK_FILE, FolderLock

FORMAT = "hsae-activation-store"
VERSION = 1
MANIFEST = "manifest.json"
ATTRIBUTES_FILE = "attributes.npy"
DTYPES = ("float16", "float32")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
REQUIRED_FIELDS = (
    "format",
    "version",
    "meta",
    "shape",
    "dtype",
    "shard_size",
    "num_images",
    "shards",
    "ids",
    "complete",
)


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.npy"


def entry_name(i: int) -> str:
    """A finished shard's manifest entry, written beside it by one of several parallel writers."""
    return f"shard-{i:05d}.entry.json"


def num_shards(num_images: int, shard_size: int) -> int:
    return -(-num_images // shard_size)


def shard_bounds(i: int, num_images: int, shard_size: int) -> tuple[int, int]:
    """Row range [start, stop) that shard i covers."""
    return i * shard_size, min((i + 1) * shard_size, num_images)


def jsonable(obj: Any) -> Any:
    """obj as it reads back from JSON under the project's policy (`hsae.utils.jsonable`: numpy
    values as Python ones, non-finite floats as null), refusing what JSON cannot hold."""

    def reject(o: Any) -> Any:
        raise TypeError(f"store metadata value {o!r} ({type(o).__name__}) is not JSON-able")

    return json.loads(json.dumps(json_policy(obj), default=reject, allow_nan=False))


def _check_dtype(dtype: str) -> str:
    dtype = str(np.dtype(dtype))
    if dtype not in DTYPES:
        raise ValueError(f"store dtype must be one of {DTYPES}, got {dtype!r}")
    return dtype


def _to_numpy(h: Any) -> np.ndarray:
    if hasattr(h, "detach"):  # a torch tensor; the store itself does not import torch
        h = h.detach().to("cpu").float().numpy()
    return np.asarray(h)


# ----- writer ------------------------------------------------------------------------------------
class ActivationStoreWriter:
    """Creates a store or resumes one; refuses to mix runs with different settings."""

    def __init__(
        self, path: Path, manifest: dict[str, Any], lock: FolderLock | None = None
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.lock = lock  # None for an attached parallel writer: the manifest's owner holds it

    @classmethod
    def open(
        cls,
        out: Path | str,
        meta: dict[str, Any],
        shape: Sequence[int],
        dtype: str = "float16",
        shard_size: int = 256,
        ids: Sequence[str] = (),
        attributes: np.ndarray | None = None,
        attribute_names: Sequence[str] | None = None,
        splits: Sequence[int | None] | None = None,
        skipped: Sequence[dict[str, Any]] = (),
    ) -> ActivationStoreWriter:
        out = Path(out)
        fresh = _new_manifest(meta, shape, dtype, shard_size, ids, attribute_names, splits, skipped)
        attrs = _check_attributes(attributes, len(fresh["ids"]), fresh["attribute_names"])
        fresh["attributes_file"] = ATTRIBUTES_FILE if attrs is not None else None
        if not (out / MANIFEST).is_file():
            _check_empty_or_store(out)  # before the lock: leave no lock file in a foreign folder
        lock = FolderLock(out, "activation store").acquire()
        try:  # decided under the lock: another writer may have made the manifest meanwhile
            if (out / MANIFEST).is_file():
                raw = read_json(out / MANIFEST, "activation store manifest")
                old = _validate_manifest(out, raw)
                _check_same_run(out, old, fresh, attrs)
                writer = cls(out, old, lock)
                writer._drop_broken_shards()
                writer.adopt_entries()  # shards finished by parallel writers of a killed run
            else:
                if attrs is not None:
                    atomic_write_bytes(out / ATTRIBUTES_FILE, _npy_bytes(attrs))
                writer = cls(out, fresh, lock)
                writer._save()
            writer._remove_stale_temps()
        except BaseException:
            lock.release()
            raise
        return writer

    def close(self) -> None:
        """Let another writer open the folder (also done when the process ends, however)."""
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> ActivationStoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- geometry ----------------------------------------------------------------------------
    @property
    def num_images(self) -> int:
        return int(self.manifest["num_images"])

    @property
    def shard_size(self) -> int:
        return int(self.manifest["shard_size"])

    @property
    def num_shards(self) -> int:
        return num_shards(self.num_images, self.shard_size)

    def shard_rows(self, i: int) -> tuple[int, int]:
        if not 0 <= i < self.num_shards:
            raise IndexError(f"shard {i} out of range: the store has {self.num_shards} shards")
        return shard_bounds(i, self.num_images, self.shard_size)

    def pending_shards(self) -> list[int]:
        done = {int(s["index"]) for s in self.manifest["shards"]}
        return [i for i in range(self.num_shards) if i not in done]

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    @classmethod
    def attach(cls, out: Path | str) -> ActivationStoreWriter:
        """A second writer of a store another process has just opened: it reads the manifest
        and never rewrites it, writing its shards with `write_shard(i, h, record=False)`."""
        out = Path(out)
        return cls(out, _validate_manifest(out, read_json(out / MANIFEST, "store manifest")))

    def adopt_entries(self) -> int:
        """List in the manifest every shard a parallel writer finished (its entry file beside
        it, checksum verified); return how many. Called by the one writer owning the manifest."""
        adopted = 0
        for f in sorted(self.path.glob("shard-*.entry.json")):
            entry = read_json(f, "shard entry")
            shard = self.path / str(entry.get("file"))
            ok = shard.is_file() and shard.stat().st_size == int(entry.get("bytes", -1))
            if ok and sha256_file(shard) == entry.get("sha256"):
                self._record(entry)
                adopted += 1
            f.unlink()  # a half-written shard is simply redone
        if adopted:
            self._save()
        return adopted

    # ----- writing -----------------------------------------------------------------------------
    def write_shard(
        self, i: int, h: Any, record: bool = True, conversions: dict[str, int] | None = None
    ) -> None:
        """Write shard i atomically, then list it in the manifest (also rewritten atomically).

        record=False (parallel writers) writes the manifest entry to its own file instead, for
        the manifest's owner to adopt (`adopt_entries`). conversions: how its images were
        converted on loading, counted per kind (summed by ActivationStore.conversions())."""
        start, stop = self.shard_rows(i)
        arr = _to_numpy(h)
        expected = (stop - start, *self.manifest["shape"])
        if arr.shape != expected:
            raise ValueError(f"shard {i}: h has shape {arr.shape}, expected {expected}")
        src = arr
        with np.errstate(over="ignore"):  # overflow is reported below, with advice
            arr = np.ascontiguousarray(arr.astype(self.manifest["dtype"]))
        if not np.isfinite(arr).all():
            raise self._non_finite(i, src, arr)
        if self.lock is not None and not self.lock.held:
            raise RuntimeError(f"writer of {self.path} was closed; open it again to write")
        data = _npy_bytes(arr)
        atomic_write_bytes(self.path / shard_name(i), data)
        entry = {
            "index": i,
            "file": shard_name(i),
            "rows": stop - start,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        if conversions is not None:
            entry["conversions"] = {str(k): int(v) for k, v in sorted(conversions.items())}
        if not record:
            atomic_write_json(self.path / entry_name(i), entry)
            return
        self._record(entry)
        self._save()

    def _record(self, entry: dict[str, Any]) -> None:
        i = int(entry["index"])
        shards = [s for s in self.manifest["shards"] if int(s["index"]) != i] + [entry]
        self.manifest["shards"] = sorted(shards, key=lambda s: int(s["index"]))
        self.manifest["complete"] = not self.pending_shards()

    def _non_finite(self, i: int, src: np.ndarray, arr: np.ndarray) -> ValueError:
        """NaN/inf in h: name the images, and say whether the model or float16 made them."""
        start, _ = self.shard_rows(i)
        bad = np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1))
        ids = [self.manifest["ids"][start + int(r)] for r in bad[:5]]
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        src_bad = not np.isfinite(np.asarray(src[bad], dtype=np.float64)).all()
        if src_bad:
            why = (
                "the model itself returned NaN/inf for them (a float16 backbone overflowing? "
                "run it in float32)"
            )
        else:
            why = (
                f"|h| exceeds what {arr.dtype} can hold (max {np.finfo(arr.dtype).max:g}); "
                "extract with --dtype float32 into a new --out folder"
            )
        return ValueError(
            f"h_t of image(s) {', '.join(ids)}{more} (shard {i}, store rows "
            f"{[start + int(r) for r in bad[:5]]}) is not finite: {why}; nothing was written"
        )

    def _save(self) -> None:
        atomic_write_json(self.path / MANIFEST, self.manifest)

    def _drop_broken_shards(self) -> None:
        """Forget listed shards whose file vanished or changed size, so they are redone."""
        keep = [
            s
            for s in self.manifest["shards"]
            if (self.path / s["file"]).is_file()
            and (self.path / s["file"]).stat().st_size == int(s["bytes"])
        ]
        if len(keep) != len(self.manifest["shards"]):
            self.manifest["shards"] = keep
            self.manifest["complete"] = False
            self._save()

    def _remove_stale_temps(self) -> None:
        for pattern in (".shard-*.tmp", f".{MANIFEST}.*.tmp", f".{ATTRIBUTES_FILE}.*.tmp"):
            for tmp in self.path.glob(pattern):
                tmp.unlink(missing_ok=True)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _new_manifest(
    meta: dict[str, Any],
    shape: Sequence[int],
    dtype: str,
    shard_size: int,
    ids: Sequence[str],
    attribute_names: Sequence[str] | None,
    splits: Sequence[int | None] | None,
    skipped: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    ids = [str(i) for i in ids]
    if not ids:
        raise ValueError("an activation store needs at least one image (ids is empty)")
    if len(set(ids)) != len(ids):
        raise ValueError("image ids must be unique")
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    shape = [int(s) for s in shape]
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"h shape must be (C, K, K) with positive sizes, got {shape}")
    if splits is not None and len(splits) != len(ids):
        raise ValueError(f"{len(splits)} split codes for {len(ids)} images")
    return {
        "format": FORMAT,
        "version": VERSION,
        "meta": jsonable(meta),
        "shape": shape,
        "dtype": _check_dtype(dtype),
        "shard_size": int(shard_size),
        "num_images": len(ids),
        "complete": False,
        "shards": [],
        "attribute_names": list(attribute_names) if attribute_names is not None else [],
        "attributes_file": None,
        "skipped": jsonable(list(skipped)),
        "splits": [None if s is None else int(s) for s in splits] if splits is not None else None,
        "ids": ids,
    }


def _check_attributes(attributes: np.ndarray | None, n: int, names: list[str]) -> np.ndarray | None:
    if attributes is None:
        return None
    arr = np.asarray(attributes)
    if arr.shape != (n, len(names)):
        raise ValueError(
            f"attributes have shape {arr.shape}, expected ({n}, {len(names)}) "
            "(one row per image, one column per attribute name)"
        )
    return arr.astype(np.int8)


# Fields that must agree between an existing store and a resumed run, in the order they are checked.
_RUN_FIELDS = (
    "format",
    "version",
    "shape",
    "dtype",
    "shard_size",
    "num_images",
    "ids",
    "attribute_names",
    "splits",
)


def _check_same_run(
    out: Path, old: dict[str, Any], new: dict[str, Any], attrs: np.ndarray | None
) -> None:
    def refuse(field: str, was: Any, now: Any) -> None:
        raise ValueError(
            f"activation store {out} was written with a different {field} "
            f"(store: {_short(was)}, this run: {_short(now)}); refusing to mix runs: "
            "use another --out folder or delete this one"
        )

    old_meta, new_meta = old.get("meta", {}), new["meta"]
    for key in sorted(set(old_meta) | set(new_meta)):
        if old_meta.get(key) != new_meta.get(key):
            refuse(f"meta.{key}", old_meta.get(key), new_meta.get(key))
    for field in _RUN_FIELDS:
        if old.get(field) != new[field]:
            refuse(field, old.get(field), new[field])
    if attrs is not None:
        path = out / ATTRIBUTES_FILE
        stored = np.load(path) if path.is_file() else None
        if stored is None or not np.array_equal(stored, attrs):
            refuse("attributes", "attributes.npy" if stored is not None else None, "labels")
    elif old.get("attributes_file"):
        refuse("attributes", old.get("attributes_file"), None)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_empty_or_store(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if not out.is_dir():
        return
    ours = {ATTRIBUTES_FILE, LOCK_FILE}
    foreign = [
        p.name
        for p in out.iterdir()
        if p.name not in ours
        and not (p.name.startswith("shard-") and p.name.endswith((".npy", ".entry.json")))
        and not (p.name.startswith(".") and p.name.endswith(".tmp"))
    ]
    if foreign:
        raise ValueError(
            f"--out {out} is not empty and holds no {MANIFEST} (found {sorted(foreign)[:3]}); "
            "refusing to write an activation store there"
        )


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


_REDO = "delete the shard file(s) named and re-run the same `hsae extract` command to redo them"


def _validate_manifest(path: Path, m: Any) -> dict[str, Any]:
    where = path / MANIFEST
    if not isinstance(m, dict):
        raise ValueError(f"{where} is not a JSON object")
    if m.get("format") != FORMAT:
        raise ValueError(f"{where} is not a store manifest (format {m.get('format')!r})")
    if m.get("version") != VERSION:
        raise ValueError(
            f"{where} has store format version {m.get('version')!r}; this hsae reads {VERSION}"
        )
    missing = [f for f in REQUIRED_FIELDS if f not in m]
    if missing:
        raise ValueError(f"{where} is missing field(s) {missing}")
    n, size = m["num_images"], m["shard_size"]
    if not (isinstance(n, int) and isinstance(size, int) and n >= 1 and size >= 1):
        raise ValueError(f"{where}: num_images and shard_size must be positive integers")
    if len(m["ids"]) != n:
        raise ValueError(f"{where}: {len(m['ids'])} ids for num_images={n}")
    if m["dtype"] not in DTYPES:
        raise ValueError(f"{where}: dtype {m['dtype']!r} is not one of {DTYPES}")
    total = num_shards(n, size)
    for s in m["shards"]:
        if not all(k in s for k in ("index", "file", "rows", "sha256")):
            raise ValueError(f"{where}: shard entry {s} lacks index/file/rows/sha256")
        if not 0 <= int(s["index"]) < total:
            raise ValueError(f"{where}: shard index {s['index']} outside 0..{total - 1}")
    return m
