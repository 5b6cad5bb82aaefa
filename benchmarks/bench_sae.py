"""Training throughput of the channel-aware SAE against its own ceiling and its peers, in one run.

    .venv/bin/python benchmarks/bench_sae.py --repeats 5 --steps 10 --json sae_bench.json

With the peers, from a separate venv that has them beside torch (the project's deps stay clean):

    python3 -m venv .venv-peers && .venv-peers/bin/pip install torch==2.13.0 safetensors \
        sae-lens einops scipy scikit-learn pillow tqdm
    .venv-peers/bin/pip install --no-deps overcomplete   # it declares torchvision + timm
    PYTHONPATH=src .venv-peers/bin/python benchmarks/bench_sae.py

Contenders, each a full training step (forward, loss, backward, Adam step) on 8192 tokens of
66 values (K=8: 64 values + 2 ζ context dims) into L=512 latents:

- ``hsae loss``: the project's code path, ``ChannelAwareSAE.loss(h, image_index)`` on h of shape
  (8192 / C, C, 8, 8), then backward and ``torch.optim.Adam.step``.
- ``hsae trainer``: ``hsae.training.loop._train_step`` with the trainer's optimizer (fused
  Adam): the
  above plus what a real run adds per step (lr and λ schedule, finite checks, unit-norm decoder
  projection, dead-latent bookkeeping).
- ``plain torch``: a hand-written loop of the same math, x (8192, 66) -> relu(x W_e + b_e) W_d
  + b_d -> drop the 2 context dims -> per-token summed MSE + λ L1, Adam.
- peers, when importable: overcomplete's ``SAE`` (linear encoder, L2-normalised dictionary,
  ``mse_l1``) and SAELens's ``StandardTrainingSAE`` (``training_forward_pass``), both at 66 -> 512.
  A peer that is not installed is skipped with a note; see above for how to install them in a
  separate venv (overcomplete declares torchvision and timm, which this project never installs, so
  only its torch-only ``overcomplete.sae`` sub-package is loaded, without the package __init__).

Ceilings timed in the same run: the six dense matmuls of one step at exactly this shape (forward
x·W_e and α·W_d, backward two per layer), once with torch.mm and once with oneDNN's linear for the
four (N, ·) products (the kernel hsae's step uses; 10-25% faster than torch.mm at these thin
shapes here) — the shape's ceiling is the faster of the two — and a square fp32 matmul (the CPU's
practical peak).
"Step GFLOP/s" counts those six matmuls (6 · 2·N·d·L FLOPs) per step time; the plain loop and the
peers skip dX (x is a leaf) so it slightly flatters nobody but hsae, whose ζ needs dX.

Repeats are interleaved (A B C ... A B C ...) after a warm-up; min and median tokens/s are
reported. Parameter counts of channel-aware vs flat SAEs come from the real classes (the flat
SD 2.1 one on the meta device, checked against the closed-form count).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import platform
import shlex
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hsae.sae import build_sae, make_config
from hsae.sae.channel_aware import ZETA_HIDDEN

Step = Callable[[], None]
ONEDNN_CEILING = "6 matmuls, oneDNN linear"


# ----- contenders -----------------------------------------------------------------------------
def hsae_loss_step(c: int, k: int, n_img: int, latents: int, l1: float, lr: float) -> Step:
    """ChannelAwareSAE.loss + backward + Adam, the project's own path."""
    torch.manual_seed(0)
    cfg = make_config("channel_aware", c, k, n_latents=latents, l1_coeff=l1, n_train_images=n_img)
    sae = build_sae(cfg)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    h = torch.randn(n_img, c, k, k)
    idx = torch.arange(n_img)

    def step() -> None:
        out = sae.loss(h, idx)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    return step


def hsae_trainer_step(c: int, k: int, n_img: int, latents: int, l1: float, lr: float) -> Step:
    """hsae.training.loop._train_step: what one step of `hsae train` costs, minus data loading."""
    from hsae.training.loop import (
        DeadLatents,
        TrainConfig,
        TrainerState,
        _Run,
        _train_step,
        make_optimizer,
    )

    torch.manual_seed(0)
    cfg = make_config("channel_aware", c, k, n_latents=latents, l1_coeff=l1, n_train_images=n_img)
    sae = build_sae(cfg)
    tcfg = TrainConfig(steps=10**9, batch_images=n_img, lr=lr, warmup_steps=0)
    opt = make_optimizer(sae, lr)  # the trainer's own (fused) Adam
    run = _Run(sae, tcfg, Path("."), None, opt, DeadLatents(sae), TrainerState(), l1)  # type: ignore[arg-type]
    h = torch.randn(n_img, c, k, k)
    idx = torch.arange(n_img)

    def step() -> None:
        _train_step(run, h, idx)
        run.state.step += 1

    return step


def plain_step(n: int, d_in: int, n_ctx: int, latents: int, l1: float, lr: float) -> Step:
    """The same math written by hand on a (N, d_in + n_ctx) token matrix."""
    torch.manual_seed(0)
    d = d_in + n_ctx
    w_e = torch.nn.Parameter(torch.randn(d, latents) / d**0.5)
    b_e = torch.nn.Parameter(torch.zeros(latents))
    w_d = torch.nn.Parameter(torch.randn(latents, d) / latents**0.5)
    b_d = torch.nn.Parameter(torch.zeros(d))
    opt = torch.optim.Adam([w_e, b_e, w_d, b_d], lr=lr)
    x = torch.randn(n, d)
    target = x[:, :d_in]

    def step() -> None:
        a = torch.relu(x @ w_e + b_e)
        x_hat = (a @ w_d + b_d)[:, :d_in]
        loss = ((x_hat - target).pow(2).sum() + l1 * a.abs().sum()) / n
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def import_overcomplete_sae() -> types.ModuleType:
    """overcomplete.sae without running overcomplete/__init__.py (it imports timm/torchvision)."""
    try:
        return importlib.import_module("overcomplete.sae")
    except ImportError:
        pass
    spec = importlib.util.find_spec("overcomplete")  # finds the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("overcomplete is not installed")
    for name in [m for m in sys.modules if m == "overcomplete" or m.startswith("overcomplete.")]:
        del sys.modules[name]  # drop a half-imported package from the failed attempt
    pkg = types.ModuleType("overcomplete")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    sys.modules["overcomplete"] = pkg
    return importlib.import_module("overcomplete.sae")


def overcomplete_step(n: int, d_in: int, n_ctx: int, latents: int, l1: float, lr: float) -> Step:
    oc = import_overcomplete_sae()
    torch.manual_seed(0)
    d = d_in + n_ctx
    sae = oc.SAE(d, latents, encoder_module="linear")
    sae.train()
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    x = torch.randn(n, d)
    target = x[:, :d_in]

    def step() -> None:
        pre, codes, x_hat = sae(x)
        loss = oc.mse_l1(target, x_hat[:, :d_in], pre, codes, sae.get_dictionary(), penalty=l1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def saelens_step(n: int, d_in: int, n_ctx: int, latents: int, l1: float, lr: float) -> Step:
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    torch.manual_seed(0)
    d = d_in + n_ctx
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d, d_sae=latents, l1_coefficient=l1))
    sae.train()
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    x = torch.randn(n, d)
    counter = iter(range(10**12))

    def step() -> None:
        inp = TrainStepInput(
            sae_in=x,
            coefficients={"l1": l1},
            dead_neuron_mask=None,
            n_training_steps=next(counter),
            is_logging_step=False,
        )
        out = sae.training_forward_pass(inp)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return step


PEERS: dict[str, tuple[str, Callable[..., Step]]] = {
    "overcomplete SAE": ("overcomplete", overcomplete_step),
    "SAELens Standard": ("sae_lens", saelens_step),
}


def peer_version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    dist = {"sae_lens": "sae-lens"}.get(module, module)
    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


# ----- ceilings -------------------------------------------------------------------------------
def step_operands(n: int, d: int, latents: int) -> tuple[torch.Tensor, ...]:
    """x, dy (N, d); a, dz (N, L); W_e (d, L); W_d (L, d): the operands of the six matmuls."""
    g = torch.Generator().manual_seed(0)
    x, dy = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    a, dz = torch.randn(n, latents, generator=g), torch.randn(n, latents, generator=g)
    return x, dy, a, dz, torch.randn(d, latents, generator=g), torch.randn(latents, d, generator=g)


def six_matmuls(n: int, d: int, latents: int) -> Step:
    """The dense matmuls of one step at this shape, into preallocated outputs."""
    x, dy, a, dz, w_e, w_d = step_operands(n, d, latents)
    z_out, y_out = torch.empty(n, latents), torch.empty(n, d)
    da_out, dwd_out = torch.empty(n, latents), torch.empty(latents, d)
    dwe_out, dx_out = torch.empty(d, latents), torch.empty(n, d)

    def step() -> None:
        torch.mm(x, w_e, out=z_out)  # forward encoder
        torch.mm(a, w_d, out=y_out)  # forward decoder
        torch.mm(dy, w_d.T, out=da_out)  # backward decoder: dα
        torch.mm(a.T, dy, out=dwd_out)  # backward decoder: dW_d
        torch.mm(x.T, dz, out=dwe_out)  # backward encoder: dW_e
        torch.mm(dz, w_e.T, out=dx_out)  # backward encoder: dx

    return step


def six_matmuls_onednn(n: int, d: int, latents: int) -> Step:
    """The same six products, each with the faster kernel measured here: oneDNN's linear for the
    four (N, ·) outputs (what hsae's step uses), torch.mm for the two weight gradients."""
    from hsae.sae.channel_aware import _ONEDNN_LINEAR

    if not _ONEDNN_LINEAR:
        raise RuntimeError("oneDNN linear (torch.ops.mkldnn._linear_pointwise) is unavailable")
    lin = torch.ops.mkldnn._linear_pointwise
    x, dy, a, dz, w_e, w_d = step_operands(n, d, latents)
    w_e_t, w_d_t = w_e.t().contiguous(), w_d.t().contiguous()  # linear takes W as (out, in)
    dwd_out, dwe_out = torch.empty(latents, d), torch.empty(d, latents)

    def step() -> None:
        lin(x, w_e_t, None, "none", [], "")  # forward encoder
        lin(a, w_d_t, None, "none", [], "")  # forward decoder
        lin(dy, w_d, None, "none", [], "")  # backward decoder: dα
        torch.mm(a.T, dy, out=dwd_out)  # backward decoder: dW_d
        torch.mm(x.T, dz, out=dwe_out)  # backward encoder: dW_e
        lin(dz, w_e, None, "none", [], "")  # backward encoder: dx

    return step


def square_matmul(size: int) -> Step:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)
    out = torch.empty(size, size)

    def step() -> None:
        torch.mm(a, b, out=out)

    return step


# ----- parameter counts ---------------------------------------------------------------------
def closed_form_params(arch: str, c: int, k: int, latents: int) -> int:
    if arch == "flat":
        d = c * k * k
        return 2 * d * latents + latents + d
    d = k * k + 2  # channel tokens + ζ context dims
    zeta = 2 * ZETA_HIDDEN + ZETA_HIDDEN + ZETA_HIDDEN * 2 + 2
    return 2 * d * latents + latents + d + zeta


def real_params(arch: str, c: int, k: int, latents: int, meta: bool) -> int:
    kw: dict[str, Any] = {"n_latents": latents}
    if arch == "channel_aware":
        kw["n_train_images"] = 2
    cfg = make_config(arch, c, k, **kw)
    if meta:
        with torch.device("meta"):
            sae = build_sae(cfg)
    else:
        sae = build_sae(cfg)
    return sum(p.numel() for p in sae.parameters())


def param_table(latents: int) -> list[dict[str, Any]]:
    rows = []
    for label, c, k in (("SD 2.1 (1280x8x8)", 1280, 8), ("toy (128x8x8)", 128, 8)):
        for arch in ("channel_aware", "flat"):
            meta = arch == "flat" and c * k * k * latents > 10**7
            n = real_params(arch, c, k, latents, meta)
            formula = closed_form_params(arch, c, k, latents)
            if n != formula:
                raise AssertionError(f"{arch} {label}: instance has {n} params, formula {formula}")
            rows.append(
                {
                    "shape": label,
                    "architecture": arch,
                    "latents": latents,
                    "params": n,
                    "fp32_MB": n * 4 / 1e6,
                    "built_on": "meta" if meta else "cpu",
                }
            )
    return rows


# ----- timing -------------------------------------------------------------------------------
def time_once(fn: Step, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def interleaved(
    contenders: dict[str, Step], steps: dict[str, int], repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each contender, repeats interleaved A B C A B C ... after a warm-up."""
    for name, fn in contenders.items():
        time_once(fn, warmup if steps[name] > 1 else 1)
    out: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            out[name].append(time_once(fn, steps[name]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tokens", type=int, default=8192, help="tokens per training step")
    p.add_argument("--channels", type=int, default=128, help="C of h (tokens / C images)")
    p.add_argument("--spatial", type=int, default=8, help="K of h (token = K*K + 2 values)")
    p.add_argument("--latents", type=int, default=512)
    p.add_argument("--l1", type=float, default=1e-3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--steps", type=int, default=10, help="training steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per contender first")
    p.add_argument("--square", type=int, default=2048, help="size of the square peak matmul")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--no-peers", action="store_true", help="skip overcomplete and SAELens")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args()
    if a.tokens % a.channels:
        raise SystemExit(f"--tokens {a.tokens} must be a multiple of --channels {a.channels}")
    torch.set_num_threads(a.threads)
    n, n_img, d_in, n_ctx = a.tokens, a.tokens // a.channels, a.spatial**2, 2
    d = d_in + n_ctx
    args = (n_img, a.latents, a.l1, a.lr)
    flat_args = (n, d_in, n_ctx, a.latents, a.l1, a.lr)

    train: dict[str, Step] = {
        "hsae loss": hsae_loss_step(a.channels, a.spatial, *args),
        "hsae trainer": hsae_trainer_step(a.channels, a.spatial, *args),
        "plain torch": plain_step(*flat_args),
    }
    notes: list[str] = []
    versions: dict[str, str] = {}
    for label, (module, build) in PEERS.items():
        if a.no_peers:
            notes.append(f"{label}: skipped (--no-peers)")
            continue
        try:
            train[label] = build(*flat_args)
            versions[label] = peer_version(module)
        except Exception as e:  # ImportError, or an API that changed under us
            notes.append(f"{label}: skipped ({type(e).__name__}: {e})".splitlines()[0][:160])
    ceil: dict[str, Step] = {"6 matmuls @ step shape": six_matmuls(n, d, a.latents)}
    try:
        ceil[ONEDNN_CEILING] = six_matmuls_onednn(n, d, a.latents)
    except RuntimeError as e:
        notes.append(f"{ONEDNN_CEILING}: skipped ({e})")
    ceil[f"square {a.square} matmul"] = square_matmul(a.square)
    contenders = {**train, **ceil}
    steps = {name: a.steps for name in contenders}
    sq_flop = 2 * a.square**3
    steps[f"square {a.square} matmul"] = max(
        1, round(a.steps * 6 * 2 * n * d * a.latents / sq_flop)
    )

    load = _loadavg()
    t0 = time.perf_counter()
    secs = interleaved(contenders, steps, a.repeats, a.warmup)
    wall = time.perf_counter() - t0

    step_flop = 6 * 2 * n * d * a.latents
    flop = {name: step_flop for name in contenders}
    flop[f"square {a.square} matmul"] = sq_flop
    gflops = {name: flop[name] / min(s) / 1e9 for name, s in secs.items()}
    gflops_med = {name: flop[name] / statistics.median(s) / 1e9 for name, s in secs.items()}
    # The shape's ceiling is the faster way of doing its six matmuls, so a step that uses the
    # better kernel is not credited for the kernel alone.
    shape_ceiling = max(gflops_med[name] for name in ceil if name.startswith("6 matmuls"))
    peak = gflops_med[f"square {a.square} matmul"]
    rows = []
    for name, s in secs.items():
        med = statistics.median(s)
        row: dict[str, Any] = {
            "contender": name,
            "ms_per_call_min": 1e3 * min(s),
            "ms_per_call_median": 1e3 * med,
            "gflops_median": gflops_med[name],
            "gflops_best": gflops[name],
            "frac_of_shape_ceiling": gflops_med[name] / shape_ceiling,
            "frac_of_square_peak": gflops_med[name] / peak,
        }
        if name in train:
            row["tokens_per_s_min"] = n / max(s)
            row["tokens_per_s_median"] = n / med
            row["tokens_per_s_best"] = n / min(s)
        rows.append(row)
    ref = statistics.median(secs["plain torch"])
    for row in rows:
        if row["contender"] in train:
            row["speed_vs_plain"] = ref / statistics.median(secs[row["contender"]])

    params = param_table(a.latents)
    command = shlex.join([sys.executable, *sys.argv])
    print_report(a, command, rows, params, notes, versions, load, wall)
    if a.json:
        result = {
            "command": command,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": a.threads,
            "loadavg_before": load,
            "shape": {
                "tokens": n,
                "images": n_img,
                "channels": a.channels,
                "d": d,
                "latents": a.latents,
            },
            "step_matmul_gflop": step_flop / 1e9,
            "steps": steps,
            "repeats": a.repeats,
            "seconds_per_call": secs,
            "rows": rows,
            "params": params,
            "peer_versions": versions,
            "notes": notes,
            "wall_seconds": wall,
        }
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {a.json}")


def _loadavg() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def print_report(
    a: argparse.Namespace,
    command: str,
    rows: list[dict[str, Any]],
    params: list[dict[str, Any]],
    notes: list[str],
    versions: dict[str, str],
    load: list[float] | None,
    wall: float,
) -> None:
    n, d = a.tokens, a.spatial**2 + 2
    print(f"$ {command}")
    print(
        f"torch {torch.__version__}, {a.threads} threads, load average before {load}; "
        f"step: {n} tokens x {d} -> {a.latents} latents ({n // a.channels} images x "
        f"C={a.channels}), {a.repeats} interleaved repeats of {a.steps} steps, "
        f"timed in {wall:.0f} s"
    )
    head = (
        f"{'contender':<24}{'tok/s min':>11}{'tok/s med':>11}{'ms med':>9}{'GFLOP/s':>9}"
        f"{'/shape':>8}{'/peak':>7}{'vs plain':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        tmin = f"{r['tokens_per_s_min']:>11,.0f}" if "tokens_per_s_min" in r else f"{'':>11}"
        tmed = f"{r['tokens_per_s_median']:>11,.0f}" if "tokens_per_s_median" in r else f"{'':>11}"
        vs = f"{r['speed_vs_plain']:>9.2f}" if "speed_vs_plain" in r else f"{'':>9}"
        name = r["contender"]
        if name in versions:
            name = f"{name} {versions[name]}"
        print(
            f"{name:<24}{tmin}{tmed}{r['ms_per_call_median']:>9.1f}{r['gflops_median']:>9.1f}"
            f"{r['frac_of_shape_ceiling']:>8.2f}{r['frac_of_square_peak']:>7.2f}{vs}"
        )
    print(
        "GFLOP/s of a training step = its six matmuls' FLOPs / step time (medians); /shape = "
        "fraction of the six matmuls timed alone (the faster kernel set), /peak = fraction of "
        "the square matmul; vs plain = median speed relative to the hand-written loop."
    )
    for note in notes:
        print(f"note: {note}")
    print()
    head = f"{'H-space':<20}{'architecture':<15}{'L':>5}{'params':>13}{'fp32 MB':>10}  built on"
    print(head)
    print("-" * len(head))
    for r in params:
        print(
            f"{r['shape']:<20}{r['architecture']:<15}{r['latents']:>5}{r['params']:>13,}"
            f"{r['fp32_MB']:>10.2f}  {r['built_on']}"
        )
    print("(every count equals the closed form 2·d·L + L + d [+ 82 for ζ])")


if __name__ == "__main__":
    main()
