"""hsae.analysis.table2: the protocol's SAE sweep resumes, and its summary joins both tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsae.analysis.table2 import SWEEP, Table2Config, summary, train_sweep


def test_the_sweep_skips_finished_saes_and_resumes_started_ones(tmp_path: Path) -> None:
    cfg = Table2Config(out=tmp_path, steps=7)
    done, started = tmp_path / "sae" / "flat", tmp_path / "sae" / "topk-k4"
    done.mkdir(parents=True)
    (done / "sae.safetensors").write_bytes(b"")
    (done / "metrics.json").write_text("{}")
    (started / "checkpoint").mkdir(parents=True)
    calls: list[list[str]] = []
    outs = train_sweep(cfg, tmp_path / "acts", calls.append)
    assert outs == [tmp_path / "sae" / name for name in SWEEP]
    trained = {c[c.index("--out") + 1]: c for c in calls}
    assert str(done) not in trained and len(calls) == len(SWEEP) - 1
    assert trained[str(started)][-1] == "--resume"
    assert all(c[0] == "train" and c[c.index("--steps") + 1] == "7" for c in calls)
    assert sum("--resume" in c for c in calls) == 1
    no_context = trained[str(tmp_path / "sae" / "ca-ctx-none")]
    assert no_context[-2:] == ["--context", "none"]


def test_summary_puts_the_test_table_before_the_ood_one(tmp_path: Path) -> None:
    for name, text in (("eval", "| in |"), ("eval-ood", "| out |")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "table.md").write_text(text)
    text = summary(Table2Config(out=tmp_path, n=10, n_ood=3, steps=5))
    assert text.startswith("# Table 2 on the toy model (10 images, 5 steps per SAE)")
    assert text.index("| in |") < text.index("shifted toyfaces (3 images)") < text.index("| out |")


def test_bad_sizes_are_named() -> None:
    with pytest.raises(ValueError, match="--n-ood 0"):
        Table2Config(n_ood=0)
