"""hsae.toy.survival: kept / gained / implied-frequency bookkeeping and the noise-denoise loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hsae.cli import main
from hsae.toy.classifier import AttributeClassifier, ClassifierConfig
from hsae.toy.survival import _rows, attribute_survival, balanced_subset
from hsae.toy.toyfaces import write_dataset


def test_rows_count_reads_within_present_and_absent_images() -> None:
    truth = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]]).bool()
    pred = torch.tensor([[1, 1], [0, 1], [1, 0], [0, 0]]).bool()
    a, b = _rows(pred, truth, ["A", "B"], {"A": 0.25, "B": 0.5}, 0.5, 499)
    assert (a.kept, a.gained, a.n_present, a.n_absent) == (0.5, 0.5, 2, 2)
    assert (b.kept, b.gained) == (0.5, 0.5)
    assert a.implied_frequency == pytest.approx(0.25 * 0.5 + 0.75 * 0.5)
    assert a.timestep == 499 and a.t_frac == 0.5


def test_balanced_subset_takes_n_of_each_side() -> None:
    labels = torch.tensor([[1], [0], [1], [0], [0], [1], [1]]).bool()
    idx = balanced_subset(labels, 0, 2)
    assert idx.tolist() == [0, 2, 1, 3]


def _oracle_setup(make_oracle_backbone):
    # A point-mass oracle denoises every image to the same `mean`: the model keeps nothing, so
    # kept == gained and the implied frequency is the classifier's reading of that one image.
    backbone = make_oracle_backbone("v_prediction", std=0.0, shape=(3, 8, 8))
    torch.manual_seed(0)
    clf = AttributeClassifier(
        ClassifierConfig(image_size=8, channels=(4,), attribute_names=["A", "B"])
    )
    clf.eval()
    images = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8)
    labels = torch.rand(12, 2) < 0.5
    labels[0], labels[1] = True, False  # both sides of each attribute present
    return backbone, clf, images, labels


def test_a_model_that_forgets_everything_keeps_as_often_as_it_gains(make_oracle_backbone) -> None:
    backbone, clf, images, labels = _oracle_setup(make_oracle_backbone)
    rows = attribute_survival(
        backbone, clf, images, labels, {"A": 0.3, "B": 0.6}, [0.5, 1.0], steps=10, batch=5
    )
    assert [(r.attribute, r.t_frac) for r in rows] == [
        ("A", 0.5), ("B", 0.5), ("A", 1.0), ("B", 1.0)
    ]  # fmt: skip
    mean_u8 = ((backbone.unet.mean.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    reading = clf.predict(mean_u8[None].repeat(2, 1, 1, 1))[0].float()
    for r in rows:
        j = ["A", "B"].index(r.attribute)
        assert r.kept == r.gained == reading[j].item()
        assert r.implied_frequency == pytest.approx(reading[j].item())


def test_by_splits_the_rows_by_another_attribute(make_oracle_backbone) -> None:
    backbone, clf, images, labels = _oracle_setup(make_oracle_backbone)
    freq = {"A": 0.3, "B": 0.6}
    rows = attribute_survival(backbone, clf, images, labels, freq, [0.5], steps=10, by="B")
    assert [(r.attribute, r.subset) for r in rows] == [
        ("A", "all"), ("B", "all"), ("A", "B=1"), ("B", "B=1"), ("A", "B=0"), ("B", "B=0")
    ]  # fmt: skip
    whole, on, off = rows[0], rows[2], rows[4]
    assert on.n_present + off.n_present == whole.n_present == int(labels[:, 0].sum())
    assert on.n_absent + off.n_absent == whole.n_absent
    # Within B=1 every image has B: none is absent, so "gained" is undefined there.
    assert rows[3].n_absent == 0 and rows[3].gained != rows[3].gained
    assert on.kept == on.gained == whole.kept  # the oracle forgets in every subset


def test_attribute_survival_rejects_mismatched_inputs(make_oracle_backbone) -> None:
    backbone, clf, images, labels = _oracle_setup(make_oracle_backbone)
    with pytest.raises(ValueError, match="uint8"):
        attribute_survival(backbone, clf, images.float(), labels, {"A": 0.3, "B": 0.6}, [0.5])
    with pytest.raises(ValueError, match="labels must be"):
        attribute_survival(backbone, clf, images, labels[:, :1], {"A": 0.3, "B": 0.6}, [0.5])
    with pytest.raises(ValueError, match="no data frequency"):
        attribute_survival(backbone, clf, images, labels, {"A": 0.3}, [0.5])
    with pytest.raises(ValueError, match="by='C'"):
        attribute_survival(backbone, clf, images, labels, {"A": 0.3, "B": 0.6}, [0.5], by="C")


def test_command_runs_on_a_tiny_model(tmp_path: Path, pixel_pipeline_dir, capsys) -> None:
    data = write_dataset(tmp_path / "faces", n=40, seed=0, progress=False)
    torch.manual_seed(0)
    clf_dir = AttributeClassifier(ClassifierConfig(channels=(4,))).save(tmp_path / "clf")
    out = tmp_path / "s.json"
    argv = ["toy", "survival", "--data", str(data), "--attribute", "Eyes_Closed"]
    argv += ["--model", str(pixel_pipeline_dir)]
    argv += [
        "--classifier",
        str(clf_dir),
        "--n",
        "2",
        "--t",
        "0.2",
        "--steps",
        "5",
        "--by",
        "Pale_Skin",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 33 and {r["t_frac"] for r in rows} == {0.2}
    assert {r["subset"] for r in rows} == {"all", "Pale_Skin=1", "Pale_Skin=0"}
    out_text = capsys.readouterr().out
    assert (
        out_text.startswith("Eyes_Closed: ") and f"images, model {pixel_pipeline_dir}" in out_text
    )
    table = [ln for ln in out_text.splitlines() if ln.lstrip().startswith("0.20")]
    assert len(table) == 3 and {ln.split()[-4] for ln in table} == {
        "all",
        "Pale_Skin=1",
        "Pale_Skin=0",
    }


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--attribute", "Eyes_Shut"], "--attribute 'Eyes_Shut' is not one of the classifier's"),
        (["--attribute", "Smiling", "--by", "Pale_Skn"], "--by 'Pale_Skn' is not one of"),
        (["--attribute", "Smiling", "--n", "0"], "--n must be >= 1, got 0"),
        (["--attribute", "Smiling", "--t", "0.5", "1.5"], "--t values must be fractions of T"),
    ],
)
def test_command_names_a_bad_flag(tmp_path: Path, capsys, flags: list[str], message: str) -> None:
    data = write_dataset(tmp_path / "faces", n=10, seed=0, progress=False)
    assert main(["toy", "survival", "--data", str(data), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
