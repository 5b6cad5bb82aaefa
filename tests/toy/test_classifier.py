"""Attribute classifier: config, save/load round trip, clear load errors, committed accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hsae.toy.classifier import (
    CONFIG_NAME,
    DEFAULT_DIR,
    WEIGHTS_NAME,
    AttributeClassifier,
    ClassifierConfig,
    evaluate,
    load_default,
    pil_to_tensor,
)
from hsae.toy.toyfaces import ATTRIBUTES, generate

HELD_OUT_SEED = 12345  # the training data uses seed 0


def _small_model(seed: int = 0) -> AttributeClassifier:
    torch.manual_seed(seed)
    model = AttributeClassifier(ClassifierConfig(channels=(8, 16)))
    with torch.no_grad():  # non-trivial BatchNorm statistics, so they must round-trip too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_config_defaults() -> None:
    cfg = ClassifierConfig()
    assert cfg.image_size == 32
    assert cfg.channels == (32, 64, 128)
    assert cfg.attribute_names == list(ATTRIBUTES)
    assert ClassifierConfig.from_dict({"channels": [4, 8]}).channels == (4, 8)
    with pytest.raises(ValueError, match="duplicate"):
        ClassifierConfig(attribute_names=["A", "A"])


def test_forward_shapes_and_predict() -> None:
    model = _small_model()
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    assert model(x).shape == (5, len(ATTRIBUTES))
    pred, proba = model.predict(x), model.predict_proba(x)
    assert pred.dtype == torch.bool and pred.shape == (5, len(ATTRIBUTES))
    assert torch.equal(pred, proba > 0.5)
    u8 = ((x + 1) * 127.5).round().to(torch.uint8)
    assert torch.allclose(model.predict_proba(u8), model.predict_proba(u8.float() / 127.5 - 1))
    with pytest.raises(ValueError, match=r"shape \(B, 3, 32, 32\)"):
        model.predict(torch.zeros(2, 3, 16, 16))


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = _small_model()
    model.save(tmp_path / "clf")
    assert sorted(p.name for p in (tmp_path / "clf").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    loaded = AttributeClassifier.load(tmp_path / "clf")
    assert loaded.cfg == model.cfg == loaded.config and not loaded.training
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    assert torch.equal(loaded.predict_logits(x), model.predict_logits(x))
    assert json.loads((tmp_path / "clf" / CONFIG_NAME).read_text())["channels"] == [8, 16]


def test_load_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="classifier folder not found"):
        AttributeClassifier.load(tmp_path / "nope")
    d = tmp_path / "clf"
    _small_model().save(d)
    (d / WEIGHTS_NAME).rename(tmp_path / "weights")
    with pytest.raises(FileNotFoundError, match="classifier weights not found"):
        AttributeClassifier.load(d)
    (tmp_path / "weights").rename(d / WEIGHTS_NAME)
    (d / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        AttributeClassifier.load(d)
    (d / CONFIG_NAME).write_text(json.dumps({"channels": [8, 16], "colour": 1}))
    with pytest.raises(ValueError, match=r"unknown config keys \['colour'\]"):
        AttributeClassifier.load(d)
    (d / CONFIG_NAME).write_text(json.dumps({"channels": [8, 32]}))
    with pytest.raises(ValueError, match=r"do not match cfg\.json"):
        AttributeClassifier.load(d)
    (d / CONFIG_NAME).write_text(json.dumps({"channels": [8]}))
    with pytest.raises(ValueError, match="unexpected keys"):
        AttributeClassifier.load(d)
    (d / CONFIG_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="classifier config not found"):
        AttributeClassifier.load(d)
    (d / CONFIG_NAME).write_text("{}")
    (d / WEIGHTS_NAME).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        AttributeClassifier.load(d)


def test_evaluate_balanced_accuracy() -> None:
    model = _small_model()
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    pred = model.predict(x)
    perfect = evaluate(model, x, pred.long() * 2 - 1)  # CelebA-style 1/-1 labels
    assert perfect["mean_accuracy"] == 1.0 and perfect["min_balanced_accuracy"] == 1.0
    wrong = evaluate(model, x, ~pred)
    assert wrong["mean_accuracy"] == 0.0 and wrong["mean_balanced_accuracy"] == 0.0
    with pytest.raises(ValueError, match="labels must have shape"):
        evaluate(model, x, pred[:, :3])


@pytest.mark.skipif(
    not (DEFAULT_DIR / WEIGHTS_NAME).is_file(), reason="no committed classifier weights"
)
def test_committed_classifier_on_fresh_faces() -> None:
    torch.set_num_threads(1)
    model = load_default()
    assert (DEFAULT_DIR / WEIGHTS_NAME).stat().st_size < 2_000_000
    faces = [generate(seed=HELD_OUT_SEED, index=i) for i in range(300)]
    images = pil_to_tensor([f.image for f in faces]).float() / 127.5 - 1.0
    labels = torch.tensor([[f.attributes[a] for a in model.attribute_names] for f in faces])
    metrics = evaluate(model, images, labels)
    accs = {a: m["accuracy"] for a, m in metrics["per_attribute"].items()}
    assert min(accs.values()) >= 0.95, accs
