"""Kill campaign: SIGKILL `hsae extract`, `hsae train` and `hsae editbench` at seeded random
instants, resume each run, and compare it byte for byte with an uninterrupted run.

    .venv/bin/python benchmarks/fault_campaign.py --kills 20 --disk-full 4 \
        --json runs/faults/campaign.json          (`make faults`)

Every run is its own process running the command line (`hsae.cli.main(ARGS)`, the `hsae`
entry point), so the campaign knows the tool only by its commands, flags and output files. By
default each run is forked from the campaign process, which has imported hsae once (a fresh
interpreter spends most of a tiny run importing torch); --spawn starts a fresh `python -c`
interpreter per run instead. Each stage first runs once uninterrupted (the reference),
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
wrong) or "failed" (the last resume exited non-zero); lost = different + failed. A kill that misses
(its run finished first: a resume has less left to do) is drawn again until --kills have landed.

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
import random
import shutil
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fault_runner import Run, prepare_fork, run_hsae

# Files whose bytes hold wall-clock time: compared without those fields (or not at all).
VOLATILE_JSON_KEYS = {"metrics.json": ("tokens_per_s", "train_seconds")}
VOLATILE_FILES = ("trainer_state.pt",)


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
    trials: list[Trial] = []
    drawn = chains is None
    queue = plan_chains(ref.events, n_kills, rng) if chains is None else list(chains)
    i = -1
    while queue:
        chain, i = queue.pop(0), i + 1
        trial = run_chain(stage, work, i, chain, ref_files, ref_hidden)
        trials.append(trial)
        landed = sum(k.landed for t in trials for k in t.kills)
        if drawn and not queue and landed < n_kills:  # a kill that missed is drawn again
            queue = plan_chains(ref.events, n_kills - landed, rng)
    return _stage_figures(stage, ref, trials)


def run_chain(
    stage: Stage,
    work: Path,
    i: int,
    chain: list[str],
    ref_files: dict[str, str],
    ref_hidden: list[str],
) -> Trial:
    """Run one chain of kills, the last resume, and compare with the reference."""
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
    return trial


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("runs/faults"), help="work folder")
    p.add_argument("--kills", type=int, default=20, help="kills that land, per stage (default 20)")
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
        from fault_diskfull import disk_full_stage  # beside this file, on sys.path

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


def _needed(name: str, wanted: list[str], work: Path) -> bool:
    """extract and train also run (without kills) when a later stage needs their reference."""
    later = {"extract": ("train", "editbench"), "train": ("editbench",)}[name]
    return any(s in wanted for s in later)


if __name__ == "__main__":
    sys.exit(main())
