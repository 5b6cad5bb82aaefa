"""Retrain the embedded toy DDPM (assets/toy-ddpm) on toyfaces, on the CPU, resumably.

    python scripts/train_toy_ddpm.py --data data/toyfaces --out src/hsae/assets/toy-ddpm \
        --steps 3500 --prediction-type v_prediction

(the command that made the committed weights: the EMA at the end of a 3500-step cosine schedule,
~100 min on 2 idle cores; `--stop-at N` exports the EMA at step N instead). Checkpoints (model,
EMA, optimizer, RNG, step) go to OUT/checkpoint.pt atomically every --ckpt-every steps; re-running
the same command resumes from it. The final EMA weights are saved as a diffusers DDPMPipeline
folder (unet/ + scheduler/), with train_log.jsonl and loss_curve.png.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from hsae.toy.classifier import load_labelled_split
from hsae.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

UNET_CONFIG = dict(
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


def load_train_images(data: Path) -> torch.Tensor:
    """uint8 (N, 3, H, W) of the train split (partition 0)."""
    return load_labelled_split(data, 0)[0]


def parse_widths(text: str) -> tuple[int, ...]:
    """'64,64,128' -> (64, 64, 128): three levels (32 -> 8 px), each a multiple of the 16 groups."""
    try:
        widths = tuple(int(v) for v in text.split(","))
    except ValueError:
        widths = ()
    groups = UNET_CONFIG["norm_num_groups"]
    if len(widths) != 3 or any(w <= 0 or w % groups for w in widths):
        raise SystemExit(
            f"--block-out-channels {text!r}: expected three comma-separated positive multiples "
            f"of {groups} (one per level, 32 -> 16 -> 8 px), e.g. 32,64,128"
        )
    return widths


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(total - warmup, 1)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def save_checkpoint(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/toyfaces"))
    p.add_argument("--out", type=Path, default=Path("assets/toy-ddpm"))
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument(
        "--stop-at",
        type=int,
        default=None,
        help="stop after this step of the --steps schedule and export the EMA weights then",
    )
    p.add_argument(
        "--export-at-checkpoint",
        action="store_true",
        help="save the checkpoint's EMA weights as the pipeline now, without training further",
    )
    p.add_argument(
        "--prediction-type",
        choices=["epsilon", "v_prediction"],
        default="epsilon",
        help="training target; v_prediction avoids ε's 1/sqrt(ᾱ) blow-up of x0 near t = T",
    )
    p.add_argument(
        "--block-out-channels",
        default=",".join(map(str, UNET_CONFIG["block_out_channels"])),
        help="U-Net widths per level, comma-separated; the last is H-space's C "
        "(default %(default)s)",
    )
    a = p.parse_args()
    widths = parse_widths(a.block_out_channels)
    if a.threads:
        torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = a.out / "checkpoint.pt", a.out / "train_log.jsonl"

    images = load_train_images(a.data)
    torch.manual_seed(a.seed)
    unet = UNet2DModel(**{**UNET_CONFIG, "block_out_channels": widths})
    ema = copy.deepcopy(unet).requires_grad_(False)
    sched = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type=a.prediction_type,
    )
    opt = torch.optim.AdamW(unet.parameters(), lr=a.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(a.seed)
    step = 0
    if ckpt_path.exists():
        st = torch.load(ckpt_path, weights_only=False)
        saved = tuple(st.get("block_out_channels", UNET_CONFIG["block_out_channels"]))
        if saved != widths:
            raise SystemExit(
                f"{ckpt_path} was trained with --block-out-channels {','.join(map(str, saved))}, "
                f"not {a.block_out_channels}: pass the same widths to resume, or another --out"
            )
        unet.load_state_dict(st["unet"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        step = st["step"]
        print(f"resumed from {ckpt_path} at step {step}")
    if not a.export_at_checkpoint:
        trim_log(log_path, step)
    print(
        f"{len(images)} train images, {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M params"
    )

    acp = sched.alphas_cumprod
    t0, losses = time.time(), []
    last = a.steps if a.stop_at is None else min(a.stop_at, a.steps)
    while step < last and not a.export_at_checkpoint:
        idx = torch.randint(0, len(images), (a.batch,), generator=gen)
        x0 = images[idx].float() / 127.5 - 1
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (a.batch,), generator=gen)
        ab = acp[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.steps, a.lr, a.warmup)
        target = (
            noise if a.prediction_type == "epsilon" else ab.sqrt() * noise - (1 - ab).sqrt() * x0
        )
        loss = (unet(xt, t).sample - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(a.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), unet.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        step += 1
        losses.append(loss.item())
        if step % 20 == 0:
            rec = {
                "step": step,
                "loss": float(np.mean(losses)),
                "lr": opt.param_groups[0]["lr"],
                "img_per_s": 20 * a.batch / (time.time() - t0),
            }
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(json.dumps(rec), flush=True)
            t0, losses = time.time(), []
        if step % a.ckpt_every == 0 or step == last:
            save_checkpoint(
                ckpt_path,
                {
                    "unet": unet.state_dict(),
                    "ema": ema.state_dict(),
                    "opt": opt.state_dict(),
                    "gen": gen.get_state(),
                    "step": step,
                    "block_out_channels": widths,
                },
            )
    DDPMPipeline(unet=ema, scheduler=sched).save_pretrained(a.out, safe_serialization=True)
    args = {k: str(v) for k, v in vars(a).items()}
    atomic_write_json(a.out / "training_args.json", {**args, "exported_at_step": step})
    if log_path.exists():  # absent when --export-at-checkpoint reads a checkpoint copied alone
        plot_loss(log_path, a.out / "loss_curve.png")
    print(f"saved EMA pipeline to {a.out}")


def plot_loss(log_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln.strip()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in recs], [r["loss"] for r in recs])
    ax.set(
        xlabel="step",
        ylabel="target MSE (mean of 20 steps)",
        yscale="log",
        title="toy DDPM training",
    )
    fig.tight_layout()
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    main()
