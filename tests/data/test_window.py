"""Window stores (h at every resumed step) and the SAE trained on them with the timestep in ζ."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from hsae.cli import main
from hsae.data.store import ActivationStore
from hsae.diffusion.backbone import DiffusionBackbone
from hsae.diffusion.hspace import hspace_hook
from hsae.diffusion.invert import invert, resume
from hsae.sae import load_sae
from hsae.training.batches import row_timesteps

N_IMAGES = 12
RUN = ["--steps", "10", "--batch", "4", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(pixel_pipeline_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny pixel DDPM (H-space 16x8x8), 12 toyfaces, their window store and h_t store."""
    root = tmp_path_factory.mktemp("window")
    assert main(["data", "toyfaces", "--n", str(N_IMAGES), "--out", str(root / "data")]) == 0
    paths = ["--data", str(root / "data"), "--model", str(pixel_pipeline_dir)]
    args = ["extract", *paths, *RUN, "--out", str(root / "window"), "--capture", "window"]
    assert main([*args, "--shard-size", "10"]) == 0
    assert main(["extract", *paths, *RUN, "--out", str(root / "first")]) == 0
    return {"root": root, "model": pixel_pipeline_dir, "data": root / "data"}


def test_window_store_rows_are_every_resumed_step(tiny: dict[str, Path]) -> None:
    window = ActivationStore(tiny["root"] / "window")
    first = ActivationStore(tiny["root"] / "first")
    steps = window.meta["window"]["timesteps"]
    assert steps == [700, 600, 500, 400, 300, 200, 100, 0]
    s = len(steps)
    assert len(window) == N_IMAGES * s and window.ids[: s + 1] == [
        *(f"000001.png@{i}" for i in range(s)),
        "000002.png@0",
    ]
    # Shards hold whole images (10 rows rounded up to 2 images of 8 steps).
    assert window.manifest["shard_size"] == 16
    # Labels and splits follow the image.
    assert np.array_equal(window.attributes, np.repeat(first.attributes, s, axis=0))
    assert list(window.splits) == [x for x in first.splits for _ in range(s)]
    # Step 0 is the usual h_t; the others are the h the unedited resume sees, step by step.
    h_w = np.asarray(window[np.arange(len(window))], dtype=np.float32).reshape(N_IMAGES, s, -1)
    h_f = np.asarray(first[np.arange(N_IMAGES)], dtype=np.float32).reshape(N_IMAGES, -1)
    assert np.allclose(h_w[:, 0], h_f, atol=2e-3)
    backbone = DiffusionBackbone.load(str(tiny["model"]))
    from hsae.data.images import ImageDataset

    x = torch.stack([ImageDataset(tiny["data"], 32)[i][0] for i in range(2)])
    inv = invert(backbone, backbone.encode(x), 0.7, 10)
    with hspace_hook(backbone.unet, capture=True) as rec:
        resume(backbone, inv.z_t, inv.t_index, inv.grid)
    direct = torch.stack(rec.captured, 1).flatten(2).numpy()
    assert np.allclose(h_w[:2], direct, atol=2e-3)
    assert not np.allclose(h_w[:, 0], h_w[:, 3], atol=1e-2)  # the steps differ


def test_row_timesteps(tiny: dict[str, Path]) -> None:
    window = ActivationStore(tiny["root"] / "window")
    first = ActivationStore(tiny["root"] / "first")
    assert list(row_timesteps(window.meta, np.array([0, 1, 7, 8, 15]))) == [700, 600, 0, 700, 0]
    assert list(row_timesteps(first.meta, np.array([0, 5]))) == [700, 700]


def test_window_sae_with_timestep_context(tiny: dict[str, Path]) -> None:
    out = tiny["root"] / "sae"
    store = ["--store", str(tiny["root"] / "window"), "--out", str(out)]
    flags = ["--architecture", "channel_aware", "--context", "channel+timestep"]
    assert main(["train", *store, *flags, "--steps", "4", "--batch", "8", "--quiet"]) == 0
    sae = load_sae(out)
    assert sae.cfg.context == "channel+timestep" and sae.cfg.timestep == 700
    h = torch.randn(3, 16, 8, 8)
    with torch.no_grad():
        default = sae.encode(h)  # no timestep given: the SAE's own (t = 0.7T)
        at_700 = sae.encode(h, torch.tensor([700, 700, 700]))
        at_100 = sae.encode(h, torch.tensor([100, 100, 100]))
    assert torch.equal(default, at_700)
    ctx = sae.context_inputs(3, torch.tensor([0, 500, 999]), h.flatten(2))
    assert torch.allclose(ctx[:, 0, 1], torch.tensor([0.0, 0.5, 0.999]))
    assert at_100.shape == at_700.shape
    with pytest.raises(ValueError, match="integer tensor"):
        sae.encode(h, torch.tensor([0.5, 0.5, 0.5]))


def test_bad_capture_is_refused(tiny: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    from hsae.data.extract import extract

    with pytest.raises(ValueError, match="--capture must be one of"):
        extract([], None, tiny["root"] / "x", capture="every")  # type: ignore[arg-type]
