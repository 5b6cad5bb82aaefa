"""Running `hsae` for the fault campaign: the audit hook that logs file operations and kills or
fills the disk at one of them, and runs forked from this process or spawned fresh, killable from
outside. Only the standard library at import time: spawned children import this for the hook."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LAUNCH = (
    "import os, sys\n"
    "if os.environ.get('HSAE_FAULT_LOG'):\n"
    "    import fault_runner; fault_runner.install_hook()\n"
    "from hsae.cli import main\n"
    "sys.argv[0] = 'hsae'\n"
    "sys.exit(main())\n"
)
AUDITED = frozenset({"open", "os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree"})
# A temp file (or folder) of an atomic write of NAME: .NAME.XXXXXXXX.tmp (tempfile's names).
TEMP_NAME = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")


# ----- the hook, run inside the child ---------------------------------------------------------
def category(op: str, path: str) -> str:
    """Which kind of file operation this is: read, shard, manifest, checkpoint or output."""
    if op == "read":
        return "read"
    name = path.rsplit("/", 1)[-1]
    if "checkpoint" in path:
        return "checkpoint"
    if name.startswith(("shard-", ".shard-")):
        return "shard"
    if "manifest" in name:
        return "manifest"
    return "output"


def install_hook() -> None:
    """Log file operations under HSAE_FAULT_ROOT; with HSAE_FAULT_KILL_AT=KIND:N, SIGKILL this
    process right before its N-th operation of that kind (KIND "any" counts every operation;
    "OP@NAME", e.g. "rename@metrics.json", counts that operation on NAME's temp files only:
    "rename@NAME:1" kills right before the first atomic write of NAME is renamed into place)."""
    root = os.path.realpath(os.environ["HSAE_FAULT_ROOT"]) + os.sep
    kind, _, n_at = os.environ.get("HSAE_FAULT_KILL_AT", "any:0").partition(":")
    kill_at = int(n_at)
    fill = os.environ.get("HSAE_FAULT_FILL")  # a file to grow until the disk is full
    busy = [False]
    log_fd = os.open(os.environ["HSAE_FAULT_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    counts: dict[str, int] = {}

    def hook(event: str, args: tuple) -> None:
        if busy[0] or event not in AUDITED or not args or isinstance(args[0], int):
            return
        path = os.path.abspath(os.fsdecode(args[0]))
        if not path.startswith(root) or (event == "os.mkdir" and os.path.isdir(path)):
            return  # outside the run, or a mkdir(exist_ok=True) that changes nothing
        op = event.removeprefix("os.").removeprefix("shutil.")
        if event == "open":
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            op = "write" if flags & write_flags else "read"
        rel = path[len(root) :]
        cat = category(op, rel)
        temp = TEMP_NAME.fullmatch(rel.rsplit("/", 1)[-1])
        keys = ("any", cat) + ((f"{op}@{temp.group(1)}",) if temp else ())
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
        line = {"op": op, "path": rel, "kind": cat, "t": time.monotonic()}
        kill = kill_at > 0 and kind in keys and counts.get(kind) == kill_at
        if kill:
            line["kill"] = True
        os.write(log_fd, (json.dumps(line) + "\n").encode())
        if kill and fill:
            busy[0] = True
            _fill_disk(fill)
            busy[0] = False
        elif kill:
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)


def _fill_disk(path: str) -> None:
    """Grow `path` until its file system has no space left (the disk-full trials)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    block = b"\0" * 4096
    try:
        while True:
            os.write(fd, block)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----- running commands -----------------------------------------------------------------------
@dataclass
class Run:
    rc: int
    seconds: float
    events: list[dict[str, Any]]
    stderr: str


def child_env(
    work: Path, log: Path | None, kill_at: str = "", fill: Path | None = None
) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
    env.pop("HSAE_FAULT_LOG", None)
    if log is not None:
        env.update(HSAE_FAULT_LOG=str(log), HSAE_FAULT_ROOT=str(work))
        env["HSAE_FAULT_KILL_AT"] = kill_at or "any:0"
        if fill is not None:
            env["HSAE_FAULT_FILL"] = str(fill)
    return env


def read_events(log: Path) -> list[dict[str, Any]]:
    if not log.is_file():
        return []
    lines = log.read_text().splitlines()
    return [json.loads(x) for x in lines if x.endswith("}")]  # a killed write may be cut short


# Set by main(): fork each run from this process, which has imported hsae once (a fresh
# interpreter per run spends most of its time importing torch), or spawn a fresh interpreter.
FORK = {"on": False}


def run_hsae(
    args: list[str],
    work: Path,
    log: Path | None = None,
    kill_at: str = "",
    kill_after: float | None = None,
    cwd: Path | None = None,
    fill: Path | None = None,
) -> Run:
    """Run `hsae ARGS`. kill_at "KIND:N": SIGKILL before the N-th file op of KIND (or, with
    fill, fill the disk there); kill_after: SIGKILL that many seconds after the first file op."""
    if log is not None:
        log.unlink(missing_ok=True)
    env = child_env(work, log, kill_at, fill)
    t0 = time.monotonic()
    if FORK["on"]:
        p: Any = Forked(args, env, cwd)
    else:
        p = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, *args],
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    if kill_after is not None and log is not None:
        _kill_later(p, log, kill_after)
    _, err = p.communicate()
    events = read_events(log) if log is not None else []
    return Run(p.returncode, time.monotonic() - t0, events, err)


class Forked:
    """`hsae ARGS` in a child forked from this process: `hsae.cli.main(ARGS)` with the child's
    own environment, folder, stderr file and (when logging) audit hook. The Popen calls used
    here: poll, wait, send_signal, communicate, returncode."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path | None) -> None:
        fd, self._err = tempfile.mkstemp(prefix="hsae-fault-", suffix=".err")
        os.close(fd)
        sys.stdout.flush()
        sys.stderr.flush()
        self.returncode: int | None = None
        self.pid = os.fork()
        if self.pid == 0:
            self._child(args, env, cwd)

    def _child(self, args: list[str], env: dict[str, str], cwd: Path | None) -> None:
        code = 1
        try:
            os.environ.clear()
            os.environ.update(env)
            if cwd is not None:
                os.chdir(cwd)
            os.dup2(os.open(self._err, os.O_WRONLY | os.O_TRUNC), 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            if env.get("HSAE_FAULT_LOG"):
                install_hook()
            from hsae.cli import main as hsae_main

            sys.argv = ["hsae", *args]
            code = hsae_main(args)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if end is not None and time.monotonic() > end:
                raise subprocess.TimeoutExpired("hsae", timeout or 0.0)
            time.sleep(0.01)
        return int(self.returncode)  # type: ignore[arg-type]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def communicate(self) -> tuple[None, str]:
        self.wait()
        err = Path(self._err).read_text(errors="replace")
        Path(self._err).unlink(missing_ok=True)
        return None, err


def _kill_later(p: Any, log: Path, delay: float) -> None:
    """SIGKILL p `delay` seconds after its first logged file operation (if still running)."""
    while p.poll() is None:
        events = read_events(log)
        if events:
            wait = events[0]["t"] + delay - time.monotonic()
            if wait > 0:
                try:
                    p.wait(timeout=wait)
                    return
                except subprocess.TimeoutExpired:
                    pass
            p.send_signal(signal.SIGKILL)
            return
        time.sleep(0.005)


def prepare_fork() -> None:
    """Import hsae and every command module once, single-threaded, for the forked runs."""
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    from hsae.cli import build_parser

    build_parser()
    FORK["on"] = True
