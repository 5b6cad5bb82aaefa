"""benchmarks/gpu_check.py on its CPU path (--device cpu --tiny): the GPU check cannot rot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_tiny_cpu_gpu_check_writes_one_json(tmp_path: Path, capsys, load_script) -> None:
    out = tmp_path / "gpu-check.json"
    gpu_check = load_script("gpu_check", "benchmarks")
    assert gpu_check.main(["--device", "cpu", "--tiny", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["errors"] == {} and got["tiny"] and got["dtype"] == "float32"
    ex = got["extraction"]
    assert ex["h_shape"] == [64, 8, 8] and ex["images"] == 4
    assert set(ex["variants"]) == {"plain diffusers", "hsae extract", "hsae dpm++3m:3"}
    same = ex["variants"]["hsae extract"]["h_cos_to_plain"]["min"]
    assert same > 0.9999  # hsae's h is the peer's (float16 store rounding aside)
    for row in ex["variants"].values():
        assert row["images_per_s"]["median"] > 0 and row["peak_memory"]
    tr = got["sae_training"]
    assert tr["peer"] in tr["contenders"] and "hsae trainer" in tr["contenders"]
    assert all(r["tokens_per_s"]["median"] > 0 for r in tr["contenders"].values())
    assert "wrote" in capsys.readouterr().out


def test_wrapper_and_make_target_exist() -> None:
    sh = BENCH / "gpu_check.sh"
    assert os.access(sh, os.X_OK) and "gpu_check.py" in sh.read_text()
    assert "\ngpu-check:" in (BENCH.parent / "Makefile").read_text()
