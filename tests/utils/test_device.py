"""--device / --dtype: one resolver (hsae.utils.device), offered by every model stage."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from hsae.cli import build_parser, main
from hsae.utils.device import autocast_for, resolve_device, resolve_dtype

MODEL_COMMANDS = (
    "extract",
    "train",
    "eval",
    "features",
    "probe",
    "edit",
    "editbench",
    "counterfactual",
    "interpolate",
    "roundtrip",
    "demo",
)


def test_resolve_device_accepts_cpu_and_explains_the_rest() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"--device 'gpu0': expected a torch device"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="unsupported device type 'meta'"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"--device cuda:1: this torch .* no CUDA device"):
            resolve_device("cuda:1")
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="MPS is not available here"):
            resolve_device("mps")


def test_auto_device_is_the_best_one_here() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if expected == "cpu" and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected


def test_resolve_dtype_names_auto_and_errors() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32  # half precision is slower on CPUs
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert resolve_dtype("float16", cpu) == torch.float16
    assert resolve_dtype(torch.float16, cpu) == torch.float16
    with pytest.raises(ValueError, match=r"--dtype 'half': expected one of auto, float32"):
        resolve_dtype("half", cpu)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_every_model_command_takes_device_and_dtype(command: str) -> None:
    sub = _subparsers(build_parser())[command]
    flags = {s for a in sub._actions for s in a.option_strings}
    assert {"--device", "--dtype"} <= flags
    dtype = next(a for a in sub._actions if "--dtype" in a.option_strings)
    assert set(dtype.choices) == {"auto", "float32", "float16", "bfloat16"}


def test_a_bad_device_is_one_line_before_loading(tmp_path: Path, capsys) -> None:
    (tmp_path / "img").mkdir()
    argv = ["roundtrip", "--data", str(tmp_path / "img"), "--device", "tpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--device 'tpu'" in err
    argv = ["extract", "--data", str(tmp_path / "img"), "--out", str(tmp_path / "s")]
    assert main([*argv, "--device", "cuda:7" if not torch.cuda.is_available() else "tpu"]) == 2
    assert "--device" in capsys.readouterr().err


def test_backbone_runs_in_the_cpu_dtypes(make_pixel_backbone) -> None:
    """bfloat16 and float16 run on the CPU (slowly): h stays close to float32's."""
    from hsae.data.extract import h_for_images

    x = torch.rand((2, 3, 32, 32), generator=torch.Generator().manual_seed(0)) * 2 - 1
    ref = h_for_images(make_pixel_backbone(), x, 0.5, 4, "").float()
    for name in ("bfloat16", "float16"):
        bb = make_pixel_backbone().to("cpu", name)
        assert bb.dtype == resolve_dtype(name)
        h = h_for_images(bb, x, 0.5, 4, "")
        assert h.dtype == bb.dtype
        cos = torch.nn.functional.cosine_similarity(h.float().flatten(1), ref.flatten(1))
        assert float(cos.min()) > 0.99, name


def test_autocast_keeps_float32_weights() -> None:
    lin = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with autocast_for("cpu", torch.bfloat16):
        y = lin(x)
    assert y.dtype == torch.bfloat16 and lin.weight.dtype == torch.float32
    with autocast_for("cpu", torch.float32):
        assert lin(x).dtype == torch.float32
