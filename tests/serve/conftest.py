"""A tiny run folder (toyfaces, an activation store from conftest's tiny pixel DDPM, an untrained
channel-aware SAE, a features.json and an editbench.json) and the explorer served from it on
127.0.0.1, in a thread of the test process, stopped when the tests end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="the explorer needs the app extra (pip install -e '.[app]')")
pytest.importorskip("uvicorn", reason="the explorer needs the app extra (pip install -e '.[app]')")

N_IMAGES, STEPS, LATENTS = 40, 4, 24
EFFECT_LATENT = 3  # the latent the fake editbench measured


def _fake_editbench(path: Path) -> None:
    label = "sae latent add (auroc)"
    rows = [{"direction": "add", "target_size": 0.5, "flipped": 0.75, "n": 4},
            {"direction": "remove", "target_size": 0.5, "flipped": 0.25, "n": 4}]  # fmt: skip
    doc = {
        "settings": {"saes": {"sae": "channel_aware"}, "windows": ["all"]},
        "attributes": {"Eyeglasses": {
            "matched": {"add": {"size": 0.5}, "remove": {"size": 0.5}},
            "features": {label: {"unit": "latent", "latent": EFFECT_LATENT, "rule": "add"}},
            "curves": {"all": {label: rows}},
        }},
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def _fake_features(path: Path) -> None:
    comp = {"component": f"5:{EFFECT_LATENT}", "token": 5, "latent": EFFECT_LATENT, "rank": 1}
    doc = {"top_components": [comp], "attributes": {"Smiling": {"best": None}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, pixel_pipeline_dir: Path) -> Path:
    from hsae.cli import main
    from hsae.sae import build_sae, make_config
    from hsae.toy.toyfaces import write_dataset

    run = tmp_path_factory.mktemp("serve-run")
    write_dataset(run / "data", N_IMAGES, seed=1, progress=False)
    argv = ["extract", "--data", str(run / "data"), "--out", str(run / "acts"), "--model",
            str(pixel_pipeline_dir), "--steps", str(STEPS), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    torch.manual_seed(0)
    sae = build_sae(make_config("channel_aware", 16, 8, n_latents=LATENTS, n_train_images=28))
    sae.save(run / "sae")
    _fake_editbench(run / "editbench" / "editbench.json")
    _fake_features(run / "features" / "features.json")
    return run


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-cache")


@pytest.fixture(scope="session")
def explorer(tiny_run: Path, cache_dir: Path):
    from hsae.serve.engine import EngineSettings
    from hsae.serve.explorer import ServeOptions, open_explorer

    settings = EngineSettings(max_upload_bytes=64 << 10, max_strength=20.0, pca_components=4)
    opts = ServeOptions(run=tiny_run, cache_dir=cache_dir, engine=settings)
    ex = open_explorer(opts)
    yield ex
    ex.close()


@pytest.fixture(scope="session")
def server(explorer):
    from hsae.serve.app import create_app
    from hsae.serve.server import LOOPBACK_NAMES, start_in_thread

    running = start_in_thread(create_app(explorer, list(LOOPBACK_NAMES)), "127.0.0.1", 0)
    yield running
    running.stop()


def screenshot_path() -> Path | None:
    value = os.environ.get("HSAE_SERVE_SCREENSHOT")
    return Path(value) if value else None
