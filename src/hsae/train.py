"""Streaming SAE trainer over an activation store: Adam, warm-up, atomic checkpoints, exact resume.

The trainer sees image batches h (B, C, K, K) and their image indices, nothing of U-Nets: the SAE
turns them into tokens. Data are read batch by batch from the store's memory maps (float16 on
disk, float32 here), in an order that is a pure function of (seed, epoch), so the data position
(epoch, offset) saved in a checkpoint is enough to continue exactly where a run stopped.

Layout of `out_dir`::

    checkpoint/          training-time SAE (cfg.json + sae.safetensors, in normalised units)
                         + trainer_state.pt (step, optimizer, data position, RNG, log history)
    cfg.json, sae.safetensors   the final SAE with the input scale folded in (consumes raw h)
    metrics.json, train_log.jsonl, loss_curves.png

A checkpoint is built in a hidden temp folder and swapped in by renames, so a kill at any moment
leaves the previous checkpoint readable (`checkpoint_dir` finishes an interrupted swap).

Image index: with the paper's ζ(channel, image) context, each image is identified by its rank
among the rows of the training split (`image_index_for_rows`), so the indices fill
[0, n_train_images) exactly as the SAE's normalisation i / (n_train_images - 1) assumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from hsae.io_utils import atomic_write_bytes, atomic_write_json, atomic_write_text
from hsae.sae import WEIGHTS_FILE, BaseSAE, build_sae, make_config
from hsae.sae.base import read_config

CHECKPOINT = "checkpoint"
STATE_FILE = "trainer_state.pt"
STATE_FORMAT = "hsae-trainer-state"
STATE_VERSION = 1
B_DEC_INITS = ("mean", "geometric_median", "zeros")
GEOMETRIC_MEDIAN_TOKENS = 16384
# TrainConfig fields a resumed run may change: they do not alter the weights' trajectory.
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "log_every")


class StoreLike(Protocol):
    """The reader API the trainer needs (`hsae.store.ActivationStore` has it)."""

    def __len__(self) -> int: ...
    def __getitem__(self, idx: np.ndarray) -> np.ndarray: ...
    @property
    def shape(self) -> tuple[int, int, int, int]: ...
    @property
    def meta(self) -> dict[str, Any]: ...
    def indices_for_split(self, split: str) -> np.ndarray: ...


class TrainingDivergedError(RuntimeError):
    """A loss, gradient or weight became NaN/inf; the last good checkpoint was left untouched."""


@dataclass
class TrainConfig:
    """Optimisation settings. Tokens per step = batch_images × tokens per image (C for the
    paper's channel tokens, K·K for spatial tokens, 1 for the flat SAE)."""

    steps: int = 2000
    batch_images: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100  # linear lr ramp from lr / warmup_steps to lr
    l1_warmup: int = 0  # linear λ ramp over this many steps (0: full λ from step 1)
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    b_dec_init: str = "geometric_median"
    normalize: bool = True  # train on h / s with s² = mean h², i.e. E‖token‖² = d_in
    unit_norm_decoder: bool = True
    split: str = "train"  # "all" also works; a store without a partition falls back to all
    init_images: int = 256  # images sampled for the input scale and b_dec statistics

    def __post_init__(self) -> None:
        if self.b_dec_init not in B_DEC_INITS:
            raise ValueError(f"b_dec_init must be one of {B_DEC_INITS}, got {self.b_dec_init!r}")
        for name in ("steps", "warmup_steps", "l1_warmup"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_images", "checkpoint_every", "log_every", "init_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")


# ----- data ---------------------------------------------------------------------------------------
def split_indices(store: StoreLike, split: str) -> np.ndarray:
    """Store rows of `split`, ascending; a store without a partition trains on all rows."""
    splits = getattr(store, "splits", None)
    if split == "all" or splits is None or all(s is None for s in splits):
        return np.arange(len(store), dtype=np.int64)
    idx = np.asarray(store.indices_for_split(split), dtype=np.int64)
    if idx.size == 0:
        raise ValueError(f"the activation store has no rows in split {split!r}")
    return idx


def image_index_for_rows(store: StoreLike, rows: np.ndarray, split: str = "train") -> np.ndarray:
    """The image index the SAE was trained with for these store rows (rank within the split)."""
    idx = split_indices(store, split)
    rank = np.searchsorted(idx, rows)
    if np.any(rank >= len(idx)) or np.any(idx[np.minimum(rank, len(idx) - 1)] != rows):
        raise ValueError(f"some rows are not in split {split!r}; use image_index=None for them")
    return rank


class StoreBatches(Iterator[tuple[Tensor, Tensor]]):
    """Endless image batches (h float32 (B, C, K, K), image index (B,)) over `indices`.

    Epoch e visits the rows in a permutation that depends only on (seed, e); a short tail is
    dropped so every step sees the same number of tokens. `state_dict()` is the position.
    """

    def __init__(self, store: StoreLike, indices: np.ndarray, batch_images: int, seed: int):
        if batch_images > len(indices):
            raise ValueError(
                f"batch of {batch_images} images is larger than the {len(indices)} training "
                "images in the store; lower --batch"
            )
        self.store, self.indices, self.batch, self.seed = store, indices, batch_images, seed
        self.epoch, self.offset = 0, 0
        self._order: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        """Positions into `indices` for one epoch (cached: one permutation per epoch)."""
        if self._order is None or self._order[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.indices))
            self._order = (epoch, perm)
        return self._order[1]

    def __next__(self) -> tuple[Tensor, Tensor]:
        if self.offset + self.batch > len(self.indices):
            self.epoch, self.offset = self.epoch + 1, 0
        # Sorted rows read the memory maps front to back; the loss is a mean, order-free.
        pos = np.sort(self.order(self.epoch)[self.offset : self.offset + self.batch])
        self.offset += self.batch
        h = torch.from_numpy(np.asarray(self.store[self.indices[pos]], dtype=np.float32))
        return h, torch.from_numpy(pos.astype(np.int64))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed, "n": len(self)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if (state["seed"], state["n"]) != (self.seed, len(self)):
            raise ValueError(
                f"checkpoint data position is for seed {state['seed']} over {state['n']} "
                f"images, this run has seed {self.seed} over {len(self)}"
            )
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])

    def __len__(self) -> int:
        return len(self.indices)


def sample_images(store: StoreLike, indices: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to n training images (float32), a fixed function of the seed, for init statistics."""
    rng = np.random.default_rng([seed, 0x1A17])
    pick = np.sort(rng.choice(len(indices), size=min(n, len(indices)), replace=False))
    return np.asarray(store[indices[pick]], dtype=np.float32)


# ----- initialisation -----------------------------------------------------------------------------
def geometric_median(x: Tensor, iters: int = 50, tol: float = 1e-7) -> Tensor:
    """Weiszfeld iterations for argmin_y Σ‖x_i − y‖, started at the mean; x (n, d)."""
    x = x.double()
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-12)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        done = (y_new - y).norm() <= tol * max(float(y.norm()), 1.0)
        y = y_new
        if done:
            break
    return y.float()


def input_scale_of(h: np.ndarray) -> float:
    """s = sqrt(mean h²): dividing by s makes E‖token‖² = d_in for every token layout."""
    s = math.sqrt(float(np.mean(np.square(h, dtype=np.float64))))
    if not math.isfinite(s):
        raise ValueError("the activation sample holds NaN/inf values; cannot normalise")
    return s if s > 0 else 1.0


@torch.no_grad()
def init_sae(sae: BaseSAE, sample: np.ndarray, cfg: TrainConfig) -> float:
    """Set b_dec from the (scaled) sample and return the input scale the run trains with."""
    scale = input_scale_of(sample) if cfg.normalize else 1.0
    if cfg.b_dec_init != "zeros":
        h = torch.from_numpy(sample).to(sae.b_dec.device) / scale
        tokens = sae.target_tokens(h).reshape(-1, sae.cfg.d_in)
        if cfg.b_dec_init == "mean":
            stat = tokens.double().mean(0)
        else:  # Weiszfeld holds a few copies of its input: a token sample is plenty
            g = torch.Generator().manual_seed(cfg.seed)
            keep = torch.randperm(len(tokens), generator=g)[:GEOMETRIC_MEDIAN_TOKENS]
            stat = geometric_median(tokens[keep.to(tokens.device)])
        sae.init_decoder_bias(stat)
    if cfg.unit_norm_decoder:
        sae.normalize_decoder()
    return scale


# ----- checkpoints --------------------------------------------------------------------------------
def _replace(src: Path, dst: Path) -> None:
    os.replace(src, dst)  # one seam, so tests can make exactly this rename fail


def checkpoint_dir(out_dir: Path | str) -> Path | None:
    """out_dir/checkpoint, first finishing a swap a kill interrupted; None if there is none."""
    out_dir = Path(out_dir)
    final, old = out_dir / CHECKPOINT, out_dir / f".{CHECKPOINT}.old"
    if not final.is_dir() and old.is_dir():
        _replace(old, final)  # killed between the two renames: the old one is the last good
    shutil.rmtree(old, ignore_errors=True)
    for tmp in out_dir.glob(f".{CHECKPOINT}.*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    return final if (final / STATE_FILE).is_file() else None


def save_checkpoint(out_dir: Path, sae: BaseSAE, state: dict[str, Any]) -> Path:
    """Write SAE + trainer state into a temp folder, then swap it in for out_dir/checkpoint."""
    final, old = out_dir / CHECKPOINT, out_dir / f".{CHECKPOINT}.old"
    tmp = Path(tempfile.mkdtemp(prefix=f".{CHECKPOINT}.", suffix=".tmp", dir=out_dir))
    try:
        sae.save(tmp)
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(tmp / STATE_FILE, buf.getvalue())
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            _replace(final, old)
        _replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.exists() and old.is_dir():
            _replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return final


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    return torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    assert isinstance(keys, np.ndarray)  # the legacy form is (name, keys, pos, has_gauss, gauss)
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    kind, keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(s["python"])


# ----- the training loop --------------------------------------------------------------------------
@dataclass
class TrainerState:
    """What a resumed run needs besides weights, optimizer, data position and RNG."""

    step: int = 0
    input_scale: float = 1.0
    history: list[dict[str, float]] = field(default_factory=list)
    window: dict[str, float] = field(default_factory=dict)  # sums since the last log row
    tokens: int = 0
    elapsed: float = 0.0  # seconds spent reading data and stepping (excludes checkpoints)


class DeadLatents:
    """Steps since each latent last fired on any token; dead = silent for cfg.dead_steps steps.

    TopK SAEs keep this count themselves (`steps_since_fired`, saved with their weights), so it
    is read from there; a loss that reports `fired` (the channel-aware SAE's fused loss) is
    used as is; for the others the codes are caught by a forward hook during `loss`.
    """

    def __init__(self, sae: BaseSAE) -> None:
        self.sae, self.window = sae, sae.cfg.dead_steps
        self.since = torch.zeros(sae.cfg.n_latents, dtype=torch.long)
        self.codes: Tensor | None = None
        self.handle = sae.register_forward_hook(self._catch)

    def _catch(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        self.codes = output[1].detach()  # returns None: a hook's return value would replace output

    def _own(self) -> Tensor | None:
        own = getattr(self.sae, "steps_since_fired", None)
        return own if isinstance(own, Tensor) else None

    @torch.no_grad()
    def update(self, h: Tensor, image_index: Tensor, fired: Tensor | None = None) -> None:
        codes, self.codes = self.codes, None
        if self._own() is not None:
            return
        if fired is None:
            if codes is None:  # an architecture whose loss() bypasses forward()
                codes = self.sae.encode(h, image_index)
            fired = (codes != 0).reshape(-1, self.sae.cfg.n_latents).any(0)
        fired = fired.cpu()
        self.since += 1
        self.since[fired] = 0

    def fraction(self) -> float:
        since = self._own()
        since = self.since if since is None else since
        return float((since >= self.window).float().mean())


def make_optimizer(sae: BaseSAE, lr: float) -> torch.optim.Adam:
    """Adam; its fused kernel (one pass for all parameters, ~4x faster than the per-tensor loop
    on the SAE's small tensors) wherever torch has one."""
    params = list(sae.parameters())
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of (1-based) step: linear warm-up, then constant."""
    return cfg.lr * min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr


def l1_at(cfg: TrainConfig, l1_coeff: float, step: int) -> float:
    return l1_coeff * min(1.0, step / cfg.l1_warmup) if cfg.l1_warmup else l1_coeff


@dataclass
class _Run:
    sae: BaseSAE
    cfg: TrainConfig
    out_dir: Path
    batches: StoreBatches
    opt: torch.optim.Optimizer
    dead: DeadLatents
    state: TrainerState
    l1_coeff: float
    last_checkpoint: str = "none written yet"


def _diverged(run: _Run, step: int, what: str, h: Tensor | None = None) -> TrainingDivergedError:
    bad_data = h is not None and not bool(torch.isfinite(h).all())
    hint = (
        "the input batch itself holds NaN/inf values: check the activation store"
        if bad_data
        else f"lower the learning rate (now {run.cfg.lr:g}) or the L1 coefficient"
    )
    return TrainingDivergedError(
        f"training diverged at step {step}: {what} is not finite; {hint}. "
        f"The last good checkpoint ({run.last_checkpoint}) was left untouched."
    )


def _check_weights(run: _Run, step: int) -> None:
    for name, p in run.sae.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise _diverged(run, step, f"weight {name!r} after the optimizer step")


@torch.no_grad()
def _remove_parallel_grad(sae: BaseSAE) -> None:
    # With unit-norm decoder rows the radial part of a step is undone by renormalising; dropping
    # it keeps Adam's moment estimates about the directions that actually change (as SAELens).
    g, d = sae.W_dec.grad, sae.cfg.d_in
    if g is not None:
        w = sae.W_dec[:, :d]
        g[:, :d] -= (g[:, :d] * w).sum(1, keepdim=True) * w


def _train_step(run: _Run, h: Tensor, idx: Tensor) -> dict[str, float]:
    sae, cfg, step = run.sae, run.cfg, run.state.step + 1
    for group in run.opt.param_groups:
        group["lr"] = lr_at(cfg, step)
    h = h.to(sae.b_dec.device) / run.state.input_scale
    idx = idx.to(sae.b_dec.device)
    saved_l1, sae.cfg.l1_coeff = sae.cfg.l1_coeff, l1_at(cfg, run.l1_coeff, step)
    try:
        out = sae.loss(h, idx)
    finally:
        sae.cfg.l1_coeff = saved_l1
    values = {k: float(v.detach()) for k, v in out.items() if v.numel() == 1}
    for key in ("loss", "mse"):
        if key in values and not math.isfinite(values[key]):
            raise _diverged(run, step, f"the {key} ({values[key]})", h)
    run.opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    grads = [p.grad for p in sae.parameters() if p.grad is not None]
    # One fused norm instead of a check per parameter; its slow path names the culprit.
    if grads and not math.isfinite(float(torch.nn.utils.get_total_norm(grads))):
        for name, p in sae.named_parameters():
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                raise _diverged(run, step, f"the gradient of {name!r}", h)
    if cfg.unit_norm_decoder:
        _remove_parallel_grad(sae)
    run.opt.step()
    if cfg.unit_norm_decoder:
        sae.normalize_decoder()
    run.dead.update(h, idx, out.get("fired"))
    return values


def _log_row(run: _Run) -> dict[str, float]:
    st, window = run.state, run.state.window
    n = window.pop("n")
    row = {"step": st.step, "tokens": st.tokens, "lr": lr_at(run.cfg, st.step)}
    row["l1_coeff"] = l1_at(run.cfg, run.l1_coeff, st.step)
    row.update({k: v / n for k, v in window.items()})
    row["dead_pct"] = 100.0 * run.dead.fraction()
    window.clear()
    st.history.append(row)
    return row


def _state_dict(run: _Run) -> dict[str, Any]:
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "trainer": dataclasses.asdict(run.state),
        "train_config": dataclasses.asdict(run.cfg),
        "optimizer": run.opt.state_dict(),
        "data": run.batches.state_dict(),
        "dead_since": run.dead.since.clone(),
        "rng": _rng_state(),
    }


def _checkpoint(run: _Run) -> None:
    _check_weights(run, run.state.step)
    save_checkpoint(run.out_dir, run.sae, _state_dict(run))
    run.last_checkpoint = f"{run.out_dir / CHECKPOINT}, step {run.state.step}"
    _write_log(run.out_dir, run.state.history)


def _loop(run: _Run, progress: bool) -> None:
    from tqdm.auto import tqdm

    cfg, st = run.cfg, run.state
    bar = tqdm(total=cfg.steps, initial=st.step, disable=not progress, desc="train SAE")
    try:
        while st.step < cfg.steps:
            t0 = time.perf_counter()
            h, idx = next(run.batches)
            values = _train_step(run, h, idx)
            st.elapsed += time.perf_counter() - t0
            st.step += 1
            st.tokens += h.shape[0] * _tokens_per_image(run.sae)
            for k, v in {"n": 1.0, **values}.items():
                st.window[k] = st.window.get(k, 0.0) + v
            if st.step % cfg.log_every == 0 or st.step == cfg.steps:
                row = _log_row(run)
                bar.set_postfix_str(
                    f"loss {row['loss']:.4g} mse {row['mse']:.4g} "
                    f"L0 {row['l0']:.1f} dead {row['dead_pct']:.1f}%"
                )
            if st.step % cfg.checkpoint_every == 0 or st.step == cfg.steps:
                _checkpoint(run)
            bar.update(1)
    finally:
        bar.close()


def _tokens_per_image(sae: BaseSAE) -> int:
    c, k = sae.cfg.n_channels, sae.cfg.spatial
    return (c * k * k) // sae.cfg.d_in


# ----- entry points -------------------------------------------------------------------------------
def train(
    sae: BaseSAE,
    store: StoreLike,
    cfg: TrainConfig,
    out_dir: Path | str,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train `sae` on the store's `cfg.split`; return the metrics also written to metrics.json.

    On return `sae` has the input scale folded in (it consumes raw h) and equals the SAE saved
    in out_dir; out_dir/checkpoint keeps the training-time state for `resume=True`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    indices = split_indices(store, cfg.split)
    _prepare_sae(sae, store, cfg, len(indices))
    batches = StoreBatches(store, indices, cfg.batch_images, cfg.seed)
    opt = make_optimizer(sae, cfg.lr)
    dead = DeadLatents(sae)
    run = _Run(sae, cfg, out_dir, batches, opt, dead, TrainerState(), sae.cfg.l1_coeff)
    ckpt = checkpoint_dir(out_dir)
    try:
        if ckpt is not None and not resume:
            raise FileExistsError(
                f"{out_dir} already holds a training checkpoint; pass resume=True (--resume) to "
                "continue it, or choose another output folder"
            )
        if ckpt is not None:
            _restore(run, ckpt)
        else:
            if resume:
                print(f"no checkpoint in {out_dir}: starting from scratch")
            sample = sample_images(store, indices, cfg.init_images, cfg.seed)
            run.state.input_scale = init_sae(sae, sample, cfg)
        _loop(run, progress)
    finally:
        dead.handle.remove()
    return _finish(run)


def _prepare_sae(sae: BaseSAE, store: StoreLike, cfg: TrainConfig, n_train: int) -> None:
    """Check the SAE fits the store and record where its training data came from."""
    c, k = store.shape[1], store.shape[2]
    if (sae.cfg.n_channels, sae.cfg.spatial) != (c, k):
        raise ValueError(
            f"the SAE expects h of shape ({sae.cfg.n_channels}, {sae.cfg.spatial}, "
            f"{sae.cfg.spatial}), the store holds {tuple(store.shape[1:])}"
        )
    if sae.cfg.context == "channel+image" and sae.cfg.n_train_images != n_train:
        raise ValueError(
            f"SAEConfig.n_train_images is {sae.cfg.n_train_images} but split {cfg.split!r} "
            f"has {n_train} images; the image index is the rank within that split"
        )
    if sae.cfg.input_scale != 1.0:
        raise ValueError("this SAE already has an input scale folded in; train a fresh one")
    meta = store.meta
    model = meta.get("model")
    sae.cfg.model_id = model.get("model_id") if isinstance(model, dict) else model
    sae.cfg.timestep = meta.get("timestep")
    sae.cfg.hook_point = meta.get("hook", sae.cfg.hook_point)
    path = getattr(store, "path", None)
    sae.cfg.store_path = str(Path(path).resolve()) if path is not None else None
    sae.cfg.unit_norm_decoder = cfg.unit_norm_decoder
    sae.train()


def _restore(run: _Run, ckpt: Path) -> None:
    s = read_trainer_state(ckpt)
    if s.get("format") != STATE_FORMAT or s.get("version") != STATE_VERSION:
        raise ValueError(f"{ckpt / STATE_FILE} is not a version {STATE_VERSION} trainer state")
    saved = dataclasses.asdict(TrainConfig(**s["train_config"]))
    now = dataclasses.asdict(run.cfg)
    changed = [k for k in now if k not in RESUMABLE_CHANGES and saved[k] != now[k]]
    saved_sae, now_sae = read_config(ckpt).to_dict(), run.sae.cfg.to_dict()
    changed += [f"sae.{k}" for k in now_sae if k != "store_path" and saved_sae[k] != now_sae[k]]
    if changed:
        raise ValueError(
            f"cannot resume {ckpt}: these settings differ from the checkpoint's: {changed} "
            f"(only {list(RESUMABLE_CHANGES)} may change on resume)"
        )
    run.sae.load_weights(ckpt / WEIGHTS_FILE)
    run.opt.load_state_dict(s["optimizer"])
    run.batches.load_state_dict(s["data"])
    run.dead.since.copy_(s["dead_since"])
    run.state = TrainerState(**s["trainer"])
    run.last_checkpoint = f"{ckpt}, step {run.state.step}"
    _set_rng_state(s["rng"])


def _finish(run: _Run) -> dict[str, Any]:
    sae, st, out = run.sae, run.state, run.out_dir
    sae.eval()
    sae.fold_input_scale(st.input_scale)
    sae.save(out)
    last = st.history[-1] if st.history else {}
    metrics = {
        "steps": st.step,
        "tokens": st.tokens,
        "tokens_per_step": run.cfg.batch_images * _tokens_per_image(sae),
        "tokens_per_s": st.tokens / st.elapsed if st.elapsed > 0 else None,
        "train_seconds": st.elapsed,
        "input_scale": st.input_scale,
        "units": "loss and mse are in training units (h / input_scale)",
        "final": {k: last.get(k) for k in ("loss", "mse", "l0", "l1", "dead_pct")},
        "train_config": dataclasses.asdict(run.cfg),
        "sae_config": sae.cfg.to_dict(),
    }
    atomic_write_json(out / "metrics.json", metrics)
    _write_log(out, st.history)
    if st.history:
        plot_curves(st.history, out / "loss_curves.png")
    return metrics


def _write_log(out: Path, history: list[dict[str, float]]) -> None:
    atomic_write_text(out / "train_log.jsonl", "".join(json.dumps(r) + "\n" for r in history))


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """loss, MSE, L0 and dead % against step, as a PNG (Agg canvas: no display, no pyplot).

    Linear axes and a fixed layout: log-axis mathtext labels and tight_layout cost seconds.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [("loss", "loss"), ("mse", "MSE"), ("l0", "L0 per token"), ("dead_pct", "dead %")]
    fig = Figure(figsize=(13, 3.2))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.16, top=0.9, wspace=0.3)
    steps = [r["step"] for r in history]
    for i, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.plot(steps, [r.get(key, float("nan")) for r in history])
        ax.set_title(title)
        ax.set_xlabel("step")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    atomic_write_bytes(path, buf.getvalue())


# ----- CLI ----------------------------------------------------------------------------------------
# argparse dest -> (config it belongs to, field, default for a fresh run). Defaults live here, not
# in the parser, so a resumed run can tell an explicit flag (checked against the checkpoint) from
# an omitted one (taken from the checkpoint).
CLI_FIELDS: dict[str, tuple[str, str, Any]] = {
    "architecture": ("sae", "architecture", "channel_aware"),
    "latents": ("sae", "n_latents", 512),
    "l1": ("sae", "l1_coeff", 0.1),
    "context": ("sae", "context", None),  # None: the architecture's first (paper: channel+image)
    "k": ("sae", "k", None),
    "batch": ("train", "batch_images", 32),
    "lr": ("train", "lr", 1e-3),
    "warmup": ("train", "warmup_steps", 100),
    "l1_warmup": ("train", "l1_warmup", 0),
    "seed": ("train", "seed", 0),
    "b_dec_init": ("train", "b_dec_init", "geometric_median"),
    "normalize": ("train", "normalize", True),
    "unit_norm_decoder": ("train", "unit_norm_decoder", True),
    "split": ("train", "split", "train"),
    "steps": ("train", "steps", 2000),
    "checkpoint_every": ("train", "checkpoint_every", 500),
    "log_every": ("train", "log_every", 10),
}


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """`hsae train` flags; defaults in CLI_FIELDS (on --resume: from the checkpoint)."""
    d = {k: v[2] for k, v in CLI_FIELDS.items()}
    p.add_argument("--store", type=Path, required=True, help="activation store folder")
    p.add_argument("--out", type=Path, required=True, help="run folder (SAE, checkpoint, logs)")
    p.add_argument(
        "--architecture",
        choices=["channel_aware", "flat", "topk_channel", "spatial_topk", "beta_vae"],
        help=f"SAE architecture (default {d['architecture']})",
    )
    p.add_argument("--latents", type=int, help=f"number of latents L (default {d['latents']})")
    p.add_argument("--l1", type=float, help=f"L1 coefficient λ (default {d['l1']})")
    p.add_argument(
        "--context",
        choices=["channel+image", "channel", "none"],
        help="ζ context of channel tokens (default channel+image, the paper's)",
    )
    p.add_argument("--k", type=int, help="nonzero codes per token (TopK architectures)")
    p.add_argument("--steps", type=int, help=f"total optimizer steps (default {d['steps']})")
    p.add_argument("--batch", type=int, help=f"images per step (default {d['batch']})")
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {d['lr']})")
    p.add_argument("--warmup", type=int, help=f"lr warm-up steps (default {d['warmup']})")
    p.add_argument("--l1-warmup", type=int, help="λ warm-up steps (default 0)")
    p.add_argument("--seed", type=int, help="seed of SAE init and data order (default 0)")
    p.add_argument(
        "--b-dec-init",
        choices=list(B_DEC_INITS),
        help=f"decoder bias init (default {d['b_dec_init']})",
    )
    p.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        help="train on h scaled to E‖token‖² = d_in, folded into the saved SAE (default on)",
    )
    p.add_argument(
        "--unit-norm-decoder",
        action=argparse.BooleanOptionalAction,
        help="keep decoder rows at unit norm during training (default on)",
    )
    p.add_argument(
        "--split",
        choices=["train", "val", "test", "all"],
        help="store split to train on (default train)",
    )
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 500)")
    p.add_argument("--log-every", type=int, help="steps between log rows (default 10)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def train_command(args: argparse.Namespace) -> int:
    from hsae.store import ActivationStore

    store = ActivationStore(args.store)
    ckpt = checkpoint_dir(args.out) if args.resume and Path(args.out).is_dir() else None
    if ckpt is not None:
        sae, tcfg = _configs_from_checkpoint(args, ckpt)
    else:
        sae, tcfg = _fresh_configs(args, store)
    metrics = train(sae, store, tcfg, args.out, resume=args.resume, progress=not args.quiet)
    final = metrics["final"]
    print(
        f"trained {sae.cfg.architecture} SAE ({sae.cfg.n_latents} latents) for {metrics['steps']} "
        f"steps: loss {final['loss']}, mse {final['mse']}, L0 {final['l0']}, "
        f"dead {final['dead_pct']}% -> {args.out}"
    )
    return 0


def _fresh_configs(args: argparse.Namespace, store: StoreLike) -> tuple[BaseSAE, TrainConfig]:
    val = {d: getattr(args, d) for d in CLI_FIELDS}
    val = {d: spec[2] if val[d] is None else val[d] for d, spec in CLI_FIELDS.items()}
    tkw = {f: val[d] for d, (kind, f, _) in CLI_FIELDS.items() if kind == "train"}
    tcfg = TrainConfig(**tkw)
    if val["architecture"] in ("topk_channel", "spatial_topk") and val["k"] is None:
        raise ValueError(f"--architecture {val['architecture']} needs --k (codes per token)")
    skw = {f: val[d] for d, (kind, f, _) in CLI_FIELDS.items() if kind == "sae"}
    skw = {k: v for k, v in skw.items() if v is not None and k != "architecture"}
    _, c, k, _ = store.shape
    n_train = len(split_indices(store, tcfg.split))
    cfg = make_config(val["architecture"], c, k, n_train_images=n_train, **skw)
    torch.manual_seed(tcfg.seed)
    return build_sae(cfg), tcfg


def _configs_from_checkpoint(args: argparse.Namespace, ckpt: Path) -> tuple[BaseSAE, TrainConfig]:
    saved = {"sae": read_config(ckpt).to_dict(), "train": read_trainer_state(ckpt)["train_config"]}
    tkw = dict(saved["train"])
    conflicts = []
    for dest, (kind, f, _) in CLI_FIELDS.items():
        value = getattr(args, dest)
        if value is None or value == saved[kind][f]:
            continue
        if f in RESUMABLE_CHANGES:
            tkw[f] = value
        else:
            conflicts.append(f"--{dest.replace('_', '-')} {value} (checkpoint: {saved[kind][f]})")
    if conflicts:
        raise ValueError(
            f"--resume continues {ckpt} with its own settings; these flags disagree: "
            f"{', '.join(conflicts)}. Drop them, or train into a new --out folder"
        )
    return build_sae(read_config(ckpt)), TrainConfig(**tkw)
