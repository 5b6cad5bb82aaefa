"""Image loading: CelebA-format parsing, plain folders, colour modes, cropping, bad files."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hsae.data.images import (
    BadImageError,
    ImageDataset,
    ImageRecord,
    batches,
    load_image,
    parse_celeba_attributes,
)
from hsae.toy.toyfaces import ATTRIBUTES, generate, write_dataset


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("toy"), n=12, progress=False)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _save(img: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _noise_png_bytes(size: int = 32) -> bytes:
    arr = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _write_attr(root: Path, text: str) -> Path:
    (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    path = root / "list_attr_celeba.txt"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- CelebA format


def test_celeba_layout_reads_names_attributes_and_pixels(toy: Path) -> None:
    ds = ImageDataset(toy, 32)
    assert ds.layout == "celeba"
    assert len(ds) == 12
    assert ds.ids == [f"{i + 1:06d}.png" for i in range(12)]
    assert ds.attribute_names == list(ATTRIBUTES)
    assert ds.attributes is not None
    assert ds.attributes.dtype == np.int8 and ds.attributes.shape == (12, len(ATTRIBUTES))
    for i in range(12):
        truth = generate(0, i).attributes
        assert ds.attributes[i].tolist() == [1 if truth[a] else -1 for a in ATTRIBUTES]
        rec = ds.records[i]
        assert isinstance(rec, ImageRecord) and rec.attributes is not None
        assert np.array_equal(rec.attributes, ds.attributes[i])
    x, idx = ds[3]
    assert idx == 3 and x.dtype == torch.float32 and x.shape == (3, 32, 32)
    expected = np.asarray(generate(0, 3).image, dtype=np.float32) / 127.5 - 1
    assert torch.allclose(x, torch.from_numpy(expected).permute(2, 0, 1), atol=1e-6)


def test_split_selection_and_limit(toy: Path) -> None:
    # toyfaces puts the first 80% in train, the next 10% in val, the rest in test.
    train, val, test = (ImageDataset(toy, 32, split=s) for s in ("train", "val", "test"))
    assert train.ids == [f"{i + 1:06d}.png" for i in range(10)]
    assert val.ids == ["000011.png"] and test.ids == ["000012.png"]
    assert {r.split for r in train.records} == {0} and test.records[0].split == 2
    assert val.attributes is not None and val.attributes.shape == (1, len(ATTRIBUTES))
    assert ImageDataset(toy, 32, limit=5).ids == [f"{i + 1:06d}.png" for i in range(5)]
    assert len(ImageDataset(toy, 32, split="train", limit=3)) == 3
    assert len(ImageDataset(toy, 32, limit=100)) == 12
    with pytest.raises(ValueError, match="unknown split"):
        ImageDataset(toy, 32, split="validation")
    with pytest.raises(ValueError, match="limit"):
        ImageDataset(toy, 32, limit=0)


def test_split_without_partition_file_is_a_clear_error(toy: Path, tmp_path: Path) -> None:
    root = _copy(toy, tmp_path / "nopart")
    (root / "list_eval_partition.txt").unlink()
    ds = ImageDataset(root, 32)
    assert len(ds) == 12 and all(r.split is None for r in ds.records)
    with pytest.raises(ValueError, match=re.escape("list_eval_partition.txt")):
        ImageDataset(root, 32, split="train")


def test_celeba_real_style_jpg_names_and_spacing(tmp_path: Path) -> None:
    # Real CelebA: .jpg names, a trailing space after the names, double spaces before 1s.
    root = tmp_path / "celeba"
    _write_attr(root, "2\r\nA B \r\n000001.jpg  1 -1\r\n000002.jpg -1  1\r\n")
    for name in ("000001.jpg", "000002.jpg"):
        _save(Image.new("RGB", (40, 48), (10, 20, 30)), root / "img_align_celeba" / name)
    ds = ImageDataset(root, 16)
    assert ds.ids == ["000001.jpg", "000002.jpg"] and ds.attribute_names == ["A", "B"]
    assert ds.attributes is not None
    assert ds.attributes.tolist() == [[1, -1], [-1, 1]]
    assert ds[1][0].shape == (3, 16, 16)


@pytest.mark.parametrize(
    ("body", "line", "what"),
    [
        ("2\nA B\nx.png 1 -1\ny.png 1\n", 4, "expected 3 columns"),
        ("2\nA B\nx.png 1 2\ny.png 1 1\n", 3, "attribute B is '2'"),
        ("1\nA B\nx.png 1 yes\n", 3, "attribute B is 'yes'"),
        ("two\nA B\nx.png 1 1\n", 1, "expected the number of images"),
    ],
)
def test_malformed_attribute_file_names_file_and_line(
    tmp_path: Path, body: str, line: int, what: str
) -> None:
    path = _write_attr(tmp_path, body)
    for call in (lambda: parse_celeba_attributes(path), lambda: ImageDataset(tmp_path, 32)):
        with pytest.raises(ValueError, match=re.escape(f"line {line}: {what}")) as err:
            call()
        assert str(path) in str(err.value)


def test_attribute_count_mismatch(tmp_path: Path) -> None:
    path = _write_attr(tmp_path, "3\nA\nx.png 1\ny.png -1\n")
    with pytest.raises(ValueError, match="announces 3 images but 2") as err:
        parse_celeba_attributes(path)
    assert str(path) in str(err.value)


# ----------------------------------------------------------------------------- plain folders


def test_plain_folder_recursive_sorted_case_insensitive(tmp_path: Path) -> None:
    img = Image.new("RGB", (8, 8), (200, 0, 0))
    for rel in ("b.png", "a/c.JPG", "a/b/d.jpeg", "e.Webp", "z.bmp"):
        _save(img, tmp_path / rel)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageDataset(tmp_path, 8)
    assert ds.layout == "folder"
    assert ds.ids == ["a/b/d.jpeg", "a/c.JPG", "b.png", "e.Webp", "z.bmp"]
    assert ds.attribute_names == [] and ds.attributes is None
    assert all(r.attributes is None and r.split is None for r in ds.records)
    with pytest.raises(ValueError, match=re.escape("list_eval_partition.txt")):
        ImageDataset(tmp_path, 8, split="test")


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageDataset(tmp_path / "nowhere", 32)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"no images in .*empty"):
        ImageDataset(empty, 32)


def test_batches_yield_stacked_images_and_indices_in_order(toy: Path) -> None:
    ds = ImageDataset(toy, 32)
    got = list(batches(ds, 5))
    assert [idx for _, idx in got] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    assert [tuple(x.shape) for x, _ in got] == [(5, 3, 32, 32), (5, 3, 32, 32), (2, 3, 32, 32)]
    assert torch.equal(got[2][0][1], ds[11][0])
    assert ds[-1][1] == 11
    with pytest.raises(IndexError):
        ds[12]


# ----------------------------------------------------------------------------- conversion


def _in_range(x: torch.Tensor, size: int = 32) -> None:
    assert x.dtype == torch.float32 and x.shape == (3, size, size)
    assert x.min() >= -1 and x.max() <= 1


def test_colour_modes_become_rgb(tmp_path: Path) -> None:
    gray = load_image(_save(Image.new("L", (40, 24), 51), tmp_path / "g.png"), 32)
    _in_range(gray)
    assert torch.allclose(gray, torch.full_like(gray, 51 / 127.5 - 1), atol=1e-6)

    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # fully transparent black
    rgba.paste((255, 0, 0, 255), (0, 0, 16, 32))  # opaque red left half
    x = load_image(_save(rgba, tmp_path / "a.png"), 32)
    _in_range(x)
    assert torch.allclose(x[:, :, 16:], torch.ones(3, 32, 16))  # composited on white
    red = torch.tensor([1.0, -1, -1])[:, None, None]
    assert torch.allclose(x[:, :, :16], red.expand(3, 32, 16))

    pal = Image.new("RGB", (32, 32), (0, 0, 255)).convert("P")
    blue = torch.tensor([-1.0, -1, 1])[:, None, None].expand(3, 32, 32)
    assert torch.allclose(load_image(_save(pal, tmp_path / "p.gif"), 32), blue)
    pal.info["transparency"] = pal.getpixel((0, 0))  # the palette's only colour: all see-through
    assert torch.allclose(load_image(_save(pal, tmp_path / "t.png"), 32), torch.ones(3, 32, 32))
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # red in CMYK
    x = load_image(_save(cmyk, tmp_path / "c.tif"), 32)
    assert torch.allclose(x, red.expand(3, 32, 32))

    sixteen = Image.fromarray(np.full((32, 32), 65535, dtype=np.uint16))
    x = load_image(_save(sixteen, tmp_path / "s.png"), 32)
    assert torch.allclose(x, torch.ones(3, 32, 32))  # 16-bit white stays white, not clipped


def test_center_crop_without_resize_is_exact(tmp_path: Path) -> None:
    # Each column gets its own value, so the crop position can be read off the output.
    arr = np.zeros((32, 64, 3), dtype=np.uint8)
    arr[..., 0] = np.arange(64, dtype=np.uint8)[None, :] * 4
    arr[..., 1] = np.arange(32, dtype=np.uint8)[:, None] * 8
    x = load_image(_save(Image.fromarray(arr), tmp_path / "wide.png"), 32)
    expected = torch.from_numpy(arr[:, 16:48].astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
    assert torch.allclose(x, expected, atol=1e-6)
    tall = load_image(_save(Image.fromarray(arr.transpose(1, 0, 2)), tmp_path / "tall.png"), 32)
    assert torch.allclose(tall, expected.transpose(1, 2), atol=1e-6)


def test_odd_size_is_resized_then_center_cropped(tmp_path: Path) -> None:
    # 48x24 -> 64x32 -> columns 16..48, which come from source columns 12..36 exactly: a white
    # band there between black margins gives white, with the same bicubic softening on both
    # edges. An off-centre crop, or a squash instead of a crop, would pull black in.
    arr = np.zeros((24, 48), dtype=np.uint8)
    arr[:, 12:36] = 255
    x = load_image(_save(Image.fromarray(arr), tmp_path / "band.png"), 32)
    _in_range(x)
    assert torch.allclose(x[:, :, 1:31], torch.ones(3, 32, 30), atol=1e-3)
    assert 0.5 < x[0, 0, 0] < 1 and torch.allclose(x[:, :, 0], x[:, :, 31], atol=1e-3)
    # 40x24 -> about 53x32: the white source band 8..32 fills the centre crop but for its edges.
    arr = np.zeros((24, 40), dtype=np.uint8)
    arr[:, 8:32] = 255
    x = load_image(_save(Image.fromarray(arr), tmp_path / "odd.png"), 32)
    _in_range(x)
    assert torch.all(x[:, :, 2:30] > 0.95)
    big = Image.new("RGB", (300, 200), (30, 60, 90))  # downscale keeps a flat colour flat
    y = load_image(_save(big, tmp_path / "big.jpg"), 32)
    assert torch.allclose(y, y[:, :1, :1].expand(3, 32, 32), atol=2 / 127.5)


# ----------------------------------------------------------------------------- bad files


def test_corrupt_and_truncated_files_raise_bad_image_error(tmp_path: Path) -> None:
    garbage = tmp_path / "x.png"
    garbage.write_bytes(b"this is not a png at all" * 10)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(_noise_png_bytes()[:600])
    for path in (garbage, truncated):
        with pytest.raises(BadImageError, match=re.escape(path.name)) as err:
            load_image(path, 32)
        assert isinstance(err.value, ValueError)
    with pytest.raises(BadImageError, match=re.escape("ghost.png")):
        load_image(tmp_path / "ghost.png", 32)


def test_bad_file_raises_when_met_or_is_skipped_up_front(tmp_path: Path) -> None:
    for name in ("a.png", "c.png", "e.png"):
        (tmp_path / name).write_bytes(_noise_png_bytes())
    (tmp_path / "b.png").write_bytes(b"\x89PNG garbage")
    (tmp_path / "d.png").write_bytes(_noise_png_bytes()[:600])
    ds = ImageDataset(tmp_path, 32)
    assert len(ds) == 5 and ds.bad == []
    ds[0]
    with pytest.raises(BadImageError, match=re.escape("b.png")):
        ds[1]

    ds = ImageDataset(tmp_path, 32, skip_bad=True)
    assert ds.ids == ["a.png", "c.png", "e.png"]
    assert [b["id"] for b in ds.bad] == ["b.png", "d.png"]
    assert all(set(b) == {"id", "path", "error"} and b["id"] in b["error"] for b in ds.bad)
    assert [i for _, i in (ds[k] for k in range(len(ds)))] == [0, 1, 2]

    # The up-front check stops once `limit` good images are found.
    ds = ImageDataset(tmp_path, 32, skip_bad=True, limit=2)
    assert ds.ids == ["a.png", "c.png"] and [b["id"] for b in ds.bad] == ["b.png"]


def test_skip_bad_in_celeba_layout_keeps_attributes_aligned(toy: Path, tmp_path: Path) -> None:
    root = _copy(toy, tmp_path / "toy")
    (root / "img_align_celeba" / "000002.png").write_bytes(b"broken")
    (root / "img_align_celeba" / "000004.png").unlink()
    ds = ImageDataset(root, 32, skip_bad=True)
    assert [b["id"] for b in ds.bad] == ["000002.png", "000004.png"]
    assert len(ds) == 10 and "000002.png" not in ds.ids
    full = ImageDataset(toy, 32)
    assert full.attributes is not None and ds.attributes is not None
    keep = [i for i in range(12) if i not in (1, 3)]
    assert np.array_equal(ds.attributes, full.attributes[keep])


def test_all_bad_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match=r"no usable images.*1 unreadable"):
        ImageDataset(tmp_path, 32, skip_bad=True)
