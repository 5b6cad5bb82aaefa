"""Copying a run's files into the report folder: every copy is recorded, stale ones pruned."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from hsae.utils.io import atomic_write_bytes

IMAGE_EXTS = (".png", ".gif", ".jpg", ".jpeg", ".webp", ".svg")
SMALL_IMAGE_PX = 256  # images smaller than this are shown enlarged (toy images are 32 × 32)
SUMMARY_FILE = "report.json"


@dataclass
class Collector:
    """Copies files into the report folder and remembers each one (report.json lists them)."""

    out: Path
    written: set[str] = field(default_factory=set)  # paths relative to out, posix

    def copy(self, src: Path, rel: str) -> str:
        """Copy src to out/rel (atomically); returns the relative URL."""
        return self.write(rel, src.read_bytes())

    def write(self, rel: str, data: bytes) -> str:
        atomic_write_bytes(self.out / rel, data)
        return self.track(rel)

    def track(self, rel: str) -> str:
        """Record a file written under out/ by someone else (e.g. a plotting helper)."""
        self.written.add(Path(rel).as_posix())
        return url_of(rel)

    def prune(self, previous: Sequence[str]) -> None:
        """Delete the files an earlier build wrote (listed in its report.json) and this one did
        not, so a stage that disappeared leaves no stale copy; files of anyone else are kept."""
        for rel in sorted(set(previous) - self.written):
            f = self.out / rel
            if ".." in Path(rel).parts or not f.is_file():
                continue
            f.unlink()
            for d in f.parents:  # drop folders this emptied, up to the report folder
                if d == self.out or not d.is_relative_to(self.out) or any(d.iterdir()):
                    break
                d.rmdir()


def previous_files(out: Path) -> list[str]:
    """Files listed by the report.json of an earlier build in `out` (none if absent/unreadable)."""
    try:
        files = json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [f for f in files if isinstance(f, str)]


def url_of(rel: str) -> str:
    """A relative URL for a report-relative path (each segment percent-encoded)."""
    return "/".join(quote(p) for p in Path(rel).parts)


def display_size(path: Path) -> tuple[int, int, int] | None:
    """(width, height, scale) to show an image at: small images enlarged by an integer factor."""
    from PIL import Image

    if path.suffix.lower() == ".svg":
        return None
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError):
        return None  # unreadable: left to the browser, whose check reports it as broken
    scale = max(1, min(8, SMALL_IMAGE_PX // max(w, h, 1)))
    return w * scale, h * scale, scale


def images_in(folder: Path) -> list[Path]:
    """Every image file under folder (any depth), in path order."""
    files = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())
