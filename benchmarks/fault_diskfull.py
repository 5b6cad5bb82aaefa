"""Disk-full runs of the fault campaign (`fault_campaign.py --disk-full N`; root only).

A small tmpfs is mounted per stage; right before a seeded shard, manifest or checkpoint write the
child (through the campaign's audit hook) grows a filler file until the file system is full. The
run must end with one clear line (no traceback, the word "space"), leave no visible file that
fails to load, and, once the filler is deleted, resume to the reference run's exact bytes.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from fault_campaign import Stage, differences, snapshot
from fault_runner import read_events, run_hsae


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
