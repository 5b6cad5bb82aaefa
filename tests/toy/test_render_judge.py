"""hsae.toy.render_judge and `hsae toy render-judge`: verdicts by re-rendering, no classifier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hsae.cli import main
from hsae.toy.render_judge import as_judge_input, judge, render, render_bank, validate
from hsae.toy.toyfaces import ATTRIBUTES, generate


@pytest.fixture(scope="module")
def bank() -> np.ndarray:
    return render_bank(0, 800)


def test_judge_reads_held_out_renders(bank: np.ndarray) -> None:
    idx = range(800, 812)
    truth = np.array([[generate(0, i).attributes[a] for a in ATTRIBUTES] for i in idx])
    pred = judge(np.stack([render(0, i) for i in idx]), bank, seed=0, k=3, progress=False)
    assert (pred == truth).mean() >= 0.95


@pytest.mark.parametrize("attribute", ["Heavy_Eyebrows", "Smiling", "Pale_Skin"])
def test_judge_follows_one_toggled_attribute(bank: np.ndarray, attribute: str) -> None:
    j = ATTRIBUTES.index(attribute)
    faces = np.stack([render(0, 900, **{attribute: v}) for v in (False, True)])
    pred = judge(faces, bank, seed=0, k=8, progress=False)
    assert pred[:, j].tolist() == [False, True]


def test_judge_rejects_bad_shapes_and_k(bank: np.ndarray) -> None:
    with pytest.raises(ValueError, match="images must have shape"):
        judge(np.zeros((2, 16, 16, 3), np.float32), bank, seed=0)
    with pytest.raises(ValueError, match="k must be in"):
        judge(bank[:1], bank, seed=0, k=0)


def test_as_judge_input_maps_uint8_and_float_images_to_unit_hwc() -> None:
    u8 = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    fl = torch.tensor([-1.0, 1.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    for x in (u8, fl):
        out = as_judge_input(x)
        assert out.shape == (1, 1, 2, 3)
        assert out[0, 0, 0].tolist() == [0.0] * 3 and out[0, 0, 1].tolist() == [1.0] * 3


def test_validate_scores_the_renders_after_the_bank(bank: np.ndarray) -> None:
    result = validate(bank[:200], seed=0, n=4, k=3)
    truth = np.array([[generate(0, i).attributes[a] for a in ATTRIBUTES] for i in range(200, 204)])
    assert list(result["truth"].values()) == truth.mean(0).tolist()
    assert set(result) == {"accuracy", "truth", "frequency"}
    for a in ATTRIBUTES:  # accuracy and frequency come from the same verdicts
        assert 0 <= result["accuracy"][a] <= 1
        assert abs(result["frequency"][a] - result["truth"][a]) <= 1 - result["accuracy"][a]
    with pytest.raises(ValueError, match="--blur -1"):
        validate(bank[:200], seed=0, n=4, blur=-1)


def test_command_judges_saved_images_and_names_bad_flags(tmp_path: Path, capsys) -> None:
    faces = torch.from_numpy(np.stack([render(0, i) for i in (60, 61)])).permute(0, 3, 1, 2)
    path, out = tmp_path / "faces.pt", tmp_path / "judged.json"
    torch.save((faces * 255).round().to(torch.uint8), path)
    argv = ["toy", "render-judge", "--images", str(path), "--bank", "60", "--k", "3"]
    assert main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert (result["n"], result["images"], result["bank"]) == (2, str(path), 60)
    truth = np.array([[generate(0, i).attributes[a] for a in ATTRIBUTES] for i in (60, 61)])
    assert list(result["frequency"].values()) == pytest.approx(truth.mean(0).tolist(), abs=0.5)
    capsys.readouterr()
    assert main(["toy", "render-judge"]) == 2
    assert "give exactly one of --images FILE and --validate N" in capsys.readouterr().err
    assert main(["toy", "render-judge", "--validate", "2", "--bank", "5", "--k", "6"]) == 2
    assert "--k in [1, --bank]" in capsys.readouterr().err
