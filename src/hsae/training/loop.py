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

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from hsae.training.distributed import Parallel

from hsae.sae import WEIGHTS_FILE, BaseSAE
from hsae.sae.base import read_config
from hsae.training.batches import StoreBatches, init_sae, row_timesteps, sample_images
from hsae.training.checkpoint import (
    _rng_state,
    _set_rng_state,
    checkpoint_dir,
    read_trainer_state,
    save_checkpoint,
)
from hsae.training.config import (
    CHECKPOINT,
    RESUMABLE_CHANGES,
    STATE_FILE,
    STATE_FORMAT,
    STATE_VERSION,
    StoreLike,
    TrainConfig,
    TrainingDivergedError,
)
from hsae.training.plots import _write_log, plot_curves
from hsae.utils.device import autocast_for
from hsae.utils.io import atomic_write_json
from hsae.utils.lock import FolderLock
from hsae.utils.splits import split_rows

# ----- data ---------------------------------------------------------------------------------------


# ----- initialisation -----------------------------------------------------------------------------


# ----- checkpoints --------------------------------------------------------------------------------


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
    parallel: Parallel | None = None  # data-parallel ranks (training.distributed)
    compute_dtype: torch.dtype = torch.float32  # autocast precision; weights stay float32


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
    if run.parallel is not None:  # this rank's share of the global batch
        h, idx = run.parallel.local(h), run.parallel.local(idx)
    h = h.to(sae.b_dec.device) / run.state.input_scale
    idx = idx.to(sae.b_dec.device)
    saved_l1, sae.cfg.l1_coeff = sae.cfg.l1_coeff, l1_at(cfg, run.l1_coeff, step)
    try:
        with autocast_for(sae.b_dec.device, run.compute_dtype):
            out = sae.loss(h, idx)
    finally:
        sae.cfg.l1_coeff = saved_l1
    values = {k: float(v.detach()) for k, v in out.items() if v.numel() == 1}
    for key in ("loss", "mse"):
        if key in values and not math.isfinite(values[key]):
            raise _diverged(run, step, f"the {key} ({values[key]})", h)
    run.opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    if run.parallel is not None:
        values = run.parallel.average(sae, values)
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
    compute_dtype: torch.dtype = torch.float32,
    parallel: Parallel | None = None,
) -> dict[str, Any]:
    """Train `sae` on the store's `cfg.split`; return the metrics also written to metrics.json.

    compute_dtype runs the SAE's forward under autocast (its weights and Adam stay float32);
    parallel makes this one rank of a data-parallel run (hsae.training.distributed).

    On return `sae` has the input scale folded in (it consumes raw h) and equals the SAE saved
    in out_dir; out_dir/checkpoint keeps the training-time state for `resume=True`. A second
    process training into the same out_dir meanwhile is refused (hsae.utils.lock).
    """
    out_dir = Path(out_dir)
    with FolderLock(out_dir, "SAE run folder", reentrant=True):
        return _train(sae, store, cfg, out_dir, resume, progress, compute_dtype, parallel)


def _train(
    sae: BaseSAE,
    store: StoreLike,
    cfg: TrainConfig,
    out_dir: Path,
    resume: bool,
    progress: bool,
    compute_dtype: torch.dtype,
    parallel: Parallel | None,
) -> dict[str, Any]:
    indices = split_rows(store, cfg.split)
    _prepare_sae(sae, store, cfg, len(indices))
    context = row_timesteps(store.meta, indices) if sae.cfg.context == "channel+timestep" else None
    batches = StoreBatches(store, indices, cfg.batch_images, cfg.seed, context)
    opt = make_optimizer(sae, cfg.lr)
    dead = DeadLatents(sae)
    run = _Run(sae, cfg, out_dir, batches, opt, dead, TrainerState(), sae.cfg.l1_coeff)
    run.parallel, run.compute_dtype = parallel, compute_dtype
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
    sae.cfg.model_weights = model.get("weights") if isinstance(model, dict) else None
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


# ----- CLI ----------------------------------------------------------------------------------------
