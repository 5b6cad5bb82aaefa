"""Attribute classifier for toyfaces: judges edits and checks sample attribute frequencies.

A small CNN (conv-BN-ReLU blocks, stride-2 downsampling, global average pool, one logit per
attribute) on images in [-1, 1]. Weights live in a folder holding `cfg.json` and
`model.safetensors`; the committed one is `src/hsae/assets/toy-classifier`, retrained with

    hsae toy train-classifier --data data/toyfaces --out src/hsae/assets/toy-classifier
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from hsae.data.images import parse_celeba_attributes, parse_partition
from hsae.toy.toyfaces import ATTRIBUTES
from hsae.utils.io import atomic_write_bytes, atomic_write_json, read_json

CONFIG_NAME = "cfg.json"
WEIGHTS_NAME = "model.safetensors"
DEFAULT_DIR = Path(__file__).parents[1] / "assets" / "toy-classifier"
RETRAIN_CMD = "hsae toy train-classifier --data data/toyfaces --out src/hsae/assets/toy-classifier"


@dataclass
class ClassifierConfig:
    image_size: int = 32
    channels: tuple[int, ...] = (32, 64, 128)
    attribute_names: list[str] = field(default_factory=lambda: list(ATTRIBUTES))

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.attribute_names = [str(a) for a in self.attribute_names]
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be a non-empty list of positive ints: {self.channels}")
        if not self.attribute_names:
            raise ValueError("attribute_names must not be empty")
        if len(set(self.attribute_names)) != len(self.attribute_names):
            raise ValueError(f"duplicate attribute names: {self.attribute_names}")

    @classmethod
    def from_dict(cls, d: object, source: str = "config") -> ClassifierConfig:
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown config keys {unknown}; known: {sorted(known)}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: invalid classifier config: {e}") from e


def _conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] become floats in [-1, 1]; float images are passed through."""
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    return images.float()


def pil_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images -> uint8 tensor (B, 3, H, W)."""
    arr = np.stack([np.asarray(im.convert("RGB")) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


class AttributeClassifier(nn.Module):
    """Small CNN giving one logit per attribute for (B, 3, S, S) images in [-1, 1]."""

    def __init__(self, cfg: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or ClassifierConfig()
        ch = self.cfg.channels
        layers: list[nn.Module] = [_conv_block(3, ch[0], 1)]  # full-res stem: thin strokes matter
        c_prev = ch[0]
        for c in ch:
            layers += [_conv_block(c_prev, c, 2), _conv_block(c, c, 1)]
            c_prev = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_prev, len(self.cfg.attribute_names))

    @property
    def config(self) -> ClassifierConfig:
        """Alias of `cfg`."""
        return self.cfg

    @property
    def attribute_names(self) -> list[str]:
        return list(self.cfg.attribute_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))

    def _check_input(self, images: torch.Tensor) -> None:
        s = self.cfg.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
            shape = tuple(images.shape)
            raise ValueError(f"expected images of shape (B, 3, {s}, {s}), got {shape}")

    @torch.no_grad()
    def predict_logits(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Logits (B, A) in eval mode; uint8 input is rescaled to [-1, 1]."""
        self._check_input(images)
        was_training = self.training
        self.eval()
        try:
            dev = next(self.parameters()).device
            outs = [
                self(to_model_input(images[i : i + batch_size]).to(dev)).cpu()
                for i in range(0, images.shape[0], batch_size)
            ]
        finally:
            self.train(was_training)
        return torch.cat(outs) if outs else torch.zeros(0, len(self.cfg.attribute_names))

    def predict_proba(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Probability (B, A) that each attribute is present."""
        return torch.sigmoid(self.predict_logits(images, batch_size))

    def predict(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Bool tensor (B, A): attribute present (logit > 0)."""
        return self.predict_logits(images, batch_size) > 0

    def save(self, out_dir: Path | str) -> Path:
        """Write `model.safetensors` then `cfg.json` into `out_dir`, each atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(out / WEIGHTS_NAME, st_save(state, metadata={"format": "pt"}))
        cfg = asdict(self.cfg)
        cfg["channels"] = list(cfg["channels"])
        atomic_write_json(out / CONFIG_NAME, cfg)
        return out

    @classmethod
    def load(cls, model_dir: Path | str, device: str | torch.device = "cpu") -> AttributeClassifier:
        """Load a folder written by `save`; the model is returned in eval mode."""
        d = Path(model_dir)
        if not d.is_dir():
            raise FileNotFoundError(f"classifier folder not found: {d}")
        cfg = ClassifierConfig.from_dict(
            read_json(d / CONFIG_NAME, "classifier config"), str(d / CONFIG_NAME)
        )
        model = cls(cfg)
        model.load_state_dict(_read_weights(d / WEIGHTS_NAME, model))
        return model.to(device).eval()


def _read_weights(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"classifier weights not found: {path}")
    try:
        state = st_load(path.read_bytes())
    except (SafetensorError, ValueError) as e:
        raise ValueError(f"classifier weights {path} are not a valid safetensors file: {e}") from e
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"classifier weights {path} do not match cfg.json: missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]}"
        )
    bad = [k for k, v in state.items() if v.shape != expected[k].shape]
    if bad:
        k = bad[0]
        raise ValueError(
            f"classifier weights {path} do not match cfg.json: {k} has shape "
            f"{tuple(state[k].shape)}, expected {tuple(expected[k].shape)}"
        )
    return state


def load_default(device: str | torch.device = "cpu") -> AttributeClassifier:
    """The committed toyfaces classifier in `src/hsae/assets/toy-classifier`."""
    if not (DEFAULT_DIR / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"no committed classifier weights in {DEFAULT_DIR}; retrain with: {RETRAIN_CMD}"
        )
    return AttributeClassifier.load(DEFAULT_DIR, device)


def _balanced_accuracy(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean recall over the classes present in `truth` (as sklearn does)."""
    recalls = [(pred[truth == c] == c).float().mean().item() for c in (True, False)]
    present = [r for r, c in zip(recalls, (True, False), strict=True) if (truth == c).any()]
    return float(np.mean(present))


def evaluate(model: AttributeClassifier, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Per-attribute accuracy and balanced accuracy, plus means and minima.

    `labels` is (B, A) in the model's attribute order: bool, 0/1 or CelebA-style 1/-1.
    """
    truth = labels > 0
    if truth.shape != (images.shape[0], len(model.attribute_names)):
        raise ValueError(
            f"labels must have shape ({images.shape[0]}, {len(model.attribute_names)}), "
            f"got {tuple(labels.shape)}"
        )
    pred = model.predict(images)
    per: dict[str, dict[str, float]] = {}
    for j, name in enumerate(model.attribute_names):
        p, t = pred[:, j], truth[:, j]
        per[name] = {
            "accuracy": (p == t).float().mean().item(),
            "balanced_accuracy": _balanced_accuracy(p, t),
            "positive_rate_true": t.float().mean().item(),
            "positive_rate_pred": p.float().mean().item(),
        }
    accs = [m["accuracy"] for m in per.values()]
    bals = [m["balanced_accuracy"] for m in per.values()]
    return {
        "n": int(images.shape[0]),
        "per_attribute": per,
        "mean_accuracy": float(np.mean(accs)),
        "mean_balanced_accuracy": float(np.mean(bals)),
        "min_accuracy": float(np.min(accs)),
        "min_balanced_accuracy": float(np.min(bals)),
    }


def load_labelled_split(
    data_dir: Path | str, split: int | None, attribute_names: list[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8 N,3,H,W) and bool labels (N, A) of a CelebA-layout folder.

    `split` is the partition code (0 train, 1 val, 2 test) or None for every image; labels are
    ordered as `attribute_names` (default: toyfaces ATTRIBUTES).
    """
    data = Path(data_dir)
    names = list(attribute_names or ATTRIBUTES)
    for f in ("list_attr_celeba.txt", "list_eval_partition.txt", "img_align_celeba"):
        if not (data / f).exists():
            raise FileNotFoundError(f"{data / f} not found: is {data} a CelebA-layout folder?")
    files_all, header, values = parse_celeba_attributes(data / "list_attr_celeba.txt")
    missing = sorted(set(names) - set(header))
    if missing:
        raise ValueError(f"attributes {missing} not in {data / 'list_attr_celeba.txt'}")
    cols = [header.index(a) for a in names]
    parts = parse_partition(data / "list_eval_partition.txt")
    keep = [i for i, f in enumerate(files_all) if split is None or parts.get(f) == split]
    files = [files_all[i] for i in keep]
    rows = values[keep][:, cols] > 0
    if not files:
        raise ValueError(f"no images with partition {split} in {data}")
    arrays = []
    for f in files:
        with Image.open(data / "img_align_celeba" / f) as im:
            arrays.append(np.asarray(im.convert("RGB")))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, torch.from_numpy(rows)


__all__ = [
    "AttributeClassifier",
    "ClassifierConfig",
    "evaluate",
    "load_default",
    "load_labelled_split",
    "pil_to_tensor",
    "to_model_input",
]
