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

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load_campaign():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # the campaign imports its runner from beside it
    spec = importlib.util.spec_from_file_location("fault_campaign", BENCH / "fault_campaign.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


# Each chain: the command killed before one file operation, its resume killed before another,
# then a resume to the end: 8 processes in all, forked from this one as the campaign does.
CHAINS = {
    "extract": [["event shard:3", "event manifest:2"]],
    "train": [["event checkpoint:4", "event checkpoint:2"]],
}


@pytest.mark.slow
def test_killed_extract_and_train_resume_to_identical_bytes(tmp_path: Path) -> None:
    fc = load_campaign()
    fc.prepare_fork()
    write_dataset(tmp_path / "data", 12, seed=0, progress=False)
    sizes = argparse.Namespace(ddim_steps=2, sae_steps=14)
    by_name = {s.name: s for s in fc.stages(tmp_path, sizes)}
    for name, chains in CHAINS.items():
        fig = fc.run_stage(by_name[name], tmp_path, 0, random.Random(0), chains)
        assert fig["kills_landed"] == fig["kills_tried"] == 2, fig["trials"]
        assert fig["chains_killed"] == fig["resumed_identical"] == 1, fig["trials"]
        assert fig["lost"] == 0 and fig["with_leftover_hidden_files"] == 0
        kinds = [k["at"].split()[0] for k in fig["trials"][0]["kills"]]
        assert kinds == [c.split()[1].split(":")[0] for c in chains[0]]


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
