"""Atomic file writes and checksums: nothing already written is ever left half-replaced.

A full disk (ENOSPC, or EDQUOT for a quota) during a write leaves the old file in place and the
temp file removed, and is raised as DiskFullError: one line naming the file, saying that nothing
was overwritten and that re-running the same command continues (every writer resumes).

A process killed between writing its temp file (`.NAME.XXXXXXXX.tmp`) and the rename leaves that
file behind, complete but never read. The next atomic write of the same file removes it: a
writer holds an advisory `flock` on its own temp file until the rename, so only temp files whose
writer is gone are removed (the kernel drops the lock of a killed process).
"""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_TEMP_PART = re.compile(r"[a-z0-9_]{8}")  # the random part of a tempfile.mkstemp name


class DiskFullError(OSError):
    """No space (or quota) left while writing a file; the previous file is untouched."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no space left on device"


def disk_full(path: Path, nbytes: int | None, cause: OSError) -> DiskFullError:
    """The one-line DiskFullError for a failed write of `path` (nbytes: what was being written)."""
    size = f" ({_human_bytes(nbytes)})" if nbytes is not None else ""
    where = "quota exceeded" if cause.errno == errno.EDQUOT else "no space left on device"
    err = DiskFullError(
        f"{where} while writing {path}{size}: nothing was overwritten; free some space and "
        "re-run the same command to continue where it stopped"
    )
    err.errno, err.filename = cause.errno, str(path)
    return err


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    try:
        _atomic_write(path, data)
    except OSError as e:
        if e.errno in _DISK_FULL and not isinstance(e, DiskFullError):
            raise disk_full(path, len(data), e) from e
        raise


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _try_flock(fd)  # marks this temp file as live until the rename
        remove_stale_temps(path)
        # mkstemp creates 0600 files; outputs are meant to be shared like any other file.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _try_flock(fd: int) -> bool:
    """Take an exclusive flock on fd without waiting; False if it is held (or unsupported)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: held by a live writer; others: no flock on this FS
        return False
    return True


def temp_files(path: Path | str) -> list[Path]:
    """The temp files atomic writes of `path` have left in its folder (none once renamed)."""
    path = Path(path)
    prefix = f".{path.name}."
    found = path.parent.glob(glob.escape(prefix) + "*.tmp")
    return sorted(p for p in found if _TEMP_PART.fullmatch(p.name[len(prefix) : -len(".tmp")]))


def remove_stale_temps(path: Path | str) -> int:
    """Remove the temp files of `path` no live writer holds (a killed write's); return how many."""
    removed = 0
    for tmp in temp_files(path):
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # renamed or removed meanwhile
            continue
        try:
            if _try_flock(fd) and tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed += 1
        finally:
            os.close(fd)
    return removed


def hidden_temps(folder: Path | str) -> list[Path]:
    """Every hidden `.*.tmp` entry of folder: what an interrupted write or swap left there."""
    folder = Path(folder)
    return sorted(folder.glob(".*.tmp")) if folder.is_dir() else []


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_json(path: Path | str, what: str = "JSON file") -> Any:
    """Read JSON, turning every failure into one message that names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {path} is not valid JSON (truncated or edited?): {e}") from e
