"""hsae.toy.ddpm_training and `hsae toy train-ddpm`: the recipe, the log, checkpoint and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hsae.cli import main
from hsae.toy.ddpm_training import (
    ToyDDPMConfig,
    build_scheduler,
    ema_decay,
    lr_at,
    parse_widths,
    trim_log,
)
from hsae.toy.toyfaces import write_dataset


def _write_log(path: Path, steps: list[int]) -> None:
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in steps))


def test_resume_drops_records_logged_after_the_checkpoint(tmp_path: Path) -> None:
    log = tmp_path / "train_log.jsonl"
    _write_log(log, [20, 40, 60, 80])
    trim_log(log, 40)
    assert [json.loads(ln)["step"] for ln in log.read_text().splitlines()] == [20, 40]


def test_fresh_start_empties_the_old_log(tmp_path: Path) -> None:
    log = tmp_path / "train_log.jsonl"
    _write_log(log, [20, 40])
    trim_log(log, 0)
    assert log.read_text() == ""
    trim_log(tmp_path / "absent.jsonl", 0)
    assert not (tmp_path / "absent.jsonl").exists()


def test_a_log_within_the_checkpoint_is_left_untouched(tmp_path: Path) -> None:
    log = tmp_path / "train_log.jsonl"
    _write_log(log, [20, 40])
    before = log.stat().st_mtime_ns
    trim_log(log, 40)
    assert log.stat().st_mtime_ns == before


def test_a_line_cut_short_by_a_kill_is_dropped(tmp_path: Path) -> None:
    log = tmp_path / "train_log.jsonl"
    _write_log(log, [20, 40])
    with open(log, "a") as f:
        f.write('{"step": 60, "lo')
    trim_log(log, 60)
    assert [json.loads(ln)["step"] for ln in log.read_text().splitlines()] == [20, 40]


def test_lr_warms_up_linearly_then_decays_by_half_cosine_to_a_tenth() -> None:
    assert [lr_at(s, 1000, 1.0, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, 1000, 1.0, 4) == 1.0  # cosine starts at the peak
    assert lr_at(502, 1000, 1.0, 4) == pytest.approx(0.55)  # half way: 0.1 + 0.9 / 2
    assert lr_at(1000, 1000, 1.0, 4) == pytest.approx(0.1)
    assert lr_at(300, 1000, 2.0, 4) == pytest.approx(2 * lr_at(300, 1000, 1.0, 4))


def test_ema_decay_warms_up_from_a_tenth_and_is_capped() -> None:
    assert ema_decay(0, 0.998) == pytest.approx(0.1)
    assert ema_decay(90, 0.998) == pytest.approx(91 / 100)
    assert ema_decay(10**6, 0.998) == 0.998


def test_the_noising_and_v_target_are_the_closed_forms() -> None:
    sched = build_scheduler("v_prediction")
    x0, noise = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t = torch.tensor([0, 500, 999])
    ab = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.equal(sched.add_noise(x0, noise, t), ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    assert torch.equal(sched.get_velocity(x0, noise, t), v)


def test_bad_widths_and_settings_are_named() -> None:
    assert parse_widths("16,32,64") == (16, 32, 64)
    for text in ("16,32", "16,20,32", "a,b,c"):
        with pytest.raises(ValueError, match=f"--block-out-channels '{text}'"):
            parse_widths(text)
    with pytest.raises(ValueError, match="prediction_type 'sample'"):
        ToyDDPMConfig(prediction_type="sample")
    with pytest.raises(ValueError, match="must be positive"):
        ToyDDPMConfig(steps=0)


TINY = ["--steps", "6", "--batch", "2", "--warmup", "2", "--ckpt-every", "2"]
TINY += ["--block-out-channels", "16,16,32", "--prediction-type", "v_prediction"]


def _ema(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "unet" / "diffusion_pytorch_model.safetensors")


@pytest.mark.slow
def test_a_stopped_and_resumed_run_exports_the_weights_of_one_straight_run(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "faces", n=10, seed=0, progress=False)
    base = ["toy", "train-ddpm", "--data", str(data), *TINY]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main([*base, "--out", str(straight)]) == 0
    assert main([*base, "--out", str(resumed), "--stop-at", "3"]) == 0
    assert json.loads((resumed / "training_args.json").read_text())["exported_at_step"] == 3
    early = _ema(resumed)
    assert main([*base, "--out", str(resumed)]) == 0  # resumes from the step-3 checkpoint
    a, b = _ema(straight), _ema(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], early[k]) for k in a)
    args = json.loads((straight / "training_args.json").read_text())
    assert args["block_out_channels"] == "16,16,32" and args["exported_at_step"] == 6
    assert "command" not in args and args["prediction_type"] == "v_prediction"
    cfg = json.loads((straight / "scheduler" / "scheduler_config.json").read_text())
    assert (cfg["prediction_type"], cfg["beta_schedule"]) == ("v_prediction", "squaredcos_cap_v2")


def test_a_checkpoint_of_other_widths_is_refused(tmp_path: Path, capsys) -> None:
    data = write_dataset(tmp_path / "faces", n=10, seed=0, progress=False)
    out = tmp_path / "run"
    base = ["toy", "train-ddpm", "--data", str(data), "--out", str(out), *TINY]
    assert main([*base, "--stop-at", "1"]) == 0
    capsys.readouterr()
    assert main([*base[:-4], "--block-out-channels", "16,32,32"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt was trained with --block-out-channels 16,16,32, not 16,32,32" in err


def test_bad_widths_end_the_command_with_one_line(tmp_path: Path, capsys) -> None:
    argv = ["toy", "train-ddpm", "--out", str(tmp_path / "x"), "--block-out-channels", "8,8,8"]
    assert main(argv) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "x").exists()
