"""`hsae extract --inverse-scheduler`: the solver's h lands in the store, is recorded, and a
resume with another inversion is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hsae.cli import main
from hsae.data.extract import h_for_images
from hsae.data.images import ImageDataset
from hsae.data.store import ActivationStore
from hsae.diffusion.backbone import DiffusionBackbone
from hsae.diffusion.solvers import InverseSolver
from hsae.toy.toyfaces import write_dataset


@pytest.mark.slow
def test_extract_with_a_solver_records_it_and_refuses_another(tmp_path: Path, capsys) -> None:
    write_dataset(tmp_path / "data", 4, seed=0, progress=False)
    base = ["extract", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "acts")]
    base += ["--steps", "10", "--batch", "2", "--shard-size", "2", "--no-progress"]
    solver = ["--inverse-scheduler", "dpm++3m", "--inverse-calls", "4"]
    assert main(base + solver) == 0
    assert "inverted by dpm++3m in 4 U-Net calls" in capsys.readouterr().out
    store = ActivationStore(tmp_path / "acts")
    assert (store.meta["inverse_scheduler"], store.meta["inverse_calls"]) == ("dpm++3m", 4)
    bb = DiffusionBackbone.load("toy")
    ds = ImageDataset(tmp_path / "data", bb.image_size)
    x = torch.stack([ds[i][0] for i in range(4)])
    want = h_for_images(bb, x, 0.7, 10, "", InverseSolver("dpm++3m", 4)).numpy()
    np.testing.assert_allclose(store[:].astype(np.float32), want, rtol=2e-3, atol=2e-3)
    assert main(base) == 2  # the same folder with DDIM inversion: another run
    assert "different meta.inverse_calls" in capsys.readouterr().err
    assert main([*base[:4], str(tmp_path / "other"), *base[5:], "--inverse-calls", "4"]) == 2
    assert "--inverse-calls applies to a solver" in capsys.readouterr().err
