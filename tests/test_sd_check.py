"""benchmarks/sd_check.py on toy-sized SD parts (--tiny): every CLI stage of `make sd-check` runs
as its own process on a saved StableDiffusionPipeline folder, so the SD-sized check cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

STAGES = ["build", "data", "extract", "train", "eval", "features", "probe", "edit",
          "counterfactual"]  # fmt: skip


@pytest.mark.slow
def test_tiny_sd_check_runs_every_stage(tmp_path: Path, capsys, load_script) -> None:
    mod = load_script("sd_check", "benchmarks")
    assert mod.main(["--out", str(tmp_path), "--tiny", "--threads", "1", "--sae-steps", "20"]) == 0
    doc = json.loads((tmp_path / "sd_check.json").read_text())
    assert list(doc["stages"]) == STAGES and "failed" not in doc
    for name, s in doc["stages"].items():
        assert s["exit_code"] == 0 and s["seconds"] > 0 and s["peak_rss_gib"] > 0.1, name
    assert (tmp_path / "model" / "pipeline" / "unet" / "config.json").is_file()
    assert list((tmp_path / "edit").glob("*.png")) and (tmp_path / "probe" / "table.md").is_file()
    assert "| counterfactual |" in capsys.readouterr().out
    # A rerun reuses the saved pipeline; a failing stage stops the run with exit status 1.
    (tmp_path / "acts" / "manifest.json").unlink()
    (tmp_path / "data" / "list_attr_celeba.txt").write_text("not a table\n")
    assert mod.main(["--out", str(tmp_path), "--tiny", "--threads", "1"]) == 1
    doc = json.loads((tmp_path / "sd_check.json").read_text())
    assert "build" not in doc["stages"] and doc["failed"] in doc["stages"]
