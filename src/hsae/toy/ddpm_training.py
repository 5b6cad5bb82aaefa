"""Train the embedded toy DDPM (assets/toy-ddpm) on toyfaces, on the CPU, resumably.

    hsae toy train-ddpm --data data/toyfaces --out src/hsae/assets/toy-ddpm \
        --steps 3500 --prediction-type v_prediction

is the command that made the committed weights: the EMA at the end of a 3500-step cosine schedule
(~100 min on 2 idle cores). Checkpoints (model, EMA, optimizer, RNG, step) go to OUT/checkpoint.pt
atomically every `ckpt_every` steps; the same command resumes from it. The final EMA weights are
saved as a diffusers DDPMPipeline folder (unet/ + scheduler/) with training_args.json,
train_log.jsonl and loss_curve.png.
"""

from __future__ import annotations

import copy
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from hsae.toy.classifier import load_labelled_split
from hsae.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

UNET_CONFIG: dict[str, Any] = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    layers_per_block=1,
    block_out_channels=(32, 64, 128),
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
    norm_num_groups=16,
    attention_head_dim=32,
)
PREDICTION_TYPES = ("epsilon", "v_prediction")
LOG_EVERY = 20  # steps per train_log.jsonl record (its loss is the mean over them)
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "train_log.jsonl"


@dataclass
class ToyDDPMConfig:
    """The recipe. `steps` fixes the lr schedule; `stop_at` ends training earlier within it."""

    steps: int = 3000
    batch: int = 64
    lr: float = 5e-4
    warmup: int = 100
    ema: float = 0.998
    ckpt_every: int = 100
    seed: int = 0
    stop_at: int | None = None
    prediction_type: str = "epsilon"
    block_out_channels: tuple[int, ...] = field(
        default_factory=lambda: tuple(UNET_CONFIG["block_out_channels"])
    )

    def __post_init__(self) -> None:
        if min(self.steps, self.batch, self.ckpt_every) < 1 or self.warmup < 0 or self.lr <= 0:
            raise ValueError(
                f"steps {self.steps}, batch {self.batch}, ckpt_every {self.ckpt_every} and lr "
                f"{self.lr} must be positive and warmup {self.warmup} >= 0"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type {self.prediction_type!r}: expected one of {PREDICTION_TYPES}"
            )

    @property
    def last_step(self) -> int:
        return self.steps if self.stop_at is None else min(self.stop_at, self.steps)


# diffusers' lazily imported classes type-check as attribute-less: the U-Nets and the scheduler
# are held as Any here (as DiffusionBackbone holds its models), not as a Tensor | Module union.
Scheduler = Any


@dataclass
class TrainState:
    """Everything a resume needs: weights, EMA, optimizer, the data/noise RNG and the step."""

    unet: Any  # UNet2DModel
    ema: Any  # its EMA copy
    opt: torch.optim.Optimizer
    gen: torch.Generator
    step: int = 0


def parse_widths(text: str) -> tuple[int, ...]:
    """'64,64,128' -> (64, 64, 128): three levels (32 -> 8 px), each a multiple of the 16 groups."""
    try:
        widths = tuple(int(v) for v in text.split(","))
    except ValueError:
        widths = ()
    groups = UNET_CONFIG["norm_num_groups"]
    if len(widths) != 3 or any(w <= 0 or w % groups for w in widths):
        raise ValueError(
            f"--block-out-channels {text!r}: expected three comma-separated positive multiples "
            f"of {groups} (one per level, 32 -> 16 -> 8 px), e.g. 32,64,128"
        )
    return widths


def build_scheduler(prediction_type: str) -> Scheduler:
    return DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type
    )


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then a half cosine down to 0.1 * peak.

    diffusers' get_cosine_schedule_with_warmup decays to 0 and warms up from step/warmup instead
    of (step + 1)/warmup; the committed weights were trained on this schedule, so it stays."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(total - warmup, 1)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def ema_decay(step: int, ceiling: float) -> float:
    """EMA decay after optimizer step `step` (0-based): (1 + step) / (10 + step), capped.

    diffusers' EMAModel uses the same warm-up but a decay of 0 at its first step (the EMA starts
    as a copy of the once-trained model, not 0.1 * init + 0.9 * model) and its own state_dict
    layout; keeping this update keeps the committed weights' recipe and checkpoints resumable."""
    return min(ceiling, (1 + step) / (10 + step))


def new_state(cfg: ToyDDPMConfig) -> TrainState:
    """A freshly initialised U-Net (seeded by cfg.seed), its EMA copy, AdamW and the RNG."""
    torch.manual_seed(cfg.seed)
    unet: Any = UNet2DModel(**{**UNET_CONFIG, "block_out_channels": cfg.block_out_channels})
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    return TrainState(unet, ema, opt, torch.Generator().manual_seed(cfg.seed))


def save_checkpoint(path: Path, state: TrainState) -> None:
    blob = {
        "unet": state.unet.state_dict(),
        "ema": state.ema.state_dict(),
        "opt": state.opt.state_dict(),
        "gen": state.gen.get_state(),
        "step": state.step,
        "block_out_channels": tuple(state.unet.config.block_out_channels),
    }
    buf = io.BytesIO()
    torch.save(blob, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path, state: TrainState) -> None:
    """Restore `state` from `path` in place; a checkpoint of other widths is refused by name."""
    blob = torch.load(path, weights_only=False)
    saved = tuple(blob.get("block_out_channels", UNET_CONFIG["block_out_channels"]))
    widths = tuple(state.unet.config.block_out_channels)
    if saved != widths:
        raise ValueError(
            f"{path} was trained with --block-out-channels {','.join(map(str, saved))}, "
            f"not {','.join(map(str, widths))}: pass the same widths to resume, or another --out"
        )
    state.unet.load_state_dict(blob["unet"])
    state.ema.load_state_dict(blob["ema"])
    state.opt.load_state_dict(blob["opt"])
    state.gen.set_state(blob["gen"])
    state.step = int(blob["step"])


def trim_log(log_path: Path, step: int) -> None:
    """Drop log records after `step`: a fresh run (step 0) must not append to the log of the
    weights it replaces, and a resumed one re-trains the steps logged after its checkpoint.
    A line cut short by a kill mid-append is dropped too."""
    if not log_path.exists():
        return
    lines = log_path.read_text().splitlines()
    kept = [ln for ln in lines if (at := _logged_step(ln)) is not None and at <= step]
    if len(kept) != len(lines):
        atomic_write_text(log_path, "".join(ln + "\n" for ln in kept))


def _logged_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def train_step(
    state: TrainState, images: torch.Tensor, sched: Scheduler, cfg: ToyDDPMConfig
) -> float:
    """One AdamW step on a random batch at random timesteps, then the EMA update; the loss."""
    gen, opt = state.gen, state.opt
    idx = torch.randint(0, len(images), (cfg.batch,), generator=gen)
    x0 = images[idx].float() / 127.5 - 1
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, sched.config.num_train_timesteps, (cfg.batch,), generator=gen)
    xt = sched.add_noise(x0, noise, t)
    for g in opt.param_groups:
        g["lr"] = lr_at(state.step, cfg.steps, cfg.lr, cfg.warmup)
    target = noise if cfg.prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
    loss = (state.unet(xt, t).sample - target).pow(2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(state.unet.parameters(), 1.0)
    opt.step()
    decay = ema_decay(state.step, cfg.ema)
    with torch.no_grad():
        for pe, pm in zip(state.ema.parameters(), state.unet.parameters(), strict=True):
            pe.lerp_(pm, 1 - decay)
    state.step += 1
    return float(loss.item())


def _append_log(log_path: Path, record: dict[str, float]) -> None:
    with open(log_path, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def train_loop(
    state: TrainState, images: torch.Tensor, sched: Scheduler, cfg: ToyDDPMConfig, out: Path
) -> None:
    """Train from state.step to cfg.last_step, logging every LOG_EVERY steps, checkpointing."""
    t0, losses = time.time(), []
    while state.step < cfg.last_step:
        losses.append(train_step(state, images, sched, cfg))
        if state.step % LOG_EVERY == 0:
            rec = {
                "step": state.step,
                "loss": float(np.mean(losses)),
                "lr": state.opt.param_groups[0]["lr"],
                "img_per_s": LOG_EVERY * cfg.batch / (time.time() - t0),
            }
            _append_log(out / LOG_NAME, rec)
            t0, losses = time.time(), []
        if state.step % cfg.ckpt_every == 0 or state.step == cfg.last_step:
            save_checkpoint(out / CHECKPOINT_NAME, state)


def train_toy_ddpm(
    data: Path,
    out: Path,
    cfg: ToyDDPMConfig,
    export_only: bool = False,
    record: dict[str, str] | None = None,
) -> int:
    """Train (or resume) on the train split of `data` and export the EMA pipeline into `out`.

    `export_only` saves the checkpoint's EMA without training further. `record` (the command's
    flags) goes into training_args.json. Returns the exported step."""
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT_NAME
    images = load_labelled_split(data, 0)[0]  # uint8 (N, 3, H, W), partition 0
    state = new_state(cfg)
    sched = build_scheduler(cfg.prediction_type)
    if ckpt_path.exists():
        load_checkpoint(ckpt_path, state)
        print(f"resumed from {ckpt_path} at step {state.step}")
    if not export_only:
        trim_log(out / LOG_NAME, state.step)
    n_params = sum(p.numel() for p in state.unet.parameters())
    print(f"{len(images)} train images, {n_params / 1e6:.2f}M params")
    if not export_only:
        train_loop(state, images, sched, cfg, out)
    export_pipeline(out, state, sched, record or {})
    print(f"saved EMA pipeline to {out}")
    return state.step


def export_pipeline(out: Path, state: TrainState, sched: Scheduler, record: dict[str, str]) -> None:
    pipe: Any = DDPMPipeline(unet=state.ema, scheduler=sched)
    pipe.save_pretrained(out, safe_serialization=True)
    atomic_write_json(out / "training_args.json", {**record, "exported_at_step": state.step})
    if (out / LOG_NAME).exists():  # absent when exporting a checkpoint copied alone
        plot_loss(out / LOG_NAME, out / "loss_curve.png")


def plot_loss(log_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln.strip()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in recs], [r["loss"] for r in recs])
    ax.set(
        xlabel="step",
        ylabel=f"target MSE (mean of {LOG_EVERY} steps)",
        yscale="log",
        title="toy DDPM training",
    )
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
