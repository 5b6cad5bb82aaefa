"""scripts/train_toy_ddpm.py: the training log stays the log of the weights it sits next to."""

from __future__ import annotations

import json
from pathlib import Path


def _write_log(path: Path, steps: list[int]) -> None:
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in steps))


def test_resume_drops_records_logged_after_the_checkpoint(tmp_path: Path, load_script) -> None:
    log = tmp_path / "train_log.jsonl"
    _write_log(log, [20, 40, 60, 80])
    load_script("train_toy_ddpm").trim_log(log, 40)
    assert [json.loads(ln)["step"] for ln in log.read_text().splitlines()] == [20, 40]


def test_fresh_start_empties_the_old_log(tmp_path: Path, load_script) -> None:
    log = tmp_path / "train_log.jsonl"
    _write_log(log, [20, 40])
    mod = load_script("train_toy_ddpm")
    mod.trim_log(log, 0)
    assert log.read_text() == ""
    mod.trim_log(tmp_path / "absent.jsonl", 0)
    assert not (tmp_path / "absent.jsonl").exists()


def test_a_log_within_the_checkpoint_is_left_untouched(tmp_path: Path, load_script) -> None:
    log = tmp_path / "train_log.jsonl"
    _write_log(log, [20, 40])
    before = log.stat().st_mtime_ns
    load_script("train_toy_ddpm").trim_log(log, 40)
    assert log.stat().st_mtime_ns == before


def test_a_line_cut_short_by_a_kill_is_dropped(tmp_path: Path, load_script) -> None:
    log = tmp_path / "train_log.jsonl"
    _write_log(log, [20, 40])
    with open(log, "a") as f:
        f.write('{"step": 60, "lo')
    load_script("train_toy_ddpm").trim_log(log, 60)
    assert [json.loads(ln)["step"] for ln in log.read_text().splitlines()] == [20, 40]
