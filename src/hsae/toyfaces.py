"""Procedural, attribute-labelled cartoon faces: the project's embedded stand-in for CelebA.

Every image is a pure function of (dataset seed, image index, config), so any image can be
re-rendered, and every attribute can be toggled on a fixed face to check its label (tests do this).
Faces are drawn at 4x resolution and downsampled with a box filter, which gives anti-aliased edges
without needing a rasteriser of our own.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hsae.io_utils import atomic_write_text

ATTRIBUTES: tuple[str, ...] = (
    "Smiling",
    "Mouth_Slightly_Open",
    "Eyeglasses",
    "Wearing_Hat",
    "Blond_Hair",
    "Bangs",
    "Beard",
    "Eyes_Closed",
    "Pale_Skin",
    "Blue_Background",
    "Heavy_Eyebrows",
)

# Frequencies differ on purpose: real CelebA attributes are imbalanced, and probes/classifiers
# must be scored with balanced accuracy to be meaningful.
DEFAULT_PROBS: dict[str, float] = {
    "Smiling": 0.5,
    "Mouth_Slightly_Open": 0.4,
    "Eyeglasses": 0.3,
    "Wearing_Hat": 0.25,
    "Blond_Hair": 0.4,
    "Bangs": 0.35,
    "Beard": 0.3,
    "Eyes_Closed": 0.3,
    "Pale_Skin": 0.5,
    "Blue_Background": 0.5,
    "Heavy_Eyebrows": 0.4,
}

# Regions (in unit face coordinates, before nuisance transforms) that each attribute touches;
# used by the edit benchmark to measure change outside the attribute's region.
ATTRIBUTE_REGIONS: dict[str, tuple[float, float, float, float]] = {
    "Smiling": (0.3, 0.62, 0.7, 0.85),
    "Mouth_Slightly_Open": (0.3, 0.62, 0.7, 0.85),
    "Eyeglasses": (0.15, 0.35, 0.85, 0.55),
    "Wearing_Hat": (0.05, 0.0, 0.95, 0.35),
    "Blond_Hair": (0.0, 0.0, 1.0, 1.0),
    "Bangs": (0.2, 0.15, 0.8, 0.4),
    "Beard": (0.2, 0.55, 0.8, 1.0),
    "Eyes_Closed": (0.2, 0.38, 0.8, 0.52),
    "Pale_Skin": (0.0, 0.0, 1.0, 1.0),
    "Blue_Background": (0.0, 0.0, 1.0, 1.0),
    "Heavy_Eyebrows": (0.2, 0.28, 0.8, 0.42),
}


@dataclass
class ToyFacesConfig:
    """Generator settings. `shift_*` fields move the nuisance distribution for OOD evaluation."""

    size: int = 32
    supersample: int = 4
    position_jitter: float = 0.06  # max centre offset, fraction of image size
    scale_range: tuple[float, float] = (0.88, 1.05)
    hue_jitter: float = 0.04
    probs: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PROBS))

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"toyfaces size must be >= 16 pixels, got {self.size}")
        unknown = set(self.probs) - set(ATTRIBUTES)
        if unknown:
            raise ValueError(f"unknown toyfaces attributes {sorted(unknown)}; known: {ATTRIBUTES}")
        for name, p in self.probs.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"probability of {name} must be in [0, 1], got {p}")
        self.scale_range = (float(self.scale_range[0]), float(self.scale_range[1]))


def shifted_config(size: int = 32) -> ToyFacesConfig:
    """Nuisance-shifted variant: faces off-centre, smaller and with stronger colour jitter."""
    return ToyFacesConfig(size=size, position_jitter=0.12, scale_range=(0.72, 0.86), hue_jitter=0.1)


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1))
    return round(r * 255), round(g * 255), round(b * 255)


def sample_attributes(seed: int, index: int, cfg: ToyFacesConfig) -> dict[str, bool]:
    rng = np.random.default_rng([seed, index, 0])
    draws = rng.random(len(ATTRIBUTES))
    return {a: bool(d < cfg.probs.get(a, 0.5)) for a, d in zip(ATTRIBUTES, draws, strict=True)}


def _nuisance(seed: int, index: int, cfg: ToyFacesConfig) -> dict[str, float]:
    # A separate stream from the attributes, so toggling an attribute never moves the face.
    rng = np.random.default_rng([seed, index, 1])
    u = rng.random(12)
    j = cfg.hue_jitter
    return {
        "dx": (u[0] * 2 - 1) * cfg.position_jitter,
        "dy": (u[1] * 2 - 1) * cfg.position_jitter,
        "scale": cfg.scale_range[0] + u[2] * (cfg.scale_range[1] - cfg.scale_range[0]),
        "skin_h": 0.07 + (u[3] * 2 - 1) * j * 0.5,
        "hair_h": (u[4] * 2 - 1) * j,
        "bg_h": (u[5] * 2 - 1) * j,
        "bg_v": 0.75 + u[6] * 0.15,
        "hat_h": u[7],
        "dark_hair_v": 0.18 + u[8] * 0.22,
        "eye_gap": 0.17 + u[9] * 0.03,
        "face_w": 0.30 + u[10] * 0.04,
        "glasses_h": u[11],
    }


def render_face(attrs: dict[str, bool], nuis: dict[str, float], cfg: ToyFacesConfig) -> Image.Image:
    """Draw one face; `attrs` may be any toggled variant of the sampled attributes."""
    s = cfg.size * cfg.supersample
    bg = (
        _hsv(0.6 + nuis["bg_h"], 0.55, nuis["bg_v"])
        if attrs["Blue_Background"]
        else _hsv(0.1 + nuis["bg_h"], 0.25, nuis["bg_v"])
    )
    img = Image.new("RGB", (s, s), bg)
    d = ImageDraw.Draw(img)
    sc = nuis["scale"] * s
    cx, cy = s * (0.5 + nuis["dx"]), s * (0.54 + nuis["dy"])

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        return (cx + x0 * sc, cy + y0 * sc, cx + x1 * sc, cy + y1 * sc)

    hair = (
        _hsv(0.13 + nuis["hair_h"], 0.7, 0.92)
        if attrs["Blond_Hair"]
        else _hsv(0.06 + nuis["hair_h"], 0.6, nuis["dark_hair_v"])
    )
    skin = (
        _hsv(nuis["skin_h"], 0.18, 0.97) if attrs["Pale_Skin"] else _hsv(nuis["skin_h"], 0.5, 0.7)
    )
    fw = nuis["face_w"]
    d.ellipse(box(-fw - 0.05, -0.42, fw + 0.05, 0.25), fill=hair)  # hair mass behind the head
    d.ellipse(box(-fw, -0.36, fw, 0.40), fill=skin)
    if attrs["Beard"]:
        d.chord(box(-fw, -0.2, fw, 0.40), 20, 160, fill=hair)
    if attrs["Bangs"]:
        d.chord(box(-fw + 0.02, -0.40, fw - 0.02, -0.02), 180, 360, fill=hair)
    _draw_eyes(d, box, attrs, nuis)
    _draw_mouth(d, box, attrs, skin)
    if attrs["Wearing_Hat"]:
        hat = _hsv(nuis["hat_h"], 0.75, 0.55)
        d.rectangle(box(-fw - 0.1, -0.36, fw + 0.1, -0.29), fill=hat)
        d.rectangle(box(-fw + 0.05, -0.58, fw - 0.05, -0.34), fill=hat)
    return img.resize((cfg.size, cfg.size), Image.Resampling.BOX)


def _draw_eyes(d: ImageDraw.ImageDraw, box, attrs: dict[str, bool], nuis: dict[str, float]) -> None:
    g = nuis["eye_gap"]
    ink = (25, 20, 20)
    for ex in (-g, g):
        if attrs["Eyes_Closed"]:
            d.line(box(ex - 0.06, -0.02, ex + 0.06, -0.02)[:4], fill=ink, width=5)
        else:
            d.ellipse(box(ex - 0.06, -0.07, ex + 0.06, 0.03), fill=(250, 250, 250))
            d.ellipse(box(ex - 0.03, -0.05, ex + 0.03, 0.01), fill=ink)
        brow_w = 7 if attrs["Heavy_Eyebrows"] else 2
        d.line(box(ex - 0.07, -0.12, ex + 0.07, -0.12)[:4], fill=ink, width=brow_w)
        if attrs["Eyeglasses"]:
            frame = _hsv(nuis["glasses_h"], 0.8, 0.35)
            d.ellipse(box(ex - 0.1, -0.1, ex + 0.1, 0.07), outline=frame, width=5)
    if attrs["Eyeglasses"]:
        frame = _hsv(nuis["glasses_h"], 0.8, 0.35)
        d.line(box(-g + 0.1, -0.03, g - 0.1, -0.03)[:4], fill=frame, width=5)


def _draw_mouth(d: ImageDraw.ImageDraw, box, attrs: dict[str, bool], skin) -> None:
    ink, lips = (40, 10, 10), (170, 40, 50)
    if attrs["Mouth_Slightly_Open"] and attrs["Smiling"]:
        d.chord(box(-0.14, 0.1, 0.14, 0.3), 0, 180, fill=ink, outline=lips, width=3)
    elif attrs["Mouth_Slightly_Open"]:
        d.ellipse(box(-0.07, 0.15, 0.07, 0.28), fill=ink, outline=lips, width=3)
    elif attrs["Smiling"]:
        d.arc(box(-0.14, 0.06, 0.14, 0.24), 20, 160, fill=lips, width=6)
    else:
        d.line(box(-0.1, 0.2, 0.1, 0.2)[:4], fill=lips, width=6)


@dataclass
class ToyFace:
    index: int
    attributes: dict[str, bool]
    image: Image.Image


def generate(seed: int, index: int, cfg: ToyFacesConfig | None = None, **toggles: bool) -> ToyFace:
    """Render face `index` of dataset `seed`; keyword toggles override sampled attributes."""
    cfg = cfg or ToyFacesConfig()
    attrs = sample_attributes(seed, index, cfg)
    for name, value in toggles.items():
        if name not in attrs:
            raise KeyError(f"unknown toyfaces attribute {name!r}; known: {ATTRIBUTES}")
        attrs[name] = bool(value)
    return ToyFace(index, attrs, render_face(attrs, _nuisance(seed, index, cfg), cfg))


def split_of(index: int, n: int) -> int:
    """CelebA partition code: 0 train (80%), 1 val (10%), 2 test (10%)."""
    frac = index / max(n, 1)
    return 0 if frac < 0.8 else (1 if frac < 0.9 else 2)


def write_dataset(
    out: Path, n: int, seed: int = 0, cfg: ToyFacesConfig | None = None, progress: bool = True
) -> Path:
    """Write `n` faces in CelebA layout: img_align_celeba/*.png, list_attr_celeba.txt, partition."""
    from tqdm import tqdm

    if n <= 0:
        raise ValueError(f"--n must be a positive number of images, got {n}")
    cfg = cfg or ToyFacesConfig()
    out = Path(out)
    img_dir = out / "img_align_celeba"
    img_dir.mkdir(parents=True, exist_ok=True)
    attr_lines, part_lines = [], []
    for i in tqdm(range(n), desc="toyfaces", unit="img", disable=not progress):
        face = generate(seed, i, cfg)
        name = f"{i + 1:06d}.png"
        path = img_dir / name
        if not path.exists():  # re-running resumes: images are pure functions of (seed, i)
            tmp = path.with_suffix(".tmp.png")
            face.image.save(tmp)
            tmp.replace(path)
        vals = " ".join(f"{1 if face.attributes[a] else -1:2d}" for a in ATTRIBUTES)
        attr_lines.append(f"{name} {vals}")
        part_lines.append(f"{name} {split_of(i, n)}")
    atomic_write_text(
        out / "list_attr_celeba.txt",
        f"{n}\n{' '.join(ATTRIBUTES)}\n" + "\n".join(attr_lines) + "\n",
    )
    atomic_write_text(out / "list_eval_partition.txt", "\n".join(part_lines) + "\n")
    meta = {"generator": "toyfaces", "seed": seed, "n": n, "config": asdict(cfg)}
    atomic_write_text(out / "toyfaces.json", json.dumps(meta, indent=2))
    return out
