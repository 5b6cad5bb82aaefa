"""`hsae demo` and `hsae roundtrip` end to end on the tiny random pixel DDPM of conftest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from hsae.cli import main


def test_demo_runs_and_summarises(
    tmp_path: Path,
    pixel_pipeline_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HSAE_TOY_MODEL", str(pixel_pipeline_dir))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n", "12", "--steps", "4"]) == 0
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["shape"] == [12, 16, 8, 8]
    assert summary["dtype"] == "float16"
    assert (
        summary["timestep"]
        == json.loads((out / "acts" / "manifest.json").read_text())["meta"]["timestep"]
    )
    grid = Image.open(summary["grid"])
    assert grid.size == (8 * 32 * 3, 3 * 32 * 3)  # 8 columns, 3 rows, upscaled 3x
    assert '"store"' in capsys.readouterr().out


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
