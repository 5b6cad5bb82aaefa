"""Resuming the edit benchmark: its finished parts (the inverted validation and test images, each
attribute's results) saved as they complete, so a run killed at any point redoes at most the
attribute it was measuring.

Each part is one torch file written atomically (tmp + rename) under `<out>/.partial/`, tagged with
a key that hashes everything the results depend on (the configuration, the SAEs' weights, the
store, the model and its step grid): a part made with other settings is ignored and redone, never
mixed in. The folder is removed once the benchmark's outputs are written.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from hsae.utils.io import atomic_write_bytes

PARTIAL_DIR = ".partial"


def bench_key(cfg: Any, saes: dict[str, Any], store: Any, runner: Any) -> str:
    """A digest of what the benchmark's results depend on (not of how it reports progress)."""
    config = {k: v for k, v in asdict(cfg).items() if k != "progress"}
    weights = {}
    for name, sae in saes.items():
        h = hashlib.sha256()
        for k, v in sorted(sae.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        weights[name] = h.hexdigest()
    doc = {
        "cfg": config,
        "saes": weights,
        "store": str(getattr(store, "path", "?")),
        "store_meta": getattr(store, "meta", {}).get("model"),
        "runner": [getattr(runner, k, None) for k in ("t", "steps", "prompt")],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


class BenchCache:
    """Finished parts of one benchmark run under `folder` (None: nothing is kept)."""

    def __init__(self, folder: Path | None, key: str) -> None:
        self.folder = None if folder is None else Path(folder) / PARTIAL_DIR
        self.key = key

    def _path(self, name: str) -> Path:
        assert self.folder is not None
        return self.folder / f"{name}.pt"

    def load(self, name: str) -> Any | None:
        """The saved part, or None when missing, unreadable or made with other settings."""
        if self.folder is None or not self._path(name).is_file():
            return None
        try:
            doc = torch.load(self._path(name), map_location="cpu", weights_only=False)
        except Exception:  # a torn or foreign file: redo the part
            return None
        if not isinstance(doc, dict) or doc.get("key") != self.key:
            return None
        return doc["value"]

    def save(self, name: str, value: Any) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save({"key": self.key, "value": value}, buf)
        atomic_write_bytes(self._path(name), buf.getvalue())

    def clear(self) -> None:
        if self.folder is not None and self.folder.is_dir():
            shutil.rmtree(self.folder)
