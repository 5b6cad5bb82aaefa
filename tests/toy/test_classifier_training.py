"""hsae.toy.classifier_training and `hsae toy train-classifier`: augmentation, fit, outputs."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

from hsae.cli import build_parser, main
from hsae.toy.classifier import AttributeClassifier, evaluate, load_labelled_split
from hsae.toy.classifier_training import ClassifierTrainConfig, augment
from hsae.toy.toyfaces import write_dataset


def test_augment_shifts_with_edge_replication_and_flips() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    out = augment(x, 0, torch.Generator().manual_seed(1))
    for i in range(2):  # without a shift, each image is itself or its mirror
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(2))
    out = augment(x, 1, torch.Generator().manual_seed(2))
    assert out.shape == x.shape
    for i in range(2):  # every output pixel is a pixel of the same image and channel
        for c in range(3):
            assert set(out[i, c].flatten().tolist()) <= set(x[i, c].flatten().tolist())


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="--epochs, --batch-size and --lr must be positive"):
        ClassifierTrainConfig(epochs=0)
    with pytest.raises(ValueError, match="--degrade-p in"):
        ClassifierTrainConfig(degrade_p=1.5)


@pytest.mark.slow
def test_command_trains_keeps_the_best_epoch_and_records_itself(tmp_path: Path, capsys) -> None:
    data = write_dataset(tmp_path / "faces", n=40, seed=0, progress=False)
    out = tmp_path / "clf"
    argv = ["toy", "train-classifier", "--data", str(data), "--out", str(out), "--epochs", "2"]
    argv += ["--batch-size", "16", "--channels", "4", "8"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["args"]["channels"] == [4, 8] and metrics["args"]["epochs"] == 2
    assert metrics["best_epoch"] in (1, 2)
    recorded = shlex.split(metrics["command"])  # every setting spelled out: it repeats the run
    assert recorded[0] == "hsae" and "--weight-decay" in recorded
    assert build_parser().parse_args(recorded[1:]) == build_parser().parse_args(argv)
    model = AttributeClassifier.load(out)
    assert model.cfg.channels == (4, 8)
    test = load_labelled_split(data, 2, model.attribute_names)
    assert evaluate(model, *test) == metrics["test"]  # the saved weights are the measured ones
    log = (out / "train_log.txt").read_text()
    assert log.startswith("command: ") and "images train/val/test: 32 / 4 / 4" in log
    assert "test metrics, images blurred by a 0.7 px Gaussian:" in log
    assert set(metrics) >= {"test", "test_blur_0.7", "val", "train_seconds"}


def test_command_names_bad_flags(tmp_path: Path, capsys) -> None:
    argv = ["toy", "train-classifier", "--data", str(tmp_path), "--out", str(tmp_path / "c")]
    assert main([*argv, "--blur", "-1"]) == 2
    assert "--blur and --noise must be >= 0" in capsys.readouterr().err
