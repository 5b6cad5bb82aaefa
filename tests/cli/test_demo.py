"""`hsae demo` and `hsae roundtrip` end to end on the tiny random pixel DDPM of conftest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from hsae.cli import main

STAGE_OUTPUTS = ("eval", "features", "probe", "editbench", "edit", "counterfactual", "interpolate")


@pytest.mark.slow
def test_demo_runs_every_stage_and_resumes(
    tmp_path: Path,
    pixel_pipeline_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The whole method through `hsae demo` on the tiny random DDPM: every stage writes its
    table, the report links them, and a second run skips what is done."""
    monkeypatch.setenv("HSAE_TOY_MODEL", str(pixel_pipeline_dir))
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--n", "80", "--steps", "4", "--sae-steps", "30"]
    assert main(argv) == 0
    summary = json.loads((out / "demo_summary.json").read_text())
    assert set(summary["stage_seconds"]) == {"data", "extract", "sae", *STAGE_OUTPUTS}
    for stage in STAGE_OUTPUTS:
        assert (out / stage / "table.md").is_file(), stage
    html = (out / "report" / "index.html").read_text()
    for section in ("reconstruction", "probe", "features", "editbench", "interpolate"):
        assert f'id="{section}"' in html
    grid = Image.open(summary["grid"])
    assert grid.size == (8 * 32 * 3, 3 * 32 * 3)  # 8 columns, 3 rows, upscaled 3x
    assert "report:" in capsys.readouterr().out
    assert main(argv) == 0  # resumes: nothing left to do but the grid and the report
    assert json.loads((out / "demo_summary.json").read_text())["stage_seconds"] == {}


def test_roundtrip_cli_writes_one_row_per_step_count(
    tmp_path: Path, pixel_pipeline_dir: Path
) -> None:
    model = pixel_pipeline_dir
    assert main(["data", "toyfaces", "--n", "20", "--out", str(tmp_path / "data")]) == 0
    out = tmp_path / "rt.json"
    args = ["roundtrip", "--data", str(tmp_path / "data"), "--model", str(model), "--n", "2"]
    assert main([*args, "--steps", "2", "8", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["steps"] for r in rows] == [2, 8]
    assert all(r["mse"] >= 0 and r["psnr_db"] > 0 for r in rows)


def test_roundtrip_cli_bad_data_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["roundtrip", "--data", str(tmp_path / "nope"), "--model", "toy"]) == 2
    assert "nope" in capsys.readouterr().err
