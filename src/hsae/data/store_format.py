"""The activation store's on-disk format: names, shard arithmetic, the manifest's schema and its
validation, shared by the writer (`hsae.data.store_writer`) and the reader (`hsae.data.store`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hsae.utils.jsonable import jsonable as json_policy

FORMAT = "hsae-activation-store"


VERSION = 1


MANIFEST = "manifest.json"


ATTRIBUTES_FILE = "attributes.npy"


DTYPES = ("float16", "float32")


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
