"""The run folder the explorer serves: where its parts are, and the one rule for request paths.

A run folder as `hsae demo` writes it (docs/design.md, "Stage outputs and the run folder"):
RUN/sae (the SAE), RUN/acts (its activation store), RUN/data (the images, CelebA layout),
RUN/features/features.json and RUN/editbench/editbench.json where those stages ran. The explorer
reads them and writes nothing into the folder. Every path a request names is resolved inside the
folder or refused with `InputError`, so `../` or an absolute path cannot reach other files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsae.data.images import IMAGE_EXTENSIONS
from hsae.utils.io import read_json

FEATURES_JSON = Path("features") / "features.json"
EDITBENCH_JSON = Path("editbench") / "editbench.json"
IMAGE_DIRS = ("img_align_celeba", "")  # where RUN/data keeps the images a store's ids name


def shown(path: Path) -> str:
    """A path as the explorer's `hsae edit` lines print it: relative to the folder the server was
    started in when it lies below it (so the line runs there and names no machine's layout),
    absolute otherwise."""
    full = path.resolve()
    try:
        return str(full.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(full)


class InputError(ValueError):
    """A request the explorer refuses: the message says what was wrong, and nothing changed."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class RunFolder:
    root: Path
    sae_dir: Path
    acts_dir: Path | None
    data_dir: Path | None

    @classmethod
    def open(cls, root: Path, sae: Path | None = None, store: Path | None = None) -> RunFolder:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"run folder not found: {root} (make one with `hsae demo`)")
        sae_dir = Path(sae) if sae is not None else root / "sae"
        if not (sae_dir / "cfg.json").is_file():
            raise FileNotFoundError(
                f"no SAE in {sae_dir} (expected cfg.json and sae.safetensors; pass --sae)"
            )
        acts: Path | None = Path(store) if store is not None else root / "acts"
        if acts is not None and not (acts / "manifest.json").is_file():
            if store is not None:
                raise FileNotFoundError(f"--store {store}: no manifest.json there")
            acts = None
        data = root / "data"
        return cls(root, sae_dir, acts, data if data.is_dir() else None)

    def resolve(self, rel: str) -> Path:
        """`rel` (a path relative to the run folder) as a path inside it, or InputError."""
        if not rel or "\0" in rel:
            raise InputError("empty path: name a file inside the run folder")
        base = self.root.resolve()
        path = (base / rel).resolve()
        if not path.is_relative_to(base):
            raise InputError(f"path {rel!r} is outside the run folder; name a file inside it", 403)
        return path

    def image_file(self, rel: str) -> Path:
        """An image file inside the run folder, or InputError."""
        path = self.resolve(rel)
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise InputError(
                f"{rel!r} is not an image file ({', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        if not path.is_file():
            raise InputError(f"no image {rel!r} in the run folder", 404)
        return path

    def rel(self, path: Path) -> str:
        return path.resolve().relative_to(self.root.resolve()).as_posix()

    def image_of_id(self, image_id: str) -> str | None:
        """The run-relative path of a store row's image (by its id), None when not in RUN/data."""
        if self.data_dir is None:
            return None
        for sub in IMAGE_DIRS:
            path = self.data_dir / sub / image_id
            if path.is_file():
                return self.rel(path)
        return None

    def read_doc(self, rel: Path) -> dict[str, Any] | None:
        """A stage's JSON, or None when the stage did not run or its file cannot be read."""
        path = self.root / rel
        if not path.is_file():
            return None
        try:
            doc = read_json(path, what=str(rel))
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None
