"""The toyfaces generator: determinism, label correctness, label statistics, CelebA output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hsae.data.images import ImageDataset, parse_celeba_attributes
from hsae.toy.toyfaces import (
    ATTRIBUTES,
    DEFAULT_PROBS,
    GENERATOR_VERSION,
    ToyFacesConfig,
    attribute_region_mask,
    generate,
    sample_attributes,
    shifted_config,
    split_of,
    write_dataset,
)

LOCAL = (
    "Smiling",
    "Mouth_Slightly_Open",
    "Eyeglasses",
    "Wearing_Hat",
    "Bangs",
    "Beard",
    "Eyes_Closed",
    "Heavy_Eyebrows",
)
INDICES = range(8)


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def _toggle_diff(attr: str, index: int, cfg: ToyFacesConfig | None = None) -> np.ndarray:
    """Per-pixel absolute change (summed over RGB) when `attr` flips on face `index`."""
    on, off = generate(0, index, cfg, **{attr: True}), generate(0, index, cfg, **{attr: False})
    return np.abs(_pixels(on.image) - _pixels(off.image)).sum(-1)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- determinism


def test_same_seed_and_index_give_identical_pixels() -> None:
    a, b = generate(3, 7), generate(3, 7)
    assert a.attributes == b.attributes
    assert np.array_equal(_pixels(a.image), _pixels(b.image))
    assert a.image.size == (32, 32) and a.image.mode == "RGB"
    assert not np.array_equal(_pixels(a.image), _pixels(generate(3, 8).image))
    assert not np.array_equal(_pixels(a.image), _pixels(generate(4, 7).image))


def test_write_dataset_twice_gives_identical_files(tmp_path: Path) -> None:
    first = _files(write_dataset(tmp_path / "a", n=12, seed=5, progress=False))
    second = _files(write_dataset(tmp_path / "b", n=12, seed=5, progress=False))
    assert first == second
    assert len([f for f in first if f.endswith(".png")]) == 12
    again = _files(write_dataset(tmp_path / "a", n=12, seed=5, progress=False))  # resume path
    assert again == first


def test_rewriting_with_another_seed_does_not_keep_stale_images(tmp_path: Path) -> None:
    # Labels follow the new seed, so the images must too (resume only reuses same-seed images).
    write_dataset(tmp_path / "d", n=6, seed=0, progress=False)
    write_dataset(tmp_path / "d", n=6, seed=1, progress=False)
    assert _files(tmp_path / "d") == _files(
        write_dataset(tmp_path / "e", 6, seed=1, progress=False)
    )


def test_rewriting_a_folder_of_an_older_generator_redraws_it(tmp_path: Path) -> None:
    # A folder written before the drawing changed has the same seed and config; only the recorded
    # generator version tells its images apart from what the labels now describe.
    write_dataset(tmp_path / "old", n=4, seed=0, progress=False)
    meta_path = tmp_path / "old" / "toyfaces.json"
    meta = json.loads(meta_path.read_text())
    meta["version"] = GENERATOR_VERSION - 1
    meta_path.write_text(json.dumps(meta))
    stale = tmp_path / "old" / "img_align_celeba" / "000001.png"
    Image.new("RGB", (32, 32)).save(stale)
    write_dataset(tmp_path / "old", n=4, seed=0, progress=False)
    assert np.array_equal(_pixels(Image.open(stale)), _pixels(generate(0, 0).image))
    assert json.loads(meta_path.read_text())["version"] == GENERATOR_VERSION


# ----------------------------------------------------------------------------- labels


@pytest.mark.parametrize("attr", ATTRIBUTES)
def test_toggling_an_attribute_changes_its_pixels_only(attr: str) -> None:
    for i in INDICES:
        sampled = generate(0, i).attributes
        for value in (True, False):
            face = generate(0, i, None, **{attr: value})
            assert face.attributes == {**sampled, attr: value}  # other labels untouched
        diff = _toggle_diff(attr, i)
        assert diff.any(), f"{attr} is invisible on face {i}"
        # Every change lies inside the attribute's region, mapped through this face's nuisance.
        outside = diff[~attribute_region_mask(0, i, attr)].sum() / diff.sum()
        assert outside < 0.02, f"{attr} on face {i}: {outside:.1%} of the change is outside"
        if attr in LOCAL:
            assert (diff > 0).mean() < 0.35, f"{attr} changes too much of face {i}"


def test_background_is_a_global_attribute() -> None:
    changed = [(_toggle_diff("Blue_Background", i) > 0).mean() for i in INDICES]
    assert min(changed) > 0.35 and np.mean(changed) > 0.4


@pytest.mark.parametrize("attr", ["Eyeglasses", "Wearing_Hat", "Bangs", "Eyes_Closed"])
def test_regions_hold_under_nuisance_shift(attr: str) -> None:
    cfg = shifted_config()
    for i in INDICES:
        diff = _toggle_diff(attr, i, cfg)
        assert (
            diff.any() and diff[~attribute_region_mask(0, i, attr, cfg)].sum() < 0.02 * diff.sum()
        )


def test_unknown_toggle_and_bad_config_are_rejected() -> None:
    with pytest.raises(KeyError, match="Smilling"):
        generate(0, 0, Smilling=True)
    with pytest.raises(ValueError, match="size"):
        ToyFacesConfig(size=8)
    with pytest.raises(ValueError, match="unknown toyfaces attributes"):
        ToyFacesConfig(probs={"Moustache": 0.5})
    with pytest.raises(ValueError, match="Smiling"):
        ToyFacesConfig(probs={"Smiling": 1.5})


def test_stroke_widths_scale_with_image_size() -> None:
    # A 64-pixel face box-downsampled to 32 should look like the 32-pixel face; with fixed
    # stroke widths, eyes, brows and mouths came out half as thick at 64.
    big = ToyFacesConfig(size=64)
    gaps = [
        np.abs(
            _pixels(generate(0, i).image)
            - _pixels(generate(0, i, big).image.resize((32, 32), Image.Resampling.BOX))
        ).mean()
        for i in INDICES
    ]
    assert np.mean(gaps) < 2.0


# ----------------------------------------------------------------------------- statistics


def test_attribute_frequencies_match_probabilities() -> None:
    cfg = ToyFacesConfig()
    draws = [sample_attributes(0, i, cfg) for i in range(2000)]
    for attr in ATTRIBUTES:
        freq = np.mean([d[attr] for d in draws])
        assert abs(freq - DEFAULT_PROBS[attr]) < 0.03, f"{attr}: {freq:.3f}"


def test_attributes_are_pairwise_independent() -> None:
    cfg = ToyFacesConfig()
    labels = np.array(
        [[d[a] for a in ATTRIBUTES] for d in (sample_attributes(0, i, cfg) for i in range(4000))],
        dtype=np.float64,
    )
    corr = np.asarray(np.corrcoef(labels, rowvar=False))
    off_diag = np.abs(corr[~np.eye(len(ATTRIBUTES), dtype=bool)])
    assert off_diag.max() < 0.06


# ----------------------------------------------------------------------------- CelebA output


def test_written_files_parse_with_the_loader(tmp_path: Path) -> None:
    n = 20
    root = write_dataset(tmp_path / "toy", n=n, seed=2, progress=False)
    files, names, values = parse_celeba_attributes(root / "list_attr_celeba.txt")
    assert names == list(ATTRIBUTES) and files == [f"{i + 1:06d}.png" for i in range(n)]
    for i in range(n):
        truth = generate(2, i).attributes
        assert values[i].tolist() == [1 if truth[a] else -1 for a in ATTRIBUTES]
    ds = ImageDataset(root, 32)
    assert ds.attributes is not None and np.array_equal(ds.attributes, values)
    assert [r.split for r in ds.records] == [split_of(i, n) for i in range(n)]
    assert len(ImageDataset(root, 32, split="test")) == sum(split_of(i, n) == 2 for i in range(n))
    x, _ = ds[4]
    expected = _pixels(generate(2, 4).image).astype(np.float32) / 127.5 - 1
    assert np.allclose(x.permute(1, 2, 0).numpy(), expected, atol=1e-6)
