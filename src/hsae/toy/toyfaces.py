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

from hsae.utils.io import atomic_write_text

# Bumped whenever the drawing changes, so re-running `hsae data toyfaces` into an old folder
# redraws every image instead of keeping ones that no longer match the generator.
GENERATOR_VERSION = 4

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

# Boxes (x0, y0, x1, y1) that each attribute touches, in unit face coordinates: (0.5, 0.5) is the
# face centre and one unit is the face scale, before nuisance transforms (`attribute_region_mask`
# maps them to pixels of one face). Used by the edit benchmark to measure change outside the
# attribute's region, so every box must contain all pixels its attribute can change (a test checks
# this); boxes may extend past [0, 1] where the drawing does (hat crown, background).
ATTRIBUTE_REGIONS: dict[str, tuple[float, float, float, float]] = {
    "Smiling": (0.28, 0.6, 0.72, 0.85),
    "Mouth_Slightly_Open": (0.28, 0.6, 0.72, 0.85),
    "Eyeglasses": (0.15, 0.35, 0.85, 0.6),
    "Wearing_Hat": (0.05, -0.1, 0.95, 0.35),
    "Blond_Hair": (0.0, 0.0, 1.0, 1.0),
    "Bangs": (0.2, 0.08, 0.8, 0.4),
    "Beard": (0.14, 0.55, 0.86, 1.0),
    "Eyes_Closed": (0.2, 0.38, 0.8, 0.56),
    "Pale_Skin": (0.0, 0.0, 1.0, 1.0),
    "Blue_Background": (-2.0, -2.0, 3.0, 3.0),  # the whole image, whatever the nuisance
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


def _lw(width: int, canvas: int) -> int:
    # Stroke widths were tuned on the default 128-pixel canvas (32 px x4); scale them so a face at
    # another size keeps the same proportions.
    return max(1, round(width * canvas / 128))


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


def _face_frame(nuis: dict[str, float], canvas: int) -> tuple[float, float, float]:
    """Face centre (x, y) and scale in pixels of a `canvas`-sized square."""
    return canvas * (0.5 + nuis["dx"]), canvas * (0.54 + nuis["dy"]), nuis["scale"] * canvas


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
    cx, cy, sc = _face_frame(nuis, s)

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
        # A chin beard below the mouth: a beard over the lower lip hides the lips, and the toy
        # DDPM then confuses the mouths there.
        d.chord(box(-fw, -0.2, fw, 0.40), 40, 140, fill=hair)
    if attrs["Bangs"]:
        d.chord(box(-fw + 0.02, -0.40, fw - 0.02, -0.02), 180, 360, fill=hair)
    _draw_eyes(d, box, attrs, nuis, s)
    _draw_mouth(d, box, attrs, s)
    if attrs["Wearing_Hat"]:
        hat = _hsv(nuis["hat_h"], 0.75, 0.55)
        d.rectangle(box(-fw - 0.1, -0.36, fw + 0.1, -0.29), fill=hat)
        d.rectangle(box(-fw + 0.05, -0.58, fw - 0.05, -0.34), fill=hat)
    return img.resize((cfg.size, cfg.size), Image.Resampling.BOX)


def _draw_eyes(
    d: ImageDraw.ImageDraw, box, attrs: dict[str, bool], nuis: dict[str, float], s: int
) -> None:
    # Eyes are ~5 px wide at 32 px: at 3-4 px the toy DDPM redraws closed eyes as open (a 1 px lid
    # line and a 2 px pupil put the same ink in the same place once noised).
    g = nuis["eye_gap"]
    ink = (25, 20, 20)
    for ex in (-g, g):
        if attrs["Eyes_Closed"]:
            d.line(box(ex - 0.085, -0.02, ex + 0.085, -0.02)[:4], fill=ink, width=_lw(7, s))
        else:
            d.ellipse(box(ex - 0.085, -0.09, ex + 0.085, 0.05), fill=(250, 250, 250))
            d.ellipse(box(ex - 0.04, -0.06, ex + 0.04, 0.02), fill=ink)
        brow_w = _lw(7 if attrs["Heavy_Eyebrows"] else 2, s)
        d.line(box(ex - 0.085, -0.15, ex + 0.085, -0.15)[:4], fill=ink, width=brow_w)
        if attrs["Eyeglasses"]:
            frame = _hsv(nuis["glasses_h"], 0.8, 0.35)
            d.ellipse(box(ex - 0.12, -0.12, ex + 0.12, 0.09), outline=frame, width=_lw(5, s))
    if attrs["Eyeglasses"]:
        frame = _hsv(nuis["glasses_h"], 0.8, 0.35)
        d.line(box(-g + 0.12, -0.02, g - 0.12, -0.02)[:4], fill=frame, width=_lw(5, s))


def _draw_mouth(d: ImageDraw.ImageDraw, box, attrs: dict[str, bool], s: int) -> None:
    # Mouths are ~8 px wide at 32 px and dark: the toy DDPM loses narrower smiles (a 1.5 px dip)
    # by t = 0.3 T, and red lips close to the colour of tanned skin (attribute survival).
    ink, lips = (40, 10, 10), (100, 5, 25)
    if attrs["Mouth_Slightly_Open"] and attrs["Smiling"]:
        d.chord(box(-0.16, 0.04, 0.16, 0.3), 0, 180, fill=ink, outline=lips, width=_lw(4, s))
    elif attrs["Mouth_Slightly_Open"]:
        d.ellipse(box(-0.08, 0.13, 0.08, 0.29), fill=ink, outline=lips, width=_lw(4, s))
    elif attrs["Smiling"]:
        d.arc(box(-0.16, 0.0, 0.16, 0.26), 15, 165, fill=lips, width=_lw(7, s))
    else:
        d.line(box(-0.12, 0.2, 0.12, 0.2)[:4], fill=lips, width=_lw(7, s))


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


def attribute_region_mask(
    seed: int, index: int, attribute: str, cfg: ToyFacesConfig | None = None
) -> np.ndarray:
    """Boolean (size, size) mask of the pixels face `index` may change when `attribute` flips.

    Pixels partly covered by the region count as inside: the box-filter downsampling spreads an
    edge over the pixel that holds it.
    """
    cfg = cfg or ToyFacesConfig()
    if attribute not in ATTRIBUTE_REGIONS:
        raise KeyError(f"unknown toyfaces attribute {attribute!r}; known: {ATTRIBUTES}")
    cx, cy, sc = _face_frame(_nuisance(seed, index, cfg), cfg.size)
    x0, y0, x1, y1 = ATTRIBUTE_REGIONS[attribute]
    px = np.arange(cfg.size)
    cols = (px + 1 > cx + (x0 - 0.5) * sc) & (px < cx + (x1 - 0.5) * sc)
    rows = (px + 1 > cy + (y0 - 0.5) * sc) & (px < cy + (y1 - 0.5) * sc)
    return rows[:, None] & cols[None, :]


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
    meta = {
        "generator": "toyfaces",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "n": n,
        "config": asdict(cfg),
    }
    # Re-running resumes, since images are pure functions of (seed, i, cfg); but images left by a
    # run with another seed or config (or of unknown origin) would silently mismatch the new
    # labels, so those are re-rendered. The metadata goes first to mark who owns the images.
    resume = _same_generator(out / "toyfaces.json", meta)
    atomic_write_text(out / "toyfaces.json", json.dumps(meta, indent=2))
    attr_lines, part_lines = [], []
    for i in tqdm(range(n), desc="toyfaces", unit="img", disable=not progress):
        face = generate(seed, i, cfg)
        name = f"{i + 1:06d}.png"
        path = img_dir / name
        if not (resume and path.exists()):
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
    return out


def _same_generator(meta_path: Path, meta: dict) -> bool:
    """True if `meta_path` records the same generator version, seed and config (n may differ)."""
    try:
        old = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # Round-trip through JSON so tuples compare equal to the lists they were saved as.
    new = json.loads(json.dumps(meta))
    keys = ("generator", "version", "seed", "config")
    return isinstance(old, dict) and all(old.get(k) == new[k] for k in keys)
