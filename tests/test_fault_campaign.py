"""A fast subset of benchmarks/fault_campaign.py: `hsae extract` and `hsae train`, each SIGKILLed
twice in a row (before a seeded file operation), resumed, and compared byte for byte with an
uninterrupted run. The full campaign (`make faults`) does 20 kills per stage, editbench too."""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
from pathlib import Path

import pytest

from hsae.toy.toyfaces import write_dataset

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "fault_campaign.py"


def load_campaign():
    spec = importlib.util.spec_from_file_location("fault_campaign", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_killed_extract_and_train_resume_to_identical_bytes(tmp_path: Path) -> None:
    fc = load_campaign()
    write_dataset(tmp_path / "data", 12, seed=0, progress=False)
    sizes = argparse.Namespace(ddim_steps=2, sae_steps=14)
    by_name = {s.name: s for s in fc.stages(tmp_path, sizes)}
    rng = random.Random(0)
    for name in ("extract", "train"):
        fig = fc.run_stage(by_name[name], tmp_path, 2, rng)
        assert fig["kills_landed"] == fig["kills_tried"] == 2, fig["trials"]
        assert fig["chains_killed"] == fig["resumed_identical"] == 1, fig["trials"]
        assert fig["lost"] == 0 and fig["with_leftover_hidden_files"] == 0
        kinds = set(fig["reference_file_ops"])
        assert {"shard", "manifest"} <= kinds if name == "extract" else "checkpoint" in kinds
        killed_at = {k["at"].split()[0] for t in fig["trials"] for k in t["kills"]}
        assert killed_at <= kinds - {"read"}, killed_at  # event kills land on writes


def test_snapshot_ignores_wall_clock_fields_and_lists_hidden_files(tmp_path: Path) -> None:
    fc = load_campaign()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.json").write_text('{"steps": 3, "train_seconds": 1.5}')
    (tmp_path / "a" / ".x.tmp").write_text("half")
    files, hidden = fc.snapshot(tmp_path / "a")
    (tmp_path / "a" / "metrics.json").write_text('{"steps": 3, "train_seconds": 9.0}')
    assert fc.snapshot(tmp_path / "a")[0] == files and hidden == [".x.tmp"]
    (tmp_path / "a" / "metrics.json").write_text('{"steps": 4, "train_seconds": 9.0}')
    assert fc.differences(files, fc.snapshot(tmp_path / "a")[0]) == ["differs metrics.json"]
