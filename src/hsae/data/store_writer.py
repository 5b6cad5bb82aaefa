"""Writing an activation store: shards written atomically, a manifest that lists only complete
shards, resume by skipping them, one writer per folder."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hsae.data.store_format import (
    ATTRIBUTES_FILE,
    FORMAT,
    MANIFEST,
    VERSION,
    _check_dtype,
    _to_numpy,
    _validate_manifest,
    entry_name,
    jsonable,
    num_shards,
    shard_bounds,
    shard_name,
)
from hsae.utils.io import atomic_write_bytes, atomic_write_json, read_json, sha256_file
from hsae.utils.lock import LOCK_FILE, FolderLock


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
