"""Image loading for every stage: plain folders and CelebA-format folders (real CelebA, toyfaces).

Images come out as float32 (3, size, size) tensors in [-1, 1], the range diffusion models expect.
Only PIL is used for decoding: torchvision does not load beside the CPU torch wheel (see
docs/design.md).
"""

from __future__ import annotations

import struct
import warnings
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
CELEBA_IMAGE_DIR = "img_align_celeba"

# Pillow's decoders report corrupt data through many exception types, not only OSError.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)


class BadImageError(ValueError):
    """An image file that cannot be decoded into an RGB picture."""


# ----------------------------------------------------------------------------- single images


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit greyscale: a plain convert("L") would clip everything above 255 to white.
        arr = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), mode="L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        # Transparent pixels hold arbitrary colours; white is what a viewer would show.
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _resize_center_crop(img: Image.Image, size: int, path: Path | None = None) -> Image.Image:
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    limit = Image.MAX_IMAGE_PIXELS  # None: the user switched PIL's limit off
    if limit is not None and new_w * new_h > limit:  # e.g. a 1 x 100000 strip at side 512
        what = f"{w}x{h}, resized to {new_w}x{new_h} ="
        raise _bomb_error(path or Path("?"), new_w * new_h, what)
    if (new_w, new_h) != (w, h):
        # Pillow's bicubic filter widens its support when shrinking, i.e. it antialiases.
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def _bomb_error(path: Path, pixels: int, what: str) -> BadImageError:
    limit = Image.MAX_IMAGE_PIXELS
    return BadImageError(
        f"image {path}: {what} {pixels:,} pixels, more than PIL's decompression-bomb limit "
        f"PIL.Image.MAX_IMAGE_PIXELS = {limit:,}; refusing it (a trusted large image can be "
        "allowed by raising that limit)"
    )


def _open_checked(path: Path) -> Image.Image:
    """Image.open with PIL's decompression-bomb warning (1-2x MAX_IMAGE_PIXELS) made an error:
    PIL would decode such an image, at the cost of up to ~180M pixels of memory."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise BadImageError(
                f"image {path}: {e} (PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,}); "
                "refusing it (a trusted large image can be allowed by raising that limit)"
            ) from e


def _decode_rgb(path: Path) -> Image.Image:
    """Fully decode `path` to RGB, turning every decoder failure into BadImageError."""
    try:
        with _open_checked(path) as im:
            im.load()  # decode now, inside the try: Image.open alone reads only the header
            # Camera photos store their rotation in EXIF rather than in the pixels.
            return _to_rgb(ImageOps.exif_transpose(im))
    except FileNotFoundError as e:
        raise BadImageError(f"image file {path} not found; expected an image file there") from e
    except BadImageError:
        raise
    except _DECODE_ERRORS as e:
        raise BadImageError(
            f"cannot read image {path}: {e}; expected a valid image file "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))})"
        ) from e


def conversion_of(path: Path, size: int) -> str | None:
    """What loading `path` at `size` changes, from its header alone: None for an RGB
    size x size single-frame image, else e.g. "CMYK->RGB", "resized", "3 frames->first"."""
    with _open_checked(Path(path)) as im:
        mode, (w, h), frames = im.mode, im.size, int(getattr(im, "n_frames", 1) or 1)
    parts = [f"{mode}->RGB"] if mode != "RGB" else []
    if (w, h) != (size, size):
        parts.append("resized" if w == h else "cropped+resized")
    if frames > 1:
        parts.append("animated->first frame")
    return ", ".join(parts) or None


def conversion_summary(counts: dict[str, int] | None, total: int) -> str:
    """One line: how many of `total` images were converted, and how (counts from the manifest)."""
    if counts is None:
        return "not recorded (a store written before conversions were counted)"
    converted = counts.get("converted", 0)
    if not converted:
        return f"none of {total} (all RGB, the model's size, one frame)"
    kinds = sorted(
        ((k, v) for k, v in counts.items() if k != "converted"), key=lambda kv: (-kv[1], kv[0])
    )
    return f"{converted} of {total}: " + ", ".join(f"{v} {k}" for k, v in kinds)


def count_conversions(kinds: Iterable[str | None]) -> dict[str, int]:
    """{"converted": n, "<kind>": n, ...} over per-image conversion_of() results."""
    counts: Counter[str] = Counter()
    for kind in kinds:
        if kind:
            counts["converted"] += 1
            counts.update(kind.split(", "))
    return dict(counts)


def load_image(path: Path, size: int) -> torch.Tensor:
    """Load `path` as a float32 (3, size, size) tensor in [-1, 1].

    Any mode is converted to RGB (alpha composited on white); non-square images are resized so
    the shorter side is `size`, then centre-cropped.
    """
    if size <= 0:
        raise ValueError(f"image size must be a positive number of pixels, got {size}")
    img = _resize_center_crop(_decode_rgb(Path(path)), size, Path(path))
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def check_image(path: Path, size: int) -> None:
    """Raise BadImageError unless `path` passes PIL's integrity check and loads fully."""
    try:
        with _open_checked(path) as im:
            im.verify()  # catches PNG checksum damage that decoding alone may let through
    except FileNotFoundError as e:
        raise BadImageError(f"image file {path} not found; expected an image file there") from e
    except BadImageError:
        raise
    except _DECODE_ERRORS as e:
        raise BadImageError(f"image {path} fails PIL's integrity check: {e}") from e
    load_image(path, size)


# ----------------------------------------------------------------------------- CelebA format


@dataclass
class ImageRecord:
    id: str
    path: Path
    attributes: np.ndarray | None = None  # int8, 1 / -1 per attribute
    split: int | None = None  # 0 train, 1 val, 2 test


def _error(path: Path, lineno: int, what: str) -> ValueError:
    return ValueError(f"{path}, line {lineno}: {what}")


_SIGN = {"1": 1, "-1": -1, "+1": 1}


def _parse_values(path: Path, rows: list[tuple[int, list[str]]], names: list[str]) -> np.ndarray:
    """Turn (line number, tokens) rows into int8 ±1, naming the first offending line."""
    # A dict lookup converts and validates at once; real CelebA has 200k rows x 40 attributes.
    flat = [_SIGN.get(tok, 0) for _, toks in rows for tok in toks]
    values = np.array(flat, dtype=np.int8).reshape(len(rows), len(names))
    bad = np.flatnonzero((values == 0).any(axis=1))
    if bad.size:
        lineno, toks = rows[bad[0]]
        col = int(np.flatnonzero(values[bad[0]] == 0)[0])
        raise _error(path, lineno, f"attribute {names[col]} is {toks[col]!r}; expected 1 or -1")
    return values


def parse_celeba_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Read a CelebA `list_attr_celeba.txt`: (image names, attribute names, (N, A) int8 of ±1)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if len(lines) < 2:
        raise ValueError(f"{path}: expected an image count line and an attribute names line")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise _error(path, 1, f"expected the number of images, got {lines[0]!r}") from None
    names = lines[1].split()
    if not names or len(set(names)) != len(names):
        raise _error(path, 2, "expected distinct, whitespace-separated attribute names")
    files: list[str] = []
    rows: list[tuple[int, list[str]]] = []
    for lineno, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue  # tolerate blank lines, e.g. a trailing one
        if len(parts) != len(names) + 1:
            raise _error(
                path,
                lineno,
                f"expected {len(names) + 1} columns (file name + {len(names)} attributes), "
                f"got {len(parts)}",
            )
        files.append(parts[0])
        rows.append((lineno, parts[1:]))
    if len(files) != count:
        raise ValueError(f"{path}: line 1 announces {count} images but {len(files)} are listed")
    if len(set(files)) != len(files):
        raise ValueError(f"{path}: some image names are listed more than once")
    return files, names, _parse_values(path, rows, names)


def attribute_frequencies(root: Path) -> dict[str, float]:
    """Fraction of images with each attribute in ROOT/list_attr_celeba.txt (all splits)."""
    _, names, values = parse_celeba_attributes(Path(root) / "list_attr_celeba.txt")
    return dict(zip(names, (values > 0).mean(0).tolist(), strict=True))


def parse_partition(path: Path) -> dict[str, int]:
    """Read a CelebA `list_eval_partition.txt`: image name -> 0 train / 1 val / 2 test."""
    split_of: dict[str, int] = {}
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise _error(path, lineno, f"expected '<image name> <0|1|2>', got {line.strip()!r}")
        split_of[parts[0]] = int(parts[1])
    return split_of


def _celeba_records(root: Path) -> tuple[list[ImageRecord], list[str], bool]:
    """Records of a CelebA-layout folder, its attribute names, and whether splits are known."""
    files, names, values = parse_celeba_attributes(root / ATTR_FILE)
    img_dir = root / CELEBA_IMAGE_DIR
    if not img_dir.is_dir():
        raise FileNotFoundError(f"{root} has {ATTR_FILE} but no image folder {img_dir}")
    part_path = root / PARTITION_FILE
    split_of = parse_partition(part_path) if part_path.is_file() else None
    if split_of is not None:
        missing = [f for f in files if f not in split_of]
        if missing:
            raise ValueError(
                f"{part_path} has no split for {len(missing)} image(s) of {ATTR_FILE}, "
                f"e.g. {missing[0]}"
            )
    records = [
        ImageRecord(f, img_dir / f, values[i], None if split_of is None else split_of[f])
        for i, f in enumerate(files)
    ]
    return records, names, split_of is not None


def _folder_records(root: Path) -> list[ImageRecord]:
    paths = (p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    rel = sorted(p.relative_to(root).as_posix() for p in paths)
    if not rel:
        raise ValueError(
            f"no images in {root}: expected files ending in "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))} (searched recursively) or a CelebA {ATTR_FILE}"
        )
    return [ImageRecord(r, root / r) for r in rel]


def _discover(root: Path) -> tuple[str, list[ImageRecord], list[str], bool]:
    """(layout, records, attribute names, has splits) of an image folder."""
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"expected an image folder, got a file: {root}")
    if (root / ATTR_FILE).is_file():
        records, names, has_splits = _celeba_records(root)
        return "celeba", records, names, has_splits
    return "folder", _folder_records(root), [], False


# ----------------------------------------------------------------------------- dataset


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """Images of a plain folder (recursive) or of a CelebA-layout folder, with attributes.

    `ds[i]` is `(image tensor, i)`. With `skip_bad`, every selected file is checked up front and
    the bad ones are dropped (listed in `bad`), so indices never shift while a stage iterates.
    """

    def __init__(
        self,
        root: Path,
        size: int,
        split: str = "all",
        limit: int | None = None,
        skip_bad: bool = False,
    ) -> None:
        self.root = Path(root)
        self.size = size
        if size <= 0:
            raise ValueError(f"image size must be a positive number of pixels, got {size}")
        if split != "all" and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of all, {', '.join(SPLITS)}")
        if limit is not None and limit <= 0:
            raise ValueError(f"limit must be a positive number of images or None, got {limit}")
        self.layout, records, self.attribute_names, has_splits = _discover(self.root)
        if split != "all":
            if not has_splits:
                raise ValueError(
                    f"split {split!r} needs {self.root / PARTITION_FILE}, which does not exist; "
                    "use split='all'"
                )
            records = [r for r in records if r.split == SPLITS[split]]
        self.bad: list[dict] = []
        self.records = self._validate(records, limit) if skip_bad else records[:limit]
        if not self.records:
            what = f"split {split!r} of {self.root}" if split != "all" else str(self.root)
            extra = f" ({len(self.bad)} unreadable, listed in .bad)" if self.bad else ""
            raise ValueError(f"no usable images in {what}{extra}")
        # (N, A) int8 of ±1 aligned with `records`; None for a plain folder.
        rows = [r.attributes for r in self.records if r.attributes is not None]
        self.attributes: np.ndarray | None = (
            np.stack(rows).astype(np.int8) if self.layout == "celeba" else None
        )

    def _validate(self, records: list[ImageRecord], limit: int | None) -> list[ImageRecord]:
        # Stops once `limit` good images are found: a small run never reads the whole folder.
        good: list[ImageRecord] = []
        for rec in records:
            if limit is not None and len(good) >= limit:
                break
            try:
                check_image(rec.path, self.size)
            except BadImageError as e:
                self.bad.append({"id": rec.id, "path": str(rec.path), "error": str(e)})
            else:
                good.append(rec)
        return good

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        i = range(len(self.records))[i]  # normalises negative indices, raises IndexError
        return load_image(self.records[i].path, self.size), i

    def conversion_of(self, i: int) -> str | None:
        """How image i is converted on loading (None: used as is); reads its header only."""
        try:
            return conversion_of(self.records[i].path, self.size)
        except (BadImageError, *_DECODE_ERRORS):
            return None  # loading it reports the problem, with the file named


def batches(ds: ImageDataset, batch_size: int) -> Iterator[tuple[torch.Tensor, list[int]]]:
    """Yield (stacked images, dataset indices) in order; in-process, so results are reproducible."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for start in range(0, len(ds), batch_size):
        idx = list(range(start, min(start + batch_size, len(ds))))
        yield torch.stack([ds[i][0] for i in idx]), idx
