"""Attribute-edit benchmark (`hsae editbench`): which features of H-space edit an attribute, at
what size, with what side effects, against the supervised direction, PCA and a random control.

Fairness rules, all enforced here:

- one axis for every method: the edit size ‖h̃ − h‖ / ‖h‖ at the first edited step (the summed
  size over the window is measured too). Each feature's strength is set from a target size
  (`--sizes`) through its mean size per unit strength on validation h, so methods are compared at
  the same size, never at "the same κ";
- signed strengths: a positive size goes towards the attribute (applied to the images the
  classifier says lack it, "add"), a negative one away from it ("remove"), for every method;
- selection and editing on the same (raw) codes; features are picked on the train split (AUROC)
  and, for "by effect", on validation images; test images are only measured;
- windows (`--windows`: 1 = the paper's single step, N = the first N resumed steps, all);
- Wilson 95% intervals on every rate; curves vs edit size per attribute (PNG) and a table at a
  matched size: the smallest swept size at which the mean-difference direction reaches its best
  validation flip rate with ≥ `--min-keep` of the other attributes kept.

Cost: validation and test images are inverted once; each (feature, size) edits every test image
once (its group decides the sign), in batched resumes of `--batch` rows.
"""

from __future__ import annotations

import math
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from hsae.editing import bench_methods as BM
from hsae.editing.bench_metrics import row_metrics, summarize
from hsae.editing.selection import code_stats, pca_basis
from hsae.editing.units import EDIT_MODES, EditFeature, StepLog, window_hook
from hsae.utils.metrics import pixel_change

DEFAULT_SIZES = (0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5)
DIRECTIONS = ("add", "remove")


@dataclass
class EditBenchConfig:
    attributes: list[str] | None = None
    n_test: int = 200
    n_val: int = 64
    n_stats: int = 2000  # train rows for the SAE statistics, PCA and the direction
    sizes: tuple[float, ...] = DEFAULT_SIZES
    windows: tuple[int | str, ...] = ("all",)
    mode: str = "error_preserving"
    n_candidates: int = 8
    effect_images: int = 16
    effect_size: float = 0.5
    top_channels: int | None = 16
    pca_components: int = 64
    min_keep: float = 0.95
    components: bool = True
    n_examples: int = 4
    batch: int = 64
    seed: int = 0
    progress: bool = True

    def check(self) -> None:
        if self.mode not in EDIT_MODES:
            raise ValueError(f"--mode must be one of {EDIT_MODES}, got {self.mode!r}")
        if self.n_test < 1 or self.n_val < 1:
            raise ValueError(f"--n-test and --n-val must be >= 1: {self.n_test}, {self.n_val}")
        if not self.sizes or min(self.sizes) <= 0:
            raise ValueError(f"--sizes must be positive magnitudes, got {list(self.sizes)}")
        if not self.windows:
            raise ValueError("--windows needs at least one window (1, N or all)")
        if not 0 <= self.min_keep <= 1:
            raise ValueError(f"--min-keep must be in [0, 1], got {self.min_keep}")
        if self.batch < 1 or self.n_candidates < 1:
            raise ValueError(f"--batch and --candidates must be >= 1: {self.batch}")


class EditRunner(Protocol):
    """Inverts images once and resumes them with an H-space edit (tests use a fake)."""

    def invert(self, x: Tensor) -> tuple[Any, Tensor, Tensor]:
        """(state, unedited resume in [-1, 1], h_t at the first resumed step) for images x."""
        ...

    def resume(self, state: Any, idx: np.ndarray, edit: Callable, window: int | str) -> Tensor:
        """Images of rows `idx` of `state` resumed with h → edit(h) on the window's steps."""
        ...


@dataclass
class ImageSet:
    name: str
    rows: np.ndarray
    ids: list[str]
    x: Tensor
    x_clean: Tensor
    h: Tensor
    pred: Tensor  # (B, A) bool
    logit: Tensor | None
    state: Any
    masks: dict[str, Tensor | None] = field(default_factory=dict)


@dataclass
class BenchInputs:
    store: Any
    saes: dict[str, Any]  # name → BaseSAE
    classifier: Any
    runner: EditRunner
    load_images: Callable[[np.ndarray], Tensor]
    masks: Callable[[list[str], str], Tensor | None] | None = None
    check_h: Callable[[np.ndarray, Tensor], None] | None = None


def _classify(clf: Any, x: Tensor) -> tuple[Tensor, Tensor | None]:
    if hasattr(clf, "predict_logits"):
        logit = torch.as_tensor(clf.predict_logits(x)).float()
        return logit > 0, logit
    return torch.as_tensor(clf.predict(x)).bool(), None


def prepare_images(name: str, rows: np.ndarray, inputs: BenchInputs, names: list[str]) -> ImageSet:
    store = inputs.store
    ids = [store.ids[int(r)] for r in rows]
    x = inputs.load_images(rows)
    state, x_clean, h = inputs.runner.invert(x)
    if inputs.check_h is not None:
        inputs.check_h(rows, h)
    pred, logit = _classify(inputs.classifier, x_clean)
    masks = {a: (inputs.masks(ids, a) if inputs.masks else None) for a in names}
    return ImageSet(name, rows, ids, x, x_clean, h.float(), pred, logit, state, masks)


# ----- running edits ------------------------------------------------------------------------------
def run_rows(
    inputs: BenchInputs,
    images: ImageSet,
    feature: EditFeature,
    target: int,
    idx: np.ndarray,
    u: np.ndarray,
    window: int | str,
    mode: str,
    batch: int,
    keep: set[int] | None = None,
) -> tuple[dict[str, np.ndarray], dict[int, Tensor]]:
    """Resume rows (image idx, strength u) in chunks; per-row metrics (+ kept rows' images)."""
    attr = list(inputs.classifier.attribute_names)[target]
    mask = images.masks.get(attr)
    parts, kept = [], {}
    for start in range(0, len(idx), batch):
        rows = idx[start : start + batch]
        uu = torch.as_tensor(u[start : start + batch]).float()
        log = StepLog()
        x = inputs.runner.resume(images.state, rows, window_hook(feature, uu, mode, log), window)
        pred, logit = _classify(inputs.classifier, x)
        want = torch.as_tensor(np.sign(u[start : start + batch]) * feature.sign > 0)
        ref_logit = None if images.logit is None else images.logit[rows]
        m = row_metrics(images.pred[rows], pred, ref_logit, logit, target, want)
        steps = log.per_step()
        m["size"] = steps[0].double().numpy() if len(steps) else np.zeros(len(rows))
        m["size_sum"] = steps.sum(0).double().numpy() if len(steps) else np.zeros(len(rows))
        m.update(pixel_change(x, images.x_clean[rows], None if mask is None else mask[rows]))
        parts.append(m)
        if keep:
            kept.update({start + i: x[i] for i in range(len(rows)) if start + i in keep})
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    if out:
        out["n_others"] = np.array([max(images.pred.shape[1] - 1, 1)])
    return out, kept


def sweep(
    inputs: BenchInputs,
    images: ImageSet,
    feature: EditFeature,
    target: int,
    sizes: tuple[float, ...],
    window: int | str,
    cfg: EditBenchConfig,
    keep_at: tuple[float | None, float | None] = (None, None),
    keep_images: np.ndarray | None = None,
) -> tuple[list[dict[str, Any]], dict[int, Tensor]]:
    """Every signed size on its group: +size on images without the attribute, −size on those with.
    Returns one summary row per signed size, and the edited images of `keep_images` (by image
    index) at keep_at = (add size, remove size)."""
    has = images.pred[:, target].numpy().astype(bool)
    unit = BM.size_per_unit(feature, images.h)
    idx, u, tag = [], [], []
    for s in sizes:
        for sign, group in ((1, ~has), (-1, has)):
            g = np.flatnonzero(group)
            idx.append(g)
            u.append(BM.oriented_u(feature, sign * s, unit[g]))
            tag.append(np.full(len(g), sign * s))
    idx_a, u_a, tag_a = (np.concatenate(v) for v in (idx, u, tag))
    keep = set()
    if keep_images is not None:
        want = set(keep_images.tolist())
        wanted_tags = {t for t in (keep_at[0], None if keep_at[1] is None else -keep_at[1]) if t}
        keep = {
            i
            for i, (img, t) in enumerate(zip(idx_a, tag_a, strict=False))
            if img in want and t in wanted_tags
        }
    metrics, kept = run_rows(
        inputs, images, feature, target, idx_a, u_a, window, cfg.mode, cfg.batch, keep
    )
    rows = []
    for s in sizes:
        for sign in (1, -1):
            sel = tag_a == sign * s
            rows.append(
                {
                    "target_size": s,
                    "direction": "add" if sign > 0 else "remove",
                    **summarize(metrics, sel),
                }
            )
    return rows, {int(idx_a[i]): x for i, x in kept.items()}


def effect_scores(
    inputs: BenchInputs,
    images: ImageSet,
    feats: list[EditFeature],
    target: int,
    window: int | str,
    cfg: EditBenchConfig,
) -> list[float]:
    """Mean signed logit change per unit of edit size of each candidate on validation images
    (half without the attribute edited +size, half with it −size); NaN without logits."""
    has = images.pred[:, target].numpy().astype(bool)
    half = max(cfg.effect_images // 2, 1)
    groups = [(1, np.flatnonzero(~has)[:half]), (-1, np.flatnonzero(has)[:half])]
    out = []
    for f in feats:
        unit = BM.size_per_unit(f, images.h)
        idx = np.concatenate([g for _, g in groups])
        u = np.concatenate([BM.oriented_u(f, s * cfg.effect_size, unit[g]) for s, g in groups])
        if len(idx) == 0 or not np.any(u):
            out.append(math.nan)
            continue
        m, _ = run_rows(inputs, images, f, target, idx, u, window, cfg.mode, cfg.batch)
        if "logit" not in m:
            out.append(math.nan)
            continue
        out.append(float(np.mean(m["logit"]) / max(float(np.mean(m["size"])), 1e-12)))
    return out


# ----- the benchmark --------------------------------------------------------------------------
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


def bench_rows(store: Any, cfg: EditBenchConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train rows for statistics, validation rows, test rows)."""
    from hsae.utils.splits import optional_split_rows

    rows = {s: optional_split_rows(store, s) for s in ("train", "val", "test")}
    if rows["test"] is None or rows["train"] is None:
        raise ValueError(
            f"activation store {store.path} needs train and test splits: features are chosen on "
            "train and measured on held-out test images"
        )
    avail = getattr(store, "available_indices", None)
    if avail is not None:  # an incomplete store: statistics only from the rows written so far
        rows["train"] = np.intersect1d(rows["train"], avail())
    val = rows["val"]
    if val is None:  # the last train rows, kept out of the statistics
        val, train = rows["train"][-cfg.n_val :], rows["train"][: -cfg.n_val]
    else:
        val, train = val[: cfg.n_val], rows["train"]
    if len(train) < 2:
        raise ValueError(f"activation store {store.path}: too few train rows ({len(train)})")
    return np.asarray(train)[: cfg.n_stats], np.asarray(val), np.asarray(rows["test"])[: cfg.n_test]


def attribute_labels(store: Any, rows: np.ndarray, attr: str) -> np.ndarray:
    names = list(store.attribute_names)
    return np.asarray(store.attributes)[rows, names.index(attr)] > 0


def mean_direction(store: Any, rows: np.ndarray, y: np.ndarray) -> Tensor | None:
    if y.all() or not y.any():
        return None
    h = torch.from_numpy(np.asarray(store[rows], dtype=np.float32)).double()
    return (h[torch.as_tensor(y)].mean(0) - h[torch.as_tensor(~y)].mean(0)).float()


def run_editbench(inputs: BenchInputs, cfg: EditBenchConfig) -> dict[str, Any]:
    """The whole benchmark; returns the editbench.json document (+ "_examples" image rows)."""
    cfg.check()
    store, clf = inputs.store, inputs.classifier
    names = benchmark_attributes(inputs, cfg)
    train, val_rows, test_rows = bench_rows(store, cfg)
    entries = [
        BM.SAEEntry(n, s.eval(), code_stats(s, store, train)) for n, s in inputs.saes.items()
    ]
    pca = pca_basis(store, train, cfg.pca_components, cfg.seed)
    sets = {
        n: prepare_images(n, r, inputs, names) for n, r in (("val", val_rows), ("test", test_rows))
    }
    clf_names = list(clf.attribute_names)
    results, examples = {}, {}
    bar = tqdm(names, desc="editbench", unit="attribute", disable=not cfg.progress)
    for attr in bar:
        res, ex = bench_attribute(
            inputs, sets, entries, pca, train, attr, clf_names.index(attr), cfg
        )
        results[attr], examples[attr] = res, ex
    return {
        "command": shlex.join(sys.argv),
        "settings": _settings(cfg, inputs, sets, len(train)),
        "attributes": results,
        "_examples": examples,
    }


def _settings(cfg: EditBenchConfig, inputs: BenchInputs, sets: dict, n_train: int) -> dict:
    runner = inputs.runner
    return {
        "store": str(getattr(inputs.store, "path", "?")),
        "saes": {n: s.cfg.architecture for n, s in inputs.saes.items()},
        "mode": cfg.mode,
        "sizes": list(cfg.sizes),
        "windows": [str(w) for w in cfg.windows],
        "min_keep": cfg.min_keep,
        "codes": "raw (unthresholded), for selection and editing",
        "n_train_stats": n_train,
        "n_val": len(sets["val"].rows),
        "n_test": len(sets["test"].rows),
        "n_candidates": cfg.n_candidates,
        "effect_images": cfg.effect_images,
        "effect_size": cfg.effect_size,
        "top_channels": cfg.top_channels,
        "t": getattr(runner, "t", None),
        "steps": getattr(runner, "steps", None),
        "seed": cfg.seed,
    }


def _features_for(
    entries: list[BM.SAEEntry],
    pca: Any,
    store: Any,
    train: np.ndarray,
    y: np.ndarray,
    ai: int,
    cfg: EditBenchConfig,
) -> dict[str, list[EditFeature]]:
    fams: dict[str, list[EditFeature]] = {}
    for e in entries:
        fams.update(BM.sae_latent_candidates(e, y, cfg.n_candidates, cfg.top_channels))
        if cfg.components:
            codes = _flat_codes(e, store, train)
            fams.update(BM.sae_component_candidates(e, codes, y))
    fams.update(BM.pca_candidates(pca, y, cfg.n_candidates))
    for k, f in BM.baseline_features(mean_direction(store, train, y), cfg.seed, ai).items():
        fams[k] = [f]
    return fams


@torch.no_grad()
def _flat_codes(entry: BM.SAEEntry, store: Any, rows: np.ndarray, batch: int = 128) -> Tensor:
    from hsae.editing.intervene import encode_tokens
    from hsae.editing.selection import store_h

    parts = [
        encode_tokens(entry.sae, store_h(store, rows[i : i + batch])).flatten(1)
        for i in range(0, len(rows), batch)
    ]
    return torch.cat(parts).float()


def bench_attribute(
    inputs: BenchInputs,
    sets: dict[str, ImageSet],
    entries: list[BM.SAEEntry],
    pca: Any,
    train: np.ndarray,
    attr: str,
    target: int,
    cfg: EditBenchConfig,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Candidates → selection (AUROC on train, effect on val) → matched size (val) → test curves."""
    val, test = sets["val"], sets["test"]
    y = attribute_labels(inputs.store, train, attr)
    fams = _features_for(entries, pca, inputs.store, train, y, target, cfg)
    w_main = cfg.windows[-1]
    chosen: dict[str, tuple[EditFeature, dict]] = {}
    for fam, feats in fams.items():
        label = fam if len(feats) == 1 else f"{fam} (auroc)"
        how = {"mean_diff": "supervised", "random": "control"}.get(fam, "train AUROC")
        chosen[label] = (feats[0], {"selection": how})
        if len(feats) > 1 and cfg.effect_images > 0:
            eff = effect_scores(inputs, val, feats, target, w_main, cfg)
            if any(np.isfinite(eff)):
                b = int(np.nanargmax(eff))
                info = {"selection": "validation effect", "effects": eff, "rank_by_auroc": b + 1}
                chosen[f"{fam} (effect)"] = (feats[b], info)
    # Matched size: where the supervised direction reaches its best validation flip while keeping.
    matched: dict[str, Any] = {}
    if "mean_diff" in chosen:
        vrows, _ = sweep(inputs, val, chosen["mean_diff"][0], target, cfg.sizes, w_main, cfg)
        matched = {d: matched_size(vrows, d, cfg.min_keep) for d in DIRECTIONS}
        matched["val_sweep"] = vrows
    has = test.pred[:, target].numpy().astype(bool)
    ex = np.concatenate(
        [np.flatnonzero(~has)[: cfg.n_examples], np.flatnonzero(has)[: cfg.n_examples]]
    )
    curves: dict[str, dict[str, Any]] = {}
    example_rows: dict[str, Any] = {
        "ids": [test.ids[i] for i in ex],
        "input": test.x[ex],
        "clean": test.x_clean[ex],
        "edits": {},
    }
    for w in cfg.windows:
        curves[str(w)] = {}
        for label, (f, _) in chosen.items():
            add, rem = (matched.get(d, {}).get("size") for d in DIRECTIONS)
            keep_at: tuple[float | None, float | None] = (add, rem) if w == w_main else (None, None)
            rows, kept = sweep(inputs, test, f, target, cfg.sizes, w, cfg, keep_at, ex)
            curves[str(w)][label] = rows
            if kept:
                example_rows["edits"][label] = kept
    res = {
        "n_test_without": int((~has).sum()),
        "n_test_with": int(has.sum()),
        "features": {
            lab: BM.describe(f, BM.size_per_unit(f, test.h), how)
            for lab, (f, how) in chosen.items()
        },
        "matched": matched,
        "curves": curves,
        "classifier_clean_accuracy": float(
            (test.pred[:, target].numpy() == attribute_labels(inputs.store, test.rows, attr)).mean()
        ),
    }
    return res, example_rows


def matched_size(rows: list[dict[str, Any]], direction: str, min_keep: float) -> dict[str, Any]:
    """The smallest size with the best flip rate among sizes keeping ≥ min_keep (else best flip)."""
    cand = [r for r in rows if r["direction"] == direction and r["n"] > 0]
    if not cand:
        return {"size": None, "reason": "no validation image in this group"}
    ok = [r for r in cand if (r["preserved"] or 0) >= min_keep]
    pool, why = (
        (ok, f"best flip keeping >= {min_keep:g}") if ok else (cand, "nothing keeps: best flip")
    )
    best = max(pool, key=lambda r: (r["flipped"], -r["target_size"]))
    return {"size": best["target_size"], "reason": why, "flipped_val": best["flipped"]}
