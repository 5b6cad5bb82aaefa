"""Extraction stage on a tiny random U-Net: shapes, agreement with invert+capture_h, kill/resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from hsae.cli import main
from hsae.data.images import ImageDataset
from hsae.data.store import MANIFEST, ActivationStore
from hsae.diffusion.backbone import DiffusionBackbone
from hsae.diffusion.invert import capture_h, invert
from hsae.utils.io import sha256_file

N_IMAGES = 40
# Small shards and batches: the kill test needs several shards to interrupt between.
RUN = ["--steps", "10", "--batch", "4", "--shard-size", "4", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread here and in the subprocess: same kernels (bit-identical rows), and no
    oversubscription of the shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A seeded random pixel DDPM (H-space 16x8x8) and 40 toyfaces, made through the CLI."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    root = tmp_path_factory.mktemp("extract")
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=32,
        block_out_channels=(8, 16, 16),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
        attention_head_dim=8,
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(root / "model")
    assert main(["data", "toyfaces", "--n", str(N_IMAGES), "--out", str(root / "data")]) == 0
    return {"root": root, "model": root / "model", "data": root / "data"}


def extract_args(tiny: dict[str, Path], out: Path, *extra: str) -> list[str]:
    paths = ["--data", str(tiny["data"]), "--model", str(tiny["model"]), "--out", str(out)]
    return ["extract", *paths, *RUN, *extra]


@pytest.fixture(scope="module")
def reference(tiny: dict[str, Path]) -> Path:
    """An uninterrupted run through `hsae extract` (in-process CLI smoke test)."""
    out = tiny["root"] / "reference"
    assert main(extract_args(tiny, out)) == 0
    return out


@pytest.mark.slow
def test_extract_cli_summary_and_shape(
    tiny: dict[str, Path], reference: Path, capsys: pytest.CaptureFixture
) -> None:
    store = ActivationStore(reference)
    assert store.shape == (N_IMAGES, 16, 8, 8) and store.dtype == np.float16
    assert store.ids[:2] == ["000001.png", "000002.png"]
    assert store.attributes is not None and store.attributes.shape == (N_IMAGES, 11)
    assert len(store.indices_for_split("train")) == 32
    assert store.meta["timestep"] == 700 and store.meta["steps"] == 10
    assert store.meta["model"]["unet_class"] == "UNet2DModel"
    assert store.verify() == 10
    # Re-running a complete store rewrites nothing; changing a setting is refused (exit code 2).
    mtimes = [p.stat().st_mtime_ns for p in sorted(reference.glob("shard-*.npy"))]
    capsys.readouterr()
    assert main(extract_args(tiny, reference)) == 0
    printed = capsys.readouterr().out
    assert "(40, 16, 8, 8) float16" in printed and "size on disk" in printed
    assert mtimes == [p.stat().st_mtime_ns for p in sorted(reference.glob("shard-*.npy"))]
    assert main(extract_args(tiny, reference, "--t", "0.5")) == 2
    assert "different meta.t" in capsys.readouterr().err


def test_store_from_other_weights_is_refused(tiny: dict[str, Path], reference: Path) -> None:
    from hsae.data.extract import check_store_model

    backbone = DiffusionBackbone.load(str(tiny["model"]))
    check_store_model(reference, backbone)  # the weights it was made with: accepted
    with torch.no_grad():
        next(backbone.unet.parameters()).add_(0.5)
    config = dict(backbone.scheduler.config)
    retrained = DiffusionBackbone(backbone.unet, config, model_id=backbone.model_id)
    with pytest.raises(ValueError, match=f"{reference}.*delete the run folder"):
        check_store_model(reference, retrained)


def test_stored_h_equals_direct_capture(tiny: dict[str, Path], reference: Path) -> None:
    backbone = DiffusionBackbone.load(str(tiny["model"]))
    ds = ImageDataset(tiny["data"], backbone.image_size)
    x = torch.stack([ds[i][0] for i in range(8)])
    h = capture_h(backbone, invert(backbone, backbone.encode(x), 0.7, 10, ""), "")
    stored = ActivationStore(reference)[:8].astype(np.float32)
    np.testing.assert_allclose(stored, h.numpy(), rtol=2e-3, atol=2e-3)


def test_bad_data_path_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no-such-folder"
    assert main(["extract", "--data", str(missing), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err
    assert not (tmp_path / "s").exists()


def _wait_for_first_shard(
    proc: subprocess.Popen, manifest: Path, log: Path, timeout: float
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if manifest.is_file():
            m = json.loads(manifest.read_text())  # always whole: it is replaced atomically
            if m["shards"]:
                return m
        if proc.poll() is not None:
            err = log.read_text(errors="replace")[-2000:]
            pytest.fail(f"extract exited ({proc.returncode}) before a shard was listed:\n{err}")
        time.sleep(0.01)
    pytest.fail("no shard listed in time")


@pytest.mark.slow
def test_kill_then_resume_is_bit_identical(tiny: dict[str, Path], reference: Path) -> None:
    out = tiny["root"] / "killed"
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {
        **os.environ,
        "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "hsae.cli", *extract_args(tiny, out)]
    log = tiny["root"] / "killed.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            # Generous: the machine may be shared; a finished or crashed process ends the wait.
            _wait_for_first_shard(proc, out / MANIFEST, log, timeout=1800)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    m = json.loads((out / MANIFEST).read_text())
    assert not m["complete"], "extraction finished before the kill: nothing was interrupted"
    assert 1 <= len(m["shards"]) < 10
    for s in m["shards"]:  # only whole, checksummed shards are listed
        assert sha256_file(out / s["file"]) == s["sha256"]
    partial = ActivationStore(out, allow_incomplete=True)
    done = partial.available_indices()
    np.testing.assert_array_equal(partial[done], ActivationStore(reference)[done])
    with pytest.raises(ValueError, match="incomplete"):
        ActivationStore(out)

    assert main(extract_args(tiny, out)) == 0
    resumed, ref = ActivationStore(out), ActivationStore(reference)
    assert resumed.verify() == 10 and resumed.ids == ref.ids
    np.testing.assert_array_equal(resumed[:], ref[:])
    assert not list(out.glob(".*.tmp"))


def test_extract_refuses_an_unusable_device_before_loading(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "s"
    assert main([*extract_args(tiny, out), "--device", "tpu7"]) == 2
    assert "--device 'tpu7': expected a torch device" in capsys.readouterr().err
    assert not out.exists()
