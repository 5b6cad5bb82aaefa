"""One writer per folder: an advisory `flock` on FOLDER/.hsae.lock, held while a process writes.

The kernel drops a `flock` when its holder's last file descriptor closes, which includes a
process killed with SIGKILL, so a lock is never left stuck by a dead writer: the next run simply
takes it. The file itself stays (deleting it would let two processes lock two different inodes);
it records the holder's pid, host and start time, only to name the holder in the refusal message.
Readers never lock. Two writers in one process also conflict (each lock is its own open file),
unless both ask for `reentrant=True`: then the nested one (e.g. a command that finishes an
interrupted checkpoint swap, then calls the trainer) shares the outer one's lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

LOCK_FILE = ".hsae.lock"
# Reentrant locks this process holds: real folder path -> (fd, depth).
_HELD: dict[str, tuple[int, int]] = {}


class FolderLockedError(OSError):
    """Another live process (or another writer in this one) is writing the folder."""


class FolderLock:
    """`with FolderLock(folder, "activation store"):` — refuse to run beside another writer."""

    def __init__(self, folder: Path | str, what: str = "folder", reentrant: bool = False) -> None:
        self.folder = Path(folder)
        self.what = what
        self.reentrant = reentrant
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FolderLock:
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.folder)
        if self.reentrant and key in _HELD:
            fd, depth = _HELD[key]
            _HELD[key] = (fd, depth + 1)
            self._fd = fd
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read_holder(fd)
            os.close(fd)
            if info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
                who = "another writer in this process (close it first)"
            else:
                who = f"another process ({_describe(info)})"
            raise FolderLockedError(
                f"{self.what} {self.folder} is being written by {who}; wait for it to finish "
                "or stop it, or write to another folder"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if self.reentrant:
            _HELD[key] = (fd, 1)
        _write_holder(fd)
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self.reentrant:
            key = os.path.realpath(self.folder)
            _, depth = _HELD.get(key, (fd, 1))
            if depth > 1:
                _HELD[key] = (fd, depth - 1)
                return
            _HELD.pop(key, None)
        os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def _write_holder(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    except OSError:
        pass  # the lock holds without its note (e.g. a full disk); only the message is poorer


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _describe(info: dict[str, Any]) -> str:
    if not info.get("pid"):
        return "holder unknown"
    since = info.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
    return f"pid {info['pid']} on host {info.get('host', '?')}, since {when}"
