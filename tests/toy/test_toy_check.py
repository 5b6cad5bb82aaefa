"""The committed toy DDPM's sample check (its card, written by `make check-toy-card`) must be a
passing check of the committed weights: new weights without a new check, or a check that failed,
fail here. And `hsae toy check` itself, on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hsae.cli import main
from hsae.data.images import attribute_frequencies
from hsae.diffusion.backbone import TOY_MODEL_DIR, DiffusionBackbone
from hsae.toy.classifier import AttributeClassifier, ClassifierConfig
from hsae.toy.toyfaces import write_dataset

RECHECK = (
    "re-run `make check-toy-card` (hsae toy check --data data/toyfaces --n 1000 --batch 250 "
    "--eta 1 --render-judge --out src/hsae/assets/toy-ddpm) and commit its sample_check.json"
)


def test_committed_check_judged_the_committed_weights_and_passed(monkeypatch):
    monkeypatch.delenv("HSAE_TOY_MODEL", raising=False)
    check = json.loads((TOY_MODEL_DIR / "sample_check.json").read_text())
    assert check.get("weights") == DiffusionBackbone.load("toy").weights_fingerprint(), RECHECK
    assert check["n"] >= 1000, RECHECK
    worst = max(abs(row["gap"]) for row in check["attributes"].values())
    assert check["pass"] and worst == check["max_abs_gap"] <= 0.10
    assert (check["model"], check["steps"]) == ("toy", 50)


def test_check_of_a_tiny_model_writes_its_verdict_under_out(
    tmp_path: Path, pixel_pipeline_dir, capsys
) -> None:
    data = write_dataset(tmp_path / "faces", n=10, seed=0, progress=False)
    torch.manual_seed(0)
    clf = AttributeClassifier(ClassifierConfig(channels=(4,))).save(tmp_path / "clf")
    out, saved = tmp_path / "check", tmp_path / "samples.pt"
    argv = ["toy", "check", "--model", str(pixel_pipeline_dir), "--data", str(data)]
    argv += ["--classifier", str(clf), "--n", "3", "--batch", "2", "--steps", "2"]
    assert main([*argv, "--out", str(out), "--save-samples", str(saved)]) == 0
    check = json.loads((out / "sample_check.json").read_text())
    samples = torch.load(saved)
    assert samples.dtype == torch.uint8 and samples.shape == (3, 3, 32, 32)
    assert check["n"] == 3 and check["steps"] == 2 and (out / "samples.png").is_file()
    assert check["weights"] == DiffusionBackbone.load(str(pixel_pipeline_dir)).weights_fingerprint()
    judge = AttributeClassifier.load(clf)
    freq, truth = judge.predict(samples).float().mean(0), attribute_frequencies(data)
    expected = [f - truth[n] for n, f in zip(judge.attribute_names, freq.tolist(), strict=True)]
    assert list(check["attributes"]) == judge.attribute_names
    assert [row["gap"] for row in check["attributes"].values()] == pytest.approx(expected)
    assert check["pass"] == (check["max_abs_gap"] <= 0.10) and "render_judge_pass" not in check
    # Judging the saved samples again gives the same verdict without sampling.
    again = tmp_path / "again"
    argv = ["toy", "check", "--samples", str(saved), "--data", str(data), "--classifier", str(clf)]
    assert main([*argv, "--out", str(again)]) == 0
    redo = json.loads((again / "sample_check.json").read_text())
    assert redo["attributes"] == check["attributes"] and redo["samples"] == str(saved)


def test_check_writes_under_runs_by_default_and_names_bad_samples(tmp_path: Path, capsys) -> None:
    from hsae.cli import build_parser

    args = build_parser().parse_args(["toy", "check"])
    assert args.out == Path("runs/figures/toy-check")
    bad = tmp_path / "bad.pt"
    torch.save(torch.zeros(2, 3, 32, 32), bad)  # float, not uint8
    data = write_dataset(tmp_path / "faces", n=10, seed=0, progress=False)
    out = tmp_path / "check"
    argv = ["toy", "check", "--samples", str(bad), "--data", str(data), "--out", str(out)]
    assert main(argv) == 2
    assert f"{bad}: expected uint8 images (N, 3, H, W)" in capsys.readouterr().err
    assert not out.exists()
