"""Attribute-edit benchmark (`hsae editbench`): does one SAE component edit an attribute, and
what else does the edit change? Judged by the committed attribute classifier.

Per attribute, three edit methods, each with a strength sweep:

- `sae`: the attribute's best component (c, j) on the train split (`hsae.analysis.features`, highest
  |AUROC − 0.5| of eq. 9-thresholded codes) with its sign, scaled by κ (paper eq. 10) through
  `hsae.editing.intervene`. Edits use the unthresholded codes, as Algorithm 2 does:
  thresholding would only
  silence the edit on images where the component is below the image's τ.
- `mean_diff`: the supervised raw-H-space direction d = mean(h | attr) − mean(h | ¬attr) over the
  train split, h → h + s·d (Asyrp / Haas-style baseline, `hsae.editing.directions`).
- `random`: a control, another component of the same SAE code picked at random (seeded) among those
  that fire on the train split with a similar expected edit size (mean activation × decoder norm
  within 2× of the chosen component's, else any firing one), edited with the same κ and sign.

Directions. An edit goes towards *presence* ("add", applied to images the classifier says lack the
attribute) or towards *absence* ("remove", applied to images that have it). For a component of
sign σ (+1 fires with the attribute, −1 anti-correlated) κ moves towards presence when
σ·(κ − 1) > 0: for σ = +1, κ > 1 adds and κ < 1 (0 = ablation, < 0 = reversal) removes; for σ = −1
the other way round. For `mean_diff`, s > 0 adds and s < 0 removes (`--scales` are magnitudes).
Every strength of a sweep is applied to exactly the images of the group it is meant to flip. Note
that κ only rescales a component's activity: where it is 0, no κ changes anything, so a sparse
component that fires mostly *with* the attribute can hardly add it; the benchmark shows this.

Metrics (per method, attribute and direction), against the *unedited resume* of the same images
(the same inversion resumed without an edit), so inversion/reconstruction error is not counted:

- flip rate: of the group's images, the fraction the classifier now judges the other way
  (groups come from the classifier on the unedited resume, not the ground-truth labels, so a flip
  is a change of the classifier's verdict caused by the edit);
- preservation: the fraction of (image, other attribute) pairs whose prediction is unchanged
  (`all_preserved`: images with every other attribute unchanged);
- outside change: mean |Δpixel| (in [0, 1] units) outside the attribute's region
  (`hsae.toy.toyfaces.attribute_region_mask`, which follows each face's nuisance shift; needs the
  toyfaces generator settings, `toyfaces.json`, in --data); inside and whole-image change too;
- H-space size of the edit ‖h̃ − h‖ / ‖h‖ and the neurons it changes (Δ of the paper).

Choosing the strength. The whole sweep runs on validation images (the store's val split, else the
first train images), and per (method, direction) the strength with the highest flip rate among
those keeping preservation ≥ --min-preservation is chosen (ties: the smallest H-space edit); if
none keeps it, the one preserving most. The test images (held out from both the component choice
and this one) are then edited at the chosen strengths only, and those numbers fill the table; the
validation sweep is in editbench.json.

Edited steps. The paper edits h_t at a single step (`--edit-steps 1`, the default). Resumed DDIM
steps re-derive the image from z, which one step's edit moves little, so on the toy model such
edits barely reach the pixels (even a mean-difference step of 150% of ‖h‖ changes pixels by ~1%);
`--edit-steps N` (or `all`) applies the same edit to the h of the first N resumed steps, an
Asyrp-style editing interval, and gives measurable flips.

Mode. `error_preserving` (default) edits h̃ = h + (κ − 1)·α_k·w_k: κ = 1 is the unedited image bit
for bit, so every pixel change is the edit's. `reconstruction` (the paper's) also swaps h for the
SAE's reconstruction, so its SAE rows mix the edit with the SAE's reconstruction error, while the
mean-difference rows do not: the comparison would not be like for like.

Cost: the validation and test images are DDIM-inverted once each and every edit resumes from
those z_t; one batched resume (in --batch chunks) per (attribute, method) and image set, with one κ
per row.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from hsae.analysis.features import (
    CodeScan,
    best_components_per_attribute,
    load_rows_images,
    scan_codes,
)
from hsae.cli.options import add_device_arguments, add_threshold_arguments
from hsae.diffusion.hspace import HEdit
from hsae.editing.directions import direction_hook, mean_difference
from hsae.editing.intervene import (
    MODES,
    Component,
    edit_step_count,
    intervention_hook,
    neurons_changed,
    parse_edit_steps,
)
from hsae.sae.base import BaseSAE
from hsae.sae.selection import resolve_threshold_k
from hsae.utils.jsonable import jsonable
from hsae.utils.metrics import pixel_change
from hsae.utils.splits import optional_split_rows

BENCH_FILE, TABLE_FILE, EXAMPLES_DIR = "editbench.json", "table.md", "examples"
METHODS = ("sae", "mean_diff", "random")
DIRECTIONS = ("add", "remove")
# Codes are O(1) and one component is one K×K map among C·K·K values, so visible edits need large
# κ (the paper shows κ = 750 and 1000); negative κ reverses the component, a stronger removal.
DEFAULT_KAPPAS = (-100.0, -25.0, -5.0, 0.0, 5.0, 25.0, 100.0, 400.0, 1000.0)
DEFAULT_SCALES = (0.5, 1.0, 2.0, 4.0, 8.0)
H_CHECK_TOL = 0.05  # relative error allowed between re-captured h_t and the (float16) store


# ----- configuration and the diffusion runner -----------------------------------------------------
@dataclass
class EditBenchConfig:
    attributes: list[str] | None = None
    n_images: int = 64
    n_val: int = 24
    kappas: tuple[float, ...] = DEFAULT_KAPPAS
    scales: tuple[float, ...] = DEFAULT_SCALES
    mode: str = "error_preserving"
    threshold_k: str | int | None = "auto"
    target_sparsity: float = 0.95
    min_preservation: float = 0.9
    n_candidates: int = 64
    n_examples: int = 4
    batch: int = 64
    seed: int = 0
    progress: bool = True

    def check(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {MODES}, got {self.mode!r}")
        if self.n_images < 1 or self.n_val < 1:
            raise ValueError(f"--n-images and --n-val must be >= 1: {self.n_images}, {self.n_val}")
        if not any(k != 1 for k in self.kappas):
            raise ValueError(f"--kappas needs a value other than 1, got {list(self.kappas)}")
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"--scales must be positive magnitudes, got {list(self.scales)}")
        if not 0 <= self.min_preservation <= 1:
            raise ValueError(f"--min-preservation must be in [0, 1], got {self.min_preservation}")
        if self.batch < 1:
            raise ValueError(f"--batch must be >= 1, got {self.batch}")


class EditRunner(Protocol):
    """Inverts images once and resumes them with an H-space edit (tests use a fake)."""

    def invert(self, x: Tensor) -> tuple[Any, Tensor, Tensor]:
        """(state, unedited resume in [-1, 1], h_t at the edited step) for images x."""
        ...

    def resume(self, state: Any, idx: np.ndarray, edit: HEdit) -> Tensor:
        """Images of rows `idx` of `state` resumed with h_t → edit(h_t)."""
        ...


@dataclass
class Inverted:
    z_t: Tensor
    t_index: int
    grid: Any


@dataclass
class DiffusionRunner:
    """`hsae.diffusion.invert` on a backbone: invert in chunks, resume with `edit_steps` edited
    calls."""

    backbone: Any
    t: float
    steps: int
    prompt: str = ""
    edit_steps: int | str = 1  # or "all": every resumed step from t down to 0
    batch: int = 64
    progress: bool = False

    @torch.no_grad()
    def invert(self, x: Tensor) -> tuple[Inverted, Tensor, Tensor]:
        from hsae.diffusion.invert import invert, resume

        bb = self.backbone
        zs, xs, hs = [], [], []
        inv = None
        chunks = range(0, len(x), self.batch)
        for i in tqdm(chunks, desc="invert", disable=not self.progress, leave=False):
            inv = invert(bb, bb.encode(x[i : i + self.batch]), self.t, self.steps, self.prompt)
            z0, h = resume(bb, inv.z_t, inv.t_index, inv.grid, self.prompt)
            zs.append(inv.z_t)
            xs.append(bb.decode(z0).float().cpu())
            hs.append(h.float().cpu())
        if inv is None:
            raise ValueError("no images to invert")
        state = Inverted(torch.cat(zs), inv.t_index, inv.grid)
        return state, torch.cat(xs), torch.cat(hs)

    @torch.no_grad()
    def resume(self, state: Inverted, idx: np.ndarray, edit: HEdit) -> Tensor:
        from hsae.diffusion.invert import resume

        z_t = state.z_t[torch.as_tensor(idx, dtype=torch.long)]
        n_edit = edit_step_count(self.edit_steps, state.t_index, "--edit-steps")
        z0, _ = resume(self.backbone, z_t, state.t_index, state.grid, self.prompt, edit, n_edit)
        return self.backbone.decode(z0).float().cpu()


# ----- images ---------------------------------------------------------------------------------
@dataclass
class ImageSet:
    """Images inverted once; every edit of the benchmark resumes from `state`."""

    name: str
    rows: np.ndarray
    ids: list[str]
    x: Tensor
    x_clean: Tensor
    h: Tensor
    pred: Tensor  # (B, A) bool: classifier on x_clean
    state: Any
    masks: dict[str, Tensor | None] = field(default_factory=dict)  # attribute → (B, S, S)


def toyfaces_masks(data: Path | None, ids: list[str], attribute: str, size: int) -> Tensor | None:
    """(B, S, S) bool region of `attribute` in each toyface (None if not a toyfaces folder).

    Faces move with their nuisance (position, scale), so the mask is per image, re-derived from the
    generator seed and config in `toyfaces.json` and the image index in its name (000001.png → 0).
    """
    from hsae.toy.toyfaces import ATTRIBUTE_REGIONS, ToyFacesConfig, attribute_region_mask
    from hsae.utils.io import read_json

    if data is None or not (data / "toyfaces.json").is_file() or attribute not in ATTRIBUTE_REGIONS:
        return None
    meta = read_json(data / "toyfaces.json", "toyfaces metadata")
    cfg = ToyFacesConfig(**meta["config"])
    if cfg.size != size:
        return None  # the regions are in the generator's pixels; no resampling guesswork
    try:
        index = [int(Path(i).stem) - 1 for i in ids]
    except ValueError:
        return None
    masks = [attribute_region_mask(int(meta["seed"]), i, attribute, cfg) for i in index]
    return torch.from_numpy(np.stack(masks))


def prepare_images(
    name: str,
    rows: np.ndarray,
    ids: list[str],
    x: Tensor,
    runner: EditRunner,
    classifier: Any,
    masks: Callable[[list[str], str], Tensor | None] | None = None,
    attributes: Sequence[str] = (),
    check_h: Callable[[np.ndarray, Tensor], None] | None = None,
) -> ImageSet:
    """Invert x once, resume it unedited, classify the result, attach the attribute regions."""
    state, x_clean, h = runner.invert(x)
    if check_h is not None:
        check_h(rows, h)
    pred = torch.as_tensor(classifier.predict(x_clean)).bool()
    regions = {a: (masks(ids, a) if masks is not None else None) for a in attributes}
    return ImageSet(name, rows, ids, x, x_clean, h, pred, state, regions)


# ----- edit methods ---------------------------------------------------------------------------
@dataclass
class EditMethod:
    """An edit family: `make_edit(strengths per row)` → h-edit; `direction(s)` is +1 towards
    presence, −1 towards absence, 0 for a no-op strength."""

    name: str
    strengths: list[float]
    direction: Callable[[float], int]
    make_edit: Callable[[Tensor], HEdit]
    info: dict[str, Any]


def sae_method(
    name: str,
    sae: BaseSAE,
    comp: Component,
    sign: int,
    kappas: tuple[float, ...],
    mode: str,
    info: dict[str, Any],
) -> EditMethod:
    def direction(k: float) -> int:
        return int(np.sign(sign * (k - 1.0)))

    def make_edit(k: Tensor) -> HEdit:
        return intervention_hook(sae, [comp], k, mode=mode, threshold_k=None)

    return EditMethod(name, [float(k) for k in kappas if k != 1], direction, make_edit, info)


def direction_method(d: Tensor, scales: tuple[float, ...], info: dict[str, Any]) -> EditMethod:
    strengths = [float(s) for s in scales] + [-float(s) for s in scales]

    def make_edit(s: Tensor) -> HEdit:
        return direction_hook(d, s)

    return EditMethod("mean_diff", strengths, lambda s: int(np.sign(s)), make_edit, info)


def random_component(scan: CodeScan, sae: BaseSAE, chosen: int, seed: int) -> tuple[int, str]:
    """A firing component other than `chosen` whose expected edit size (mean activation × decoder
    norm) is within 2× of the chosen one's; any firing component if none is."""
    norms = sae.decoder_directions.detach().norm(dim=1).double().numpy()
    size = scan.mean * np.tile(norms, scan.n_tokens)
    fires = scan.fire > 0
    fires[chosen] = False
    if not fires.any():
        raise ValueError("no component other than the chosen one fires on the train split")
    band = fires & (size >= size[chosen] / 2) & (size <= size[chosen] * 2)
    pool, how = (band, "size-matched") if band.any() else (fires, "any firing")
    rng = np.random.default_rng([seed, chosen])
    return int(rng.choice(np.flatnonzero(pool))), how


# ----- running a sweep ------------------------------------------------------------------------
def plan_sweep(pred: Tensor, method: EditMethod) -> tuple[np.ndarray, np.ndarray]:
    """(image index, strength) rows: each strength on the images of the group it should flip."""
    has = pred.numpy().astype(bool)
    idx, strength = [], []
    for s in method.strengths:
        d = method.direction(s)
        if d == 0:
            continue
        group = np.flatnonzero(~has if d > 0 else has)
        idx.append(group)
        strength.append(np.full(len(group), s))
    if not idx:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(idx).astype(np.int64), np.concatenate(strength)


def chunk_metrics(
    images: ImageSet,
    rows: np.ndarray,
    x: Tensor,
    pred: Tensor,
    h_edit: Tensor,
    target: int,
    want: Tensor,
    mask: Tensor | None,
) -> dict[str, np.ndarray]:
    """Per-row metrics of one resumed chunk against the unedited resume of the same images."""
    ref, h = images.pred[rows], images.h[rows]
    others = [a for a in range(ref.shape[1]) if a != target]
    same = pred[:, others] == ref[:, others]
    h_norm = h.flatten(1).norm(dim=1).clamp_min(1e-12)
    return {
        "flipped": (pred[:, target] == want).numpy(),
        "preserved": same.double().mean(1).numpy() if others else np.ones(len(rows)),
        "all_preserved": same.all(1).numpy(),
        "h_change": ((h_edit - h).flatten(1).norm(dim=1) / h_norm).double().numpy(),
        "neurons_changed": neurons_changed(h, h_edit).double().numpy(),
        **pixel_change(x, images.x_clean[rows], None if mask is None else mask[rows]),
    }


def run_rows(
    runner: EditRunner,
    images: ImageSet,
    classifier: Any,
    method: EditMethod,
    target: int,
    idx: np.ndarray,
    strengths: np.ndarray,
    batch: int,
    keep: Collection[int] = frozenset(),
) -> tuple[dict[str, np.ndarray], dict[int, Tensor]]:
    """Resume rows (image idx, strength) in chunks; per-row metrics and the kept rows' images."""
    mask = images.masks.get(list(classifier.attribute_names)[target])
    parts: list[dict[str, np.ndarray]] = []
    kept: dict[int, Tensor] = {}
    for start in range(0, len(idx), batch):
        rows, s = idx[start : start + batch], torch.as_tensor(strengths[start : start + batch])
        edit = method.make_edit(s.float())
        x = runner.resume(images.state, rows, edit)
        pred = torch.as_tensor(classifier.predict(x)).bool()
        want = torch.as_tensor([method.direction(float(v)) > 0 for v in s])
        h_edit = edit(images.h[rows].clone())  # the edit at the first edited step, for Δ
        parts.append(chunk_metrics(images, rows, x, pred, h_edit, target, want, mask))
        kept.update({start + i: x[i] for i in range(len(rows)) if start + i in keep})
    if not parts:
        return {}, kept
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, kept


def summarize(metrics: dict[str, np.ndarray], sel: np.ndarray) -> dict[str, Any]:
    """Means over the selected rows; None where nothing was measured."""
    n = int(sel.sum())

    def mean(key: str) -> float | None:
        v = metrics[key][sel] if n else np.zeros(0)
        v = v[np.isfinite(v)]
        return float(v.mean()) if len(v) else None

    return {
        "n": n,
        "flip_rate": mean("flipped") if n else None,
        "preservation": mean("preserved") if n else None,
        "all_preserved": mean("all_preserved") if n else None,
        "change_outside": mean("change_outside") if n else None,
        "change_inside": mean("change_inside") if n else None,
        "change": mean("change") if n else None,
        "h_change": mean("h_change") if n else None,
        "neurons_changed": mean("neurons_changed") if n else None,
    }


def sweep(
    runner: EditRunner,
    images: ImageSet,
    classifier: Any,
    method: EditMethod,
    target: int,
    batch: int,
) -> list[dict[str, Any]]:
    """The whole strength sweep as one batched resume; one summary per strength."""
    idx, strengths = plan_sweep(images.pred[:, target], method)
    metrics, _ = run_rows(runner, images, classifier, method, target, idx, strengths, batch)
    out = []
    for s in method.strengths:
        d = method.direction(s)
        if d == 0:
            continue
        row = {"strength": s, "direction": "add" if d > 0 else "remove"}
        row.update(summarize(metrics, strengths == s) if metrics else summarize({}, np.zeros(0)))
        out.append(row)
    return out


def choose_strength(
    rows: list[dict[str, Any]], direction: str, min_preservation: float
) -> dict[str, Any]:
    """The validation rule: max flip rate among strengths with preservation ≥ the floor (ties:
    smallest H-space edit); if none keeps it, the most preserving. Returns strength + reason."""
    cand = [r for r in rows if r["direction"] == direction]
    if not cand:
        return {"strength": None, "reason": "no strength in this direction"}
    measured = [r for r in cand if r["n"] > 0]
    if not measured:
        mid = sorted(cand, key=lambda r: abs(r["strength"]))[(len(cand) - 1) // 2]
        return {"strength": mid["strength"], "reason": "no validation image in this group: median"}
    ok = [r for r in measured if (r["preservation"] or 0) >= min_preservation]
    if ok:
        best = max(ok, key=lambda r: (r["flip_rate"], -(r["h_change"] or 0)))
        return {"strength": best["strength"], "reason": "max flip with preservation ok"}
    best = max(measured, key=lambda r: (r["preservation"], r["flip_rate"], -(r["h_change"] or 0)))
    return {"strength": best["strength"], "reason": "no strength keeps preservation: most kept"}


def held_out_run(
    runner: EditRunner,
    images: ImageSet,
    classifier: Any,
    method: EditMethod,
    target: int,
    chosen: dict[str, dict[str, Any]],
    batch: int,
    examples: np.ndarray,
) -> tuple[dict[str, dict[str, Any]], dict[int, Tensor]]:
    """Every test image edited once at its group's chosen strength; metrics per direction and
    the edited images of `examples` (image indices)."""
    has = images.pred[:, target].numpy().astype(bool)
    idx, strengths = [], []
    for direction, group in (("add", ~has), ("remove", has)):
        s = chosen[direction]["strength"]
        if s is not None:
            idx.append(np.flatnonzero(group))
            strengths.append(np.full(int(group.sum()), s, dtype=np.float64))
    idx_a = np.concatenate(idx) if idx else np.zeros(0, np.int64)
    s_a = np.concatenate(strengths) if strengths else np.zeros(0)
    wanted = set(examples.tolist())
    keep = {i for i, img in enumerate(idx_a) if img in wanted}
    metrics, kept = run_rows(runner, images, classifier, method, target, idx_a, s_a, batch, keep)
    out = {}
    for direction, group in (("add", ~has), ("remove", has)):
        sel = group[idx_a] if len(idx_a) else np.zeros(0, bool)
        res = summarize(metrics, sel) if metrics else summarize({}, np.zeros(0, bool))
        out[direction] = {"strength": chosen[direction]["strength"], **res}
    return out, {int(idx_a[i]): x for i, x in kept.items()}


# ----- the benchmark --------------------------------------------------------------------------
@dataclass
class BenchInputs:
    """Everything the benchmark reads: the store, the SAE, the classifier, images by store row."""

    store: Any
    sae: BaseSAE
    classifier: Any
    runner: EditRunner
    load_images: Callable[[np.ndarray], Tensor]  # store rows → images in [-1, 1]
    masks: Callable[[list[str], str], Tensor | None] | None = None
    check_h: Callable[[np.ndarray, Tensor], None] | None = None  # (store rows, re-captured h_t)


def benchmark_attributes(inputs: BenchInputs, cfg: EditBenchConfig) -> list[str]:
    """--attributes, or every store attribute the classifier also knows."""
    store_names = list(inputs.store.attribute_names)
    clf_names = list(inputs.classifier.attribute_names)
    if inputs.store.attributes is None or not store_names:
        raise ValueError(f"activation store {inputs.store.path} has no attribute labels")
    names = cfg.attributes or [a for a in store_names if a in clf_names]
    bad = [a for a in names if a not in store_names or a not in clf_names]
    if bad:
        raise ValueError(
            f"attribute(s) {bad} must be labelled in the store ({store_names}) and known to the "
            f"classifier ({clf_names})"
        )
    if not names:
        raise ValueError("the store and the classifier share no attribute")
    return names


def bench_rows(store: Any, cfg: EditBenchConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """(validation rows, test rows, where the validation rows come from)."""
    test = optional_split_rows(store, "test")
    if test is None:
        raise ValueError(
            f"activation store {store.path} has no test split: the benchmark edits held-out images"
        )
    val = optional_split_rows(store, "val")
    source = "val"
    if val is None:
        val, source = optional_split_rows(store, "train"), "train (no val split)"
    return np.asarray(val)[: cfg.n_val], test[: cfg.n_images], source


def run_editbench(inputs: BenchInputs, cfg: EditBenchConfig) -> dict[str, Any]:
    """The benchmark: choose components and directions on train, strengths on val, measure on test.
    Returns the editbench.json document plus, under "_grids", the example image rows."""
    cfg.check()
    store, sae, clf = inputs.store, inputs.sae, inputs.classifier
    names = benchmark_attributes(inputs, cfg)
    val_rows, test_rows, val_source = bench_rows(store, cfg)
    k, k_info = resolve_threshold_k(
        sae, cfg.threshold_k, store, None, cfg.target_sparsity, cfg.seed
    )
    train = optional_split_rows(store, "train")
    if train is None:
        raise ValueError(f"activation store {store.path} has no train split to choose edits on")
    scan = scan_codes(sae, store, train, k, cfg.batch, 1, train, names, progress=cfg.progress)
    best = best_components_per_attribute(
        sae, store, k, names, cfg.n_candidates, cfg.batch, scan, cfg.progress
    )
    sets = {}
    for name, rows in (("val", val_rows), ("test", test_rows)):
        ids = [store.ids[int(r)] for r in rows]
        x = inputs.load_images(rows)
        sets[name] = prepare_images(
            name, rows, ids, x, inputs.runner, clf, inputs.masks, names, inputs.check_h
        )
    clf_names = list(clf.attribute_names)
    results, grids = {}, {}
    pairs = [(a, m) for a in names for m in METHODS]
    bar = tqdm(total=len(pairs), desc="editbench", unit="edit", disable=not cfg.progress)
    for attr in names:
        methods = build_methods(sae, store, scan, best[attr], attr, cfg)
        res, grid = bench_attribute(inputs, sets, methods, clf_names.index(attr), cfg, bar)
        res["components"] = {m.name: m.info for m in methods.values()}
        res["sae_selection"] = {key: v for key, v in best[attr].items() if key != "best"}
        res["classifier_clean_accuracy"] = _clean_accuracy(store, sets["test"], attr, clf_names)
        results[attr], grids[attr] = res, grid
    bar.close()
    settings = _settings(cfg, k_info, val_source, sets, inputs)
    return {
        "command": shlex.join(sys.argv),
        "settings": settings,
        "attributes": results,
        "summary": summarize_methods(results),
        "_grids": grids,
    }


def build_methods(
    sae: BaseSAE, store: Any, scan: CodeScan, best: dict, attr: str, cfg: EditBenchConfig
) -> dict[str, EditMethod]:
    """The three methods for one attribute (a method is skipped when it cannot be built)."""
    methods: dict[str, EditMethod] = {}
    b = best.get("best")
    if b is not None:
        comp = Component(b["token"], b["latent"])
        methods["sae"] = sae_method("sae", sae, comp, b["sign"], cfg.kappas, cfg.mode, dict(b))
        flat, how = random_component(scan, sae, b["flat_index"], cfg.seed)
        tok, lat = scan.component(flat)
        info = {
            "component": f"{tok}:{lat}",
            "token": tok,
            "latent": lat,
            "flat_index": flat,
            "sign": b["sign"],
            "picked": how,
            "freq_train": float(scan.freq[flat]),
            "mean_train": float(scan.mean[flat]),
        }
        methods["random"] = sae_method(
            "random", sae, Component(tok, lat), b["sign"], cfg.kappas, cfg.mode, info
        )
    try:
        d = mean_difference(store, attr, "train", batch=cfg.batch)
    except ValueError as e:  # attribute absent (or always present) in train: no direction
        d = None
        reason = str(e)
    if d is not None:
        methods["mean_diff"] = direction_method(d, cfg.scales, {"norm": float(d.norm())})
    elif b is None:
        raise ValueError(f"attribute {attr!r}: no SAE component and no direction ({reason})")
    return {m: methods[m] for m in METHODS if m in methods}


def bench_attribute(
    inputs: BenchInputs,
    sets: dict[str, ImageSet],
    methods: dict[str, EditMethod],
    target: int,
    cfg: EditBenchConfig,
    bar: Any,
) -> tuple[dict[str, Any], list[Tensor]]:
    """Val sweep → chosen strengths → test run, per method; plus the example grid rows."""
    test = sets["test"]
    has = test.pred[:, target].numpy().astype(bool)
    ex = np.concatenate(
        [np.flatnonzero(~has)[: cfg.n_examples], np.flatnonzero(has)[: cfg.n_examples]]
    )
    grid = [test.x[ex], test.x_clean[ex]]
    res: dict[str, Any] = {
        "n_test_without": int((~has).sum()),
        "n_test_with": int(has.sum()),
        "example_ids": [test.ids[i] for i in ex],
        "val_sweep": {},
        "chosen": {},
        "test": {},
    }
    for name in METHODS:
        method = methods.get(name)
        if method is None:
            grid.append(torch.zeros_like(test.x[ex]))  # grey row: method unavailable
            bar.update(1)
            continue
        rows = sweep(inputs.runner, sets["val"], inputs.classifier, method, target, cfg.batch)
        chosen = {d: choose_strength(rows, d, cfg.min_preservation) for d in DIRECTIONS}
        metrics, kept = held_out_run(
            inputs.runner, test, inputs.classifier, method, target, chosen, cfg.batch, ex
        )
        res["val_sweep"][name], res["chosen"][name], res["test"][name] = rows, chosen, metrics
        grid.append(torch.stack([kept.get(int(i), torch.zeros_like(test.x[0])) for i in ex]))
        bar.update(1)
    return res, grid


def _clean_accuracy(store: Any, images: ImageSet, attr: str, clf_names: list[str]) -> float:
    """Classifier on the unedited resumes vs ground truth: how far its groups are to be trusted."""
    truth = np.asarray(store.attributes)[images.rows, list(store.attribute_names).index(attr)] > 0
    pred = images.pred[:, clf_names.index(attr)].numpy()
    return float((pred == truth).mean())


def _settings(
    cfg: EditBenchConfig, k_info: dict, val_source: str, sets: dict, inputs: BenchInputs
) -> dict[str, Any]:
    meta = getattr(inputs.store, "meta", {}) or {}
    runner = inputs.runner
    return {
        "store": str(getattr(inputs.store, "path", "?")),
        "architecture": inputs.sae.cfg.architecture,
        "mode": cfg.mode,
        "kappas": list(cfg.kappas),
        "scales": list(cfg.scales),
        "min_preservation": cfg.min_preservation,
        **k_info,
        "edit_codes": "unthresholded (Algorithm 2)",
        "n_val": len(sets["val"].rows),
        "val_source": val_source,
        "n_test": len(sets["test"].rows),
        "t": getattr(runner, "t", meta.get("t")),
        "steps": getattr(runner, "steps", meta.get("steps")),
        "edit_steps": getattr(runner, "edit_steps", 1),
        "seed": cfg.seed,
        "n_candidates": cfg.n_candidates,
    }


def summarize_methods(results: dict[str, dict]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per method and direction, the mean over attributes of the test metrics (None skipped)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    keys = ("flip_rate", "preservation", "change_outside", "h_change")
    for m in METHODS:
        out[m] = {}
        for d in DIRECTIONS:
            vals = [r["test"][m][d] for r in results.values() if m in r["test"]]
            out[m][d] = {"n_attributes": sum(1 for v in vals if v["n"] > 0)}
            for key in keys:
                xs = [v[key] for v in vals if v.get(key) is not None]
                out[m][d][key] = float(np.mean(xs)) if xs else None
    return out


# ----- outputs --------------------------------------------------------------------------------
def _f(v: Any, spec: str = ".2f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _strength(method: str, s: float | None) -> str:
    if s is None:
        return "–"
    return f"κ={s:g}" if method != "mean_diff" else f"s={s:+g}"


def format_editbench_table(doc: dict[str, Any]) -> str:
    """Markdown: settings, the per attribute × method table, the per-method summary."""
    s = doc["settings"]
    lines = [
        "# Attribute-edit benchmark",
        "",
        f"{s['n_test']} test images of `{s['store']}`, mode `{s['mode']}`, t={s['t']}, "
        f"{s['steps']} DDIM steps, {s['edit_steps']} edited step(s). Component per attribute "
        f"chosen by train AUROC (codes thresholded with k={s.get('threshold_k')}); strengths "
        f"chosen on {s['n_val']} validation images ({s['val_source']}): the highest flip rate "
        f"with preservation ≥ {s['min_preservation']:g}. "
        "add = edit towards the attribute on images the classifier says lack it; remove = the "
        "reverse. flip = fraction of the group the classifier now judges the other way; "
        "keep = fraction of other-attribute predictions unchanged; out Δ = mean |Δpixel| (0–1) "
        "outside the attribute's region, vs the unedited resume.",
        "",
        "| attribute | method | component | add strength | add flip | add keep | add out Δ | "
        "remove strength | remove flip | remove keep | remove out Δ |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for attr, r in doc["attributes"].items():
        for m in METHODS:
            if m not in r["test"]:
                continue
            comp = r["components"][m]
            label = comp.get("component", f"‖d‖={comp.get('norm', 0):.3g}")
            if m != "mean_diff":
                label += " (+)" if comp.get("sign", 1) > 0 else " (−)"
            cells = [attr, m, label]
            for d in DIRECTIONS:
                t = r["test"][m][d]
                cells += [
                    _strength(m, t["strength"]) + f" (n={t['n']})",
                    _f(t["flip_rate"]),
                    _f(t["preservation"]),
                    _f(t["change_outside"], ".3f"),
                ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += _summary_lines(doc)
    if any("grid" in r for r in doc["attributes"].values()):
        lines += [
            "",
            "Example grids (rows: input, unedited resume, sae, mean_diff, random; "
            "columns: images without the attribute (add edit), then with it (remove edit)):",
        ]
        for attr, r in doc["attributes"].items():
            if "grid" in r:
                lines.append(f"- {attr}: ![{attr}]({r['grid']})")
    return "\n".join(lines) + "\n"


def _summary_lines(doc: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Mean over attributes",
        "",
        "| method | add flip | add keep | add out Δ | remove flip | remove keep | remove out Δ |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, by_dir in doc["summary"].items():
        cells = [m]
        for d in DIRECTIONS:
            v = by_dir[d]
            cells += [_f(v["flip_rate"]), _f(v["preservation"]), _f(v["change_outside"], ".3f")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_editbench(out: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """editbench.json, table.md and examples/<attribute>.png; returns the JSON document."""
    from hsae.utils.io import atomic_write_json, atomic_write_text
    from hsae.utils.viz import save_grid

    out.mkdir(parents=True, exist_ok=True)
    grids = doc.pop("_grids", {})
    for attr, rows in grids.items():
        if rows and len(rows[0]):
            rel = f"{EXAMPLES_DIR}/{attr}.png"
            save_grid(rows, out / rel)
            doc["attributes"][attr]["grid"] = rel
    doc = jsonable(doc)
    atomic_write_json(out / BENCH_FILE, doc)
    atomic_write_text(out / TABLE_FILE, format_editbench_table(doc))
    return doc


# ----- the command ----------------------------------------------------------------------------
def load_inputs(args: argparse.Namespace, cfg: EditBenchConfig) -> BenchInputs:
    """Store, SAE, committed classifier, backbone runner and image loader for the CLI."""
    from hsae.data.store import ActivationStore
    from hsae.diffusion.backbone import DiffusionBackbone
    from hsae.sae.selection import load_checked
    from hsae.toy.classifier import load_default

    store = ActivationStore(args.store)
    sae = load_checked(Path(args.sae), store).eval()
    data = Path(args.data)
    if not data.is_dir():
        raise FileNotFoundError(f"--data {data} is not a folder (expected the store's images)")
    meta = store.meta
    model = args.model or _store_model(meta) or "toy"
    backbone = DiffusionBackbone.load(model, dtype=args.dtype, device=args.device)
    sae.to(backbone.device)
    classifier = load_default(backbone.device)
    size = backbone.image_size
    if classifier.cfg.image_size != size:
        raise ValueError(
            f"the classifier judges {classifier.cfg.image_size}px images, model {model!r} makes "
            f"{size}px ones"
        )
    t = args.t if args.t is not None else float(meta.get("t", 0.7))
    steps = args.steps if args.steps is not None else int(meta.get("steps", 50))
    runner = DiffusionRunner(
        backbone, t, steps, meta.get("prompt", ""), args.edit_steps, cfg.batch, cfg.progress
    )
    # h_t is only comparable with the store's when it is captured at the store's own settings.
    same_run = t == meta.get("t") and steps == meta.get("steps") and model == _store_model(meta)
    return BenchInputs(
        store=store,
        sae=sae,
        classifier=classifier,
        runner=runner,
        load_images=lambda rows: load_rows_images(store, data, rows, size),
        masks=lambda ids, attr: toyfaces_masks(data, ids, attr, size),
        check_h=store_h_check(store) if same_run else None,
    )


def _store_model(meta: dict[str, Any]) -> str | None:
    return (meta.get("model") or {}).get("model_id")


def store_h_check(store: Any) -> Callable[[np.ndarray, Tensor], None]:
    """A check that re-captured h_t of store rows matches the store (right --data, model, t)."""

    def check(rows: np.ndarray, h: Tensor) -> None:
        ref = torch.from_numpy(np.asarray(store[rows], dtype=np.float32))
        err = float((h.float() - ref).norm() / ref.norm().clamp_min(1e-12))
        if err > H_CHECK_TOL:
            raise ValueError(
                f"--data images do not reproduce the h_t of store {store.path} (relative error "
                f"{err:.3g}): pass the image folder, model, t and steps it was extracted with"
            )

    return check


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    cfg = EditBenchConfig(
        attributes=args.attributes,
        n_images=args.n_images,
        n_val=args.n_val,
        kappas=tuple(args.kappas),
        scales=tuple(args.scales),
        mode=args.mode,
        threshold_k=args.threshold_k,
        target_sparsity=args.target_sparsity,
        min_preservation=args.min_preservation,
        n_candidates=args.candidates,
        n_examples=args.n_examples,
        batch=args.batch,
        seed=args.seed,
        progress=not args.no_progress,
    )
    cfg.check()
    inputs = load_inputs(args, cfg)
    doc = run_editbench(inputs, cfg)
    runner = inputs.runner
    model = runner.backbone.model_id if isinstance(runner, DiffusionRunner) else None
    doc["settings"].update(model=model, data=str(args.data))
    out = args.out or Path(args.store).parent / "editbench"
    return write_editbench(Path(out), doc)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("editbench", help="attribute-edit benchmark: SAE component vs baselines")
    p.add_argument("--store", type=Path, required=True, help="activation store folder")
    p.add_argument("--sae", type=Path, required=True, help="SAE checkpoint folder")
    p.add_argument("--data", type=Path, required=True, help="image folder the store came from")
    p.add_argument("--out", type=Path, default=None, help="default STORE/../editbench")
    p.add_argument("--model", default=None, help="diffusion model (default: the store's)")
    p.add_argument("--attributes", nargs="+", default=None, help="default: all labelled ones")
    p.add_argument("--n-images", type=int, default=64, help="test images edited (default 64)")
    p.add_argument("--n-val", type=int, default=24, help="validation images for choosing κ")
    p.add_argument("--kappas", type=float, nargs="+", default=list(DEFAULT_KAPPAS))
    p.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=list(DEFAULT_SCALES),
        help="mean-difference step magnitudes, applied as ±s",
    )
    p.add_argument("--mode", choices=MODES, default="error_preserving")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the store's)")
    p.add_argument("--t", type=float, default=None, help="edit timestep fraction (store's)")
    p.add_argument(
        "--edit-steps",
        type=parse_edit_steps,
        default=1,
        help="resumed U-Net calls whose h_t is edited: N or all (default 1, the paper)",
    )
    add_threshold_arguments(p)
    add_device_arguments(p)
    p.add_argument("--min-preservation", type=float, default=0.9)
    p.add_argument("--candidates", type=int, default=64, help="AUROC candidates per attribute")
    p.add_argument("--n-examples", type=int, default=4, help="grid images per direction")
    p.add_argument("--batch", type=int, default=64, help="images per inversion / resume chunk")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    doc = run_cli(args)
    print(format_editbench_table(doc), end="")
    out = args.out or Path(args.store).parent / "editbench"
    print(f"wrote {Path(out) / BENCH_FILE}, {Path(out) / TABLE_FILE}")
    return 0
