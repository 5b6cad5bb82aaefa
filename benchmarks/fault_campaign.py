"""Kill campaign: SIGKILL `hsae extract`, `hsae train` and `hsae editbench` at seeded random
instants, resume each run, and compare it byte for byte with an uninterrupted run.

    .venv/bin/python benchmarks/fault_campaign.py --kills 20 --disk-full 4 \
        --json runs/faults/campaign.json          (`make faults`)

Everything goes through the command line in subprocesses, so the campaign knows the tool only by
its commands, flags and output files. Each stage first runs once uninterrupted (the reference),
with an audit hook (`sys.addaudithook`, installed in the child before hsae is imported) logging
every file operation under the work folder: opens for writing or reading, renames, mkdir,
removals, each of a kind (shard, manifest, checkpoint, other output, read). Kill instants are
drawn with a seeded RNG, of two sorts:

- event kills: the child SIGKILLs itself right before its N-th operation of a kind, the kind
  taken in turn from those the reference wrote (so shard writes, manifest updates and checkpoint
  writes are all hit) and N uniform over the reference's count of that kind;
- timed kills: the campaign SIGKILLs the child from outside, a uniform random time after its
  first file operation, within the reference's span from first to last (mid-computation and
  mid-write alike).

Kills come in chains of 2-4: the command is killed, its resume is killed, and so on; then a last
resume runs to the end (`hsae train` resumes with --resume, the others by re-running the same
command) and its output folder is compared with the reference's: every visible file by sha256,
hidden leftovers (temp files) listed apart. Only wall-clock fields are left out (metrics.json's
timings, trainer_state.pt's elapsed seconds). A chain is "identical", "different" (silently
wrong) or "failed" (the last resume exited non-zero); lost = different + failed.

--disk-full N (root only: it mounts a small tmpfs per stage): N runs of extract and train in
which, right before a seeded shard, manifest or checkpoint write, the hook fills the file system
with a filler file. The run must stop with one clear line (no traceback, the word "space"), leave
no visible file that fails to load, and, once the filler is deleted, resume to the reference's
exact bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LAUNCH = (
    "import os, sys\n"
    "if os.environ.get('HSAE_FAULT_LOG'):\n"
    "    import fault_campaign; fault_campaign.install_hook()\n"
    "from hsae.cli import main\n"
    "sys.argv[0] = 'hsae'\n"
    "sys.exit(main())\n"
)
AUDITED = frozenset({"open", "os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree"})
# Files whose bytes hold wall-clock time: compared without those fields (or not at all).
VOLATILE_JSON_KEYS = {"metrics.json": ("tokens_per_s", "train_seconds")}
VOLATILE_FILES = ("trainer_state.pt",)


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
    process right before its N-th operation of that kind (KIND "any" counts every operation)."""
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
        for key in ("any", cat):
            counts[key] = counts.get(key, 0) + 1
        line = {"op": op, "path": rel, "kind": cat, "t": time.monotonic()}
        kill = kill_at > 0 and counts.get(kind) == kill_at and kind in ("any", cat)
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


# ----- comparing outputs ----------------------------------------------------------------------
def snapshot(folder: Path) -> tuple[dict[str, str], list[str]]:
    """({relative path: sha256} of visible files, [hidden files]) under folder."""
    files, hidden = {}, []
    if not folder.is_dir():
        return files, hidden
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in p.relative_to(folder).parts):
            if p.is_file():
                hidden.append(rel)
            continue
        if not p.is_file() or p.name in VOLATILE_FILES:
            continue
        data = p.read_bytes()
        if p.name in VOLATILE_JSON_KEYS:
            doc = json.loads(data)
            for key in VOLATILE_JSON_KEYS[p.name]:
                doc.pop(key, None)
            data = json.dumps(doc, sort_keys=True).encode()
        files[rel] = hashlib.sha256(data).hexdigest()
    return files, hidden


def differences(ref: dict[str, str], got: dict[str, str]) -> list[str]:
    out = [f"missing {k}" for k in ref if k not in got]
    out += [f"extra {k}" for k in got if k not in ref]
    out += [f"differs {k}" for k in ref if k in got and ref[k] != got[k]]
    return out


# ----- the stages -----------------------------------------------------------------------------
@dataclass
class Stage:
    name: str
    out: str  # output folder, relative to a trial folder
    args: list[str]  # with {out} for the output folder
    resume_args: list[str] = field(default_factory=list)

    def command(self, resume: bool = False) -> list[str]:
        """Run in the trial folder: --out is relative, so commands recorded in outputs match."""
        args = [a.replace("{out}", self.out) for a in self.args]
        return args + (self.resume_args if resume else [])


def stages(work: Path, sizes: argparse.Namespace) -> list[Stage]:
    """The three commands at tiny sizes (one core, seconds each); paths have no spaces."""
    data, store, sae = work / "data", work / "ref/extract/acts", work / "ref/train/sae"
    extract = (
        f"extract --data {data} --out {{out}} --steps {sizes.ddim_steps} --batch 2 "
        "--shard-size 2 --no-progress"
    )
    train = (
        f"train --store {store} --out {{out}} --latents 32 --steps {sizes.sae_steps} --batch 8 "
        "--checkpoint-every 7 --log-every 5 --warmup 5 --quiet"
    )
    bench = (
        f"editbench --store {store} --sae {sae} --data {data} --out {{out}} "
        "--attributes Eyeglasses --n-images 2 --n-val 2 --kappas 0 25 --scales 1 "
        "--candidates 4 --n-examples 1 --batch 2 --no-progress"
    )
    return [
        Stage("extract", "acts", extract.split()),
        Stage("train", "sae", train.split(), ["--resume"]),
        Stage("editbench", "bench", bench.split()),
    ]


@dataclass
class Kill:
    how: str  # "event KIND:N" (before the N-th file op of KIND) or "timed D" (seconds)
    landed: bool = False
    at: str = ""  # the file op killed before (event) or the last one logged (timed)


@dataclass
class Trial:
    """One chain: the command, killed; then its resume, killed again (0-3 times); then a resume
    that runs to the end and is compared with the reference."""

    stage: str
    index: int
    kills: list[Kill] = field(default_factory=list)
    outcome: str = ""  # identical, different, failed; "" when no kill landed
    detail: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)


def plan_chains(events: list[dict[str, Any]], n: int, rng: random.Random) -> list[list[str]]:
    """n kill instants in chains of 2-4: ~60% before a file op (round robin over the kinds of
    write the reference made, N uniform over that kind's count), the rest timed (uniform over
    the reference's span from first to last file op)."""
    count: dict[str, int] = {}
    for e in events:
        if e["kind"] != "read":
            count[e["kind"]] = count.get(e["kind"], 0) + 1
    kinds = sorted(count)
    span = events[-1]["t"] - events[0]["t"] if events else 0.0
    n_event = (3 * n + 4) // 5 if kinds else 0
    hows = [f"event {kinds[i % len(kinds)]}" for i in range(n_event)] + ["timed"] * (n - n_event)
    rng.shuffle(hows)
    instants = []
    for h in hows:
        if h == "timed":
            instants.append(f"timed {rng.uniform(0, span):.3f}")
        else:
            kind = h.split()[1]
            instants.append(f"{h}:{rng.randint(1, count[kind])}")
    chains = []
    while instants:
        k = rng.choice([2, 3, 4])
        chains.append(instants[:k])
        instants = instants[k:]
    return chains


def _killed_at(run: Run) -> str:
    marked = [e for e in run.events if e.get("kill")]
    e = marked[-1] if marked else (run.events[-1] if run.events else None)
    return f"{e['kind']} {e['op']} {e['path']}" if e else "before any file op"


def run_stage(
    stage: Stage,
    work: Path,
    n_kills: int,
    rng: random.Random,
    chains: list[list[str]] | None = None,
) -> dict[str, Any]:
    """Reference run, then the kill chains (drawn from rng, or given as "event KIND:N" /
    "timed SECONDS" instants), each resumed and compared; returns the stage's figures."""
    ref_dir = work / "ref" / stage.name
    shutil.rmtree(ref_dir, ignore_errors=True)
    ref_dir.mkdir(parents=True)
    ref = run_hsae(stage.command(), work, ref_dir / "ref.log", cwd=ref_dir)
    if ref.rc != 0:
        raise SystemExit(f"reference {stage.name} failed (exit {ref.rc}):\n{ref.stderr}")
    ref_files, ref_hidden = snapshot(ref_dir / stage.out)
    trials = []
    chains = plan_chains(ref.events, n_kills, rng) if chains is None else chains
    for i, chain in enumerate(chains):
        trial = Trial(stage.name, i)
        folder = work / "trials" / f"{stage.name}-{i:03d}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for j, how in enumerate(chain):
            cmd, log = stage.command(resume=j > 0), folder / f"kill-{j}.log"
            if how.startswith("timed"):
                run = run_hsae(cmd, work, log, kill_after=float(how.split()[1]), cwd=folder)
            else:
                run = run_hsae(cmd, work, log, kill_at=how.split()[1], cwd=folder)
            kill = Kill(how, run.rc == -signal.SIGKILL, _killed_at(run))
            trial.kills.append(kill)
            if not kill.landed:
                break  # it ran to the end: the rest of the chain has nothing left to kill
        final = run_hsae(stage.command(resume=True), work, cwd=folder)
        files, hidden = snapshot(folder / stage.out)
        trial.leftovers = [h for h in hidden if h not in ref_hidden]
        if final.rc != 0:
            trial.outcome = "failed"
            trial.detail = final.stderr.strip().splitlines()[-3:]
        else:
            trial.detail = differences(ref_files, files)
            trial.outcome = "different" if trial.detail else "identical"
        landed = [k for k in trial.kills if k.landed]
        print(
            f"{stage.name} #{i:02d} kills {len(landed)}/{len(trial.kills)} "
            f"[{'; '.join(f'{k.how} @ {k.at}' for k in trial.kills)[:150]}] -> {trial.outcome} "
            f"{' '.join(trial.detail)[:200]}",
            flush=True,
        )
        trials.append(trial)
    return _stage_figures(stage, ref, trials)


def _stage_figures(stage: Stage, ref: Run, trials: list[Trial]) -> dict[str, Any]:
    kills = [k for t in trials for k in t.kills]
    killed = [t for t in trials if any(k.landed for k in t.kills)]
    ops: dict[str, int] = {}
    for e in ref.events:
        ops[e["kind"]] = ops.get(e["kind"], 0) + 1
    at: dict[str, int] = {}
    for k in kills:
        if k.landed:
            key = f"{k.how.split()[0]} {k.at.split()[0]}"
            at[key] = at.get(key, 0) + 1
    return {
        "stage": stage.name,
        "command": "hsae " + " ".join(stage.command()),
        "reference_seconds": round(ref.seconds, 2),
        "reference_file_ops": ops,
        "kills_tried": len(kills),
        "kills_landed": sum(k.landed for k in kills),
        "kills_by_kind": at,
        "chains": len(trials),
        "chains_killed": len(killed),
        "resumed_identical": sum(t.outcome == "identical" for t in killed),
        "different": sum(t.outcome == "different" for t in killed),
        "failed": sum(t.outcome == "failed" for t in killed),
        "lost": sum(t.outcome != "identical" for t in killed),
        "with_leftover_hidden_files": sum(bool(t.leftovers) for t in killed),
        "trials": [asdict(t) for t in trials],
    }


# ----- disk full ------------------------------------------------------------------------------
def mount_tmpfs(folder: Path, size_kb: int) -> str | None:
    """Mount a small tmpfs at folder; None when it worked, else why not (e.g. not root)."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)]
    try:
        p = subprocess.run(cmd, check=False, capture_output=True, text=True)
    except OSError as e:
        return str(e)
    return None if p.returncode == 0 else (p.stderr.strip() or f"mount exited {p.returncode}")


def unreadable(folder: Path) -> list[str]:
    """Visible files under folder that do not load completely (a half-written file)."""
    import numpy as np

    bad = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or any(x.startswith(".") for x in p.relative_to(folder).parts):
            continue
        try:
            if p.suffix == ".json":
                json.loads(p.read_text())
            elif p.suffix == ".jsonl":
                [json.loads(x) for x in p.read_text().splitlines()]
            elif p.suffix == ".npy":
                np.load(p, allow_pickle=False)
            elif p.suffix == ".safetensors":
                from safetensors.numpy import load_file

                load_file(p)
            elif p.suffix == ".pt":
                import torch

                torch.load(p, weights_only=True)
            elif p.suffix == ".png":
                from PIL import Image

                with Image.open(p) as im:
                    im.load()
        except Exception as e:  # any failure to load is what this looks for
            bad.append(f"{p.relative_to(folder)}: {type(e).__name__}")
    return bad


def disk_full_stage(stage: Stage, work: Path, n: int, rng: random.Random) -> dict[str, Any]:
    """Fill a small tmpfs right before a seeded write of the run, check the error, the files
    left, then free the space and check the resumed run is identical to the reference."""
    ref_dir = work / "ref" / stage.name
    ref_files, _ = snapshot(ref_dir / stage.out)
    size = sum((ref_dir / stage.out / f).stat().st_size for f in ref_files)
    tiny = work / f"tinyfs-{stage.name}"
    why = mount_tmpfs(tiny, 4 * size // 1024 + 1024)
    if why is not None:
        return {"stage": stage.name, "skipped": f"cannot mount a tmpfs: {why}"}
    events = read_events(ref_dir / "ref.log")
    kinds = sorted({e["kind"] for e in events} - {"read", "output"}) or ["output"]
    count = {k: sum(e["kind"] == k for e in events) for k in kinds}
    trials = []
    try:
        for i in range(n):
            kind = kinds[i % len(kinds)]
            at = f"{kind}:{rng.randint(1, count[kind])}"
            folder = tiny / f"{i:03d}"
            folder.mkdir()
            filler = tiny / "filler"
            full = run_hsae(stage.command(), work, folder / "log", at, cwd=folder, fill=filler)
            last = (full.stderr.strip().splitlines() or [""])[-1]
            left = unreadable(folder / stage.out)
            filler.unlink(missing_ok=True)
            again = run_hsae(stage.command(resume=True), work, cwd=folder)
            diff = differences(ref_files, snapshot(folder / stage.out)[0]) if again.rc == 0 else []
            trial = {
                "at": at,
                "exit": full.rc,
                "error": last,
                "clear_line": full.rc not in (0, -signal.SIGKILL)
                and "Traceback" not in full.stderr
                and "space" in last.lower(),
                "unreadable_files": left,
                "resumed_identical": again.rc == 0 and not diff,
                "detail": diff or (again.stderr.strip().splitlines()[-1:] if again.rc else []),
            }
            print(
                f"{stage.name} disk full before {at}: exit {full.rc} {last[:150]!r} "
                f"unreadable {left} -> resumed identical {trial['resumed_identical']}",
                flush=True,
            )
            trials.append(trial)
            shutil.rmtree(folder)
    finally:
        subprocess.run(["umount", str(tiny)], check=False)
    hit = [t for t in trials if t["exit"] != 0]
    return {
        "stage": stage.name,
        "command": "hsae " + " ".join(stage.command()),
        "tmpfs_kb": 4 * size // 1024 + 1024,
        "trials": len(trials),
        "disk_full_hit": len(hit),
        "one_clear_line": sum(t["clear_line"] for t in hit),
        "files_intact": sum(not t["unreadable_files"] for t in hit),
        "resumed_identical": sum(t["resumed_identical"] for t in hit),
        "details": trials,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("runs/faults"), help="scratch folder")
    p.add_argument("--kills", type=int, default=20, help="trials per stage (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stages", nargs="+", default=["extract", "train", "editbench"])
    p.add_argument("--images", type=int, default=20, help="toyfaces images (default 20)")
    p.add_argument("--ddim-steps", type=int, default=4, help="DDIM grid of the extraction")
    p.add_argument("--sae-steps", type=int, default=40, help="SAE training steps")
    p.add_argument(
        "--disk-full",
        type=int,
        default=0,
        help="disk-full trials per stage (needs root: tmpfs)",
    )
    p.add_argument(
        "--spawn",
        action="store_true",
        help="a fresh interpreter per run (default: fork each run from this process, hsae "
        "imported once)",
    )
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = p.parse_args(argv)
    if not args.spawn:
        prepare_fork()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    data = work / "data"
    if not (data / "list_attr_celeba.txt").is_file():
        made = run_hsae(["data", "toyfaces", "--n", str(args.images), "--out", str(data)], work)
        if made.rc != 0:
            raise SystemExit(f"hsae data toyfaces failed:\n{made.stderr}")
    figures = []
    by_name = {s.name: s for s in stages(work, args)}
    for name in ["extract", "train", "editbench"]:
        if name in args.stages or (name != "editbench" and _needed(name, args.stages, work)):
            kills = args.kills if name in args.stages else 0
            figures.append(run_stage(by_name[name], work, kills, rng))
    rows = [f for f in figures if f["chains"]]
    print("\nstage      kills tried  landed  chains  resumed identical  different  failed  lost")
    for f in rows:
        print(
            f"{f['stage']:10s} {f['kills_tried']:11d} {f['kills_landed']:7d} "
            f"{f['chains_killed']:7d} {f['resumed_identical']:18d} {f['different']:10d} "
            f"{f['failed']:7d} {f['lost']:5d}"
        )
    full = []
    if args.disk_full:
        for name in [s for s in ("extract", "train") if s in args.stages]:
            full.append(disk_full_stage(by_name[name], work, args.disk_full, rng))
    for f in full:
        if "skipped" in f:
            print(f"disk full, {f['stage']}: skipped ({f['skipped']})")
        else:
            print(
                f"disk full, {f['stage']}: {f['disk_full_hit']}/{f['trials']} hit ENOSPC, "
                f"{f['one_clear_line']} with one clear line, {f['files_intact']} with every file "
                f"intact, {f['resumed_identical']} resumed identical once space was back"
            )
    doc = {
        "command": " ".join(sys.argv),
        "seed": args.seed,
        "stages": rows,
        "disk_full": full,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    full_ok = all(
        "skipped" in f or f["resumed_identical"] == f["one_clear_line"] == f["disk_full_hit"]
        for f in full
    )
    return 0 if all(f["lost"] == 0 for f in rows) and full_ok else 1


def prepare_fork() -> None:
    """Import hsae and every command module once, single-threaded, for the forked runs."""
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    from hsae.cli import build_parser

    build_parser()
    FORK["on"] = True


def _needed(name: str, wanted: list[str], work: Path) -> bool:
    """extract and train also run (without kills) when a later stage needs their reference."""
    later = {"extract": ("train", "editbench"), "train": ("editbench",)}[name]
    return any(s in wanted for s in later)


if __name__ == "__main__":
    sys.exit(main())
