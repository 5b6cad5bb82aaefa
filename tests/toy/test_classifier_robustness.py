"""`hsae toy robustness`: accuracy and frequencies of a classifier, on a chosen split."""

from __future__ import annotations

from pathlib import Path

import torch

from hsae.cli import main
from hsae.toy.classifier import AttributeClassifier, ClassifierConfig, load_labelled_split
from hsae.toy.toyfaces import write_dataset


def test_reports_every_attribute_on_all_images(tmp_path: Path, capsys) -> None:
    data = write_dataset(tmp_path / "faces", n=12, seed=0, progress=False)
    torch.manual_seed(0)
    clf = AttributeClassifier(ClassifierConfig(channels=(4,))).save(tmp_path / "clf")
    argv = ["toy", "robustness", "--data", str(data), "--split", "all", "--classifier", str(clf)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"12 all images of {data}")
    assert "| attribute | truth | accuracy | clean |" in out
    rows = [ln for ln in out.splitlines() if ln.startswith("| ") and "attribute" not in ln]
    assert len(rows) == 11
    images, labels = load_labelled_split(data, None)
    expected = (AttributeClassifier.load(clf).predict(images).bool() == labels).float().mean(0)
    accuracy = torch.tensor([float(r.split("|")[3]) for r in rows])
    assert torch.allclose(accuracy, expected, atol=5e-4)  # printed to 3 decimals


def test_an_empty_split_is_named(tmp_path: Path, capsys) -> None:
    data = write_dataset(tmp_path / "faces", n=5, seed=0, progress=False)  # 4 train, 1 val
    assert main(["toy", "robustness", "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert f"--data {data} --split test: no images with partition 2" in err
    assert err.count("\n") == 1
