"""scripts/train_toy_ddpm.py: the training log stays the log of the weights it sits next to."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "train_toy_ddpm", ROOT / "scripts" / "train_toy_ddpm.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write_log(path: Path, steps: list[int]) -> None:
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in steps))


def test_resume_drops_records_logged_after_the_checkpoint(tmp_path: Path) -> None:
    log = tmp_path / "train_log.jsonl"
    _write_log(log, [20, 40, 60, 80])
    _script().trim_log(log, 40)
    assert [json.loads(ln)["step"] for ln in log.read_text().splitlines()] == [20, 40]


def test_fresh_start_empties_the_old_log_and_a_missing_log_is_fine(tmp_path: Path) -> None:
    log = tmp_path / "train_log.jsonl"
    _write_log(log, [20, 40])
    mod = _script()
    mod.trim_log(log, 0)
    assert log.read_text() == ""
    mod.trim_log(tmp_path / "absent.jsonl", 0)
    assert not (tmp_path / "absent.jsonl").exists()


def test_a_log_within_the_checkpoint_is_left_untouched(tmp_path: Path) -> None:
    log = tmp_path / "train_log.jsonl"
    _write_log(log, [20, 40])
    before = log.stat().st_mtime_ns
    _script().trim_log(log, 40)
    assert log.stat().st_mtime_ns == before
