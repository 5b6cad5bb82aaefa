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

import shlex
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from hsae.editing import bench_methods as BM
from hsae.editing.bench_cache import BenchCache, bench_key
from hsae.editing.bench_run import effect_scores, run_rows, sweep
from hsae.editing.bench_setup import (
    DEFAULT_SIZES,
    DIRECTIONS,
    BenchInputs,
    EditBenchConfig,
    EditRunner,
    ImageSet,
    prepare_images,
)
from hsae.editing.selection import code_stats, pca_basis
from hsae.editing.units import EditFeature

__all__ = [
    "DEFAULT_SIZES",
    "DIRECTIONS",
    "BenchInputs",
    "EditBenchConfig",
    "EditRunner",
    "ImageSet",
    "effect_scores",
    "matched_size",
    "prepare_images",
    "run_editbench",
    "run_rows",
    "sweep",
]


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
    """The whole benchmark; returns the editbench.json document (+ "_examples" image rows).

    With `inputs.cache_dir`, the inverted images and each finished attribute are kept there
    (hsae.editing.bench_cache) and reused by a re-run with the same settings."""
    cfg.check()
    clock = {"start": time.perf_counter()}
    store, clf = inputs.store, inputs.classifier
    names = benchmark_attributes(inputs, cfg)
    train, val_rows, test_rows = bench_rows(store, cfg)
    cache = BenchCache(inputs.cache_dir, bench_key(cfg, inputs.saes, store, inputs.runner))
    entries = [
        BM.SAEEntry(n, s.eval(), code_stats(s, store, train)) for n, s in inputs.saes.items()
    ]
    pca = pca_basis(store, train, cfg.pca_components, cfg.seed)
    timings: dict[str, Any] = {"statistics_s": _lap(clock)}
    sets = cache.load("images")
    if sets is None:
        sets = {
            n: prepare_images(n, r, inputs, names)
            for n, r in (("val", val_rows), ("test", test_rows))
        }
        cache.save("images", sets)
    timings["invert_s"] = _lap(clock)
    clf_names = list(clf.attribute_names)
    results, examples = {}, {}
    bar = tqdm(names, desc="editbench", unit="attribute", disable=not cfg.progress)
    for attr in bar:
        done = cache.load(f"attribute-{attr}")
        if done is None:
            done = bench_attribute(
                inputs, sets, entries, pca, train, attr, clf_names.index(attr), cfg
            )
            cache.save(f"attribute-{attr}", done)
        results[attr], examples[attr] = done
    timings["attributes_s"] = _lap(clock)
    return {
        "command": shlex.join(sys.argv),
        "settings": _settings(cfg, inputs, sets, len(train)),
        "attributes": results,
        "timings": timings,
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
        "top_positions": cfg.top_positions,
        "max_group": cfg.max_group,
        "test_sizes": cfg.test_sizes,
        "side_windows": cfg.side_windows,
        "components": cfg.components,
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
        fams.update(
            BM.sae_latent_candidates(e, y, cfg.n_candidates, cfg.top_channels, cfg.top_positions)
        )
        if (
            cfg.components is True
            or cfg.components == "all"
            or (cfg.components == "channel" and BM.is_channel_tokens(e.sae))
        ):
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


def select_features(
    inputs: BenchInputs,
    val: ImageSet,
    fams: dict[str, list[EditFeature]],
    target: int,
    cfg: EditBenchConfig,
) -> dict[str, tuple[EditFeature, dict]]:
    """Per family its best train-AUROC candidate, and the best of its candidates by validation
    effect (the classifier-logit change per unit of edit size) under the main window."""
    chosen: dict[str, tuple[EditFeature, dict]] = {}
    for fam, feats in fams.items():
        label = fam if len(feats) == 1 else f"{fam} (auroc)"
        how = {"mean_diff": "supervised", "random": "control"}.get(fam, "train AUROC")
        chosen[label] = (feats[0], {"selection": how})
        if len(feats) > 1 and cfg.effect_images > 0:
            eff = effect_scores(inputs, val, feats, target, cfg.windows[-1], cfg)
            if any(np.isfinite(eff)):
                b = int(np.nanargmax(eff))
                info = {"selection": "validation effect", "effects": eff, "rank_by_auroc": b + 1}
                chosen[f"{fam} (effect)"] = (feats[b], info)
    return chosen


def test_sizes(
    cfg: EditBenchConfig, matched: dict[str, Any], main: bool
) -> tuple[float, ...] | dict[str, tuple[float, ...]]:
    """The sizes measured on test: every swept size, or the validated size of each direction,
    plus (`matched`) the largest swept size in the main window (does a feature edit at all?).
    `validated` drops that row: on the full-size run it costs a quarter of each attribute."""
    if cfg.test_sizes == "swept" or not matched:
        return cfg.sizes
    out = {}
    for d in DIRECTIONS:
        size = (matched.get(d) or {}).get("size")
        sizes = () if size is None else (size,)
        largest = main and cfg.test_sizes == "matched"
        out[d] = (*sizes, max(cfg.sizes)) if largest else sizes
    return out


def window_labels(chosen: dict[str, Any], cfg: EditBenchConfig, main: bool) -> list[str]:
    """Features measured under a window: all of them in the main window; before it, with
    `side_windows="selected"`, the effect-selected one of each family (its AUROC pick only
    where the family has no effect pick) and the baselines."""
    if main or cfg.side_windows == "all":
        return list(chosen)
    tag = " (auroc)"
    return [k for k in chosen if not (k.endswith(tag) and k[: -len(tag)] + " (effect)" in chosen)]


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
    """Candidates → selection (AUROC on train, effect on val) → matched size (val) → test."""
    val, test = sets["val"], sets["test"]
    clock = {"start": time.perf_counter()}
    y = attribute_labels(inputs.store, train, attr)
    fams = _features_for(entries, pca, inputs.store, train, y, target, cfg)
    w_main = cfg.windows[-1]
    chosen = select_features(inputs, val, fams, target, cfg)
    timings = {"select_s": _lap(clock)}
    # Matched size: where the supervised direction reaches its best validation flip while keeping.
    matched: dict[str, Any] = {}
    if "mean_diff" in chosen:
        vrows, _ = sweep(inputs, val, chosen["mean_diff"][0], target, cfg.sizes, w_main, cfg)
        matched = {d: matched_size(vrows, d, cfg.min_keep) for d in DIRECTIONS}
        matched["val_sweep"] = vrows
    timings["matched_size_s"] = _lap(clock)
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
    add, rem = (matched.get(d, {}).get("size") for d in DIRECTIONS)
    for w in cfg.windows:
        main = w == w_main
        curves[str(w)] = {}
        sizes = test_sizes(cfg, matched, main)
        for label in window_labels(chosen, cfg, main):
            keep_at: tuple[float | None, float | None] = (add, rem) if main else (None, None)
            rows, kept = sweep(inputs, test, chosen[label][0], target, sizes, w, cfg, keep_at, ex)
            curves[str(w)][label] = rows
            if kept:
                example_rows["edits"][label] = kept
        timings[f"test_window_{w}_s"] = _lap(clock)
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
        "timings": timings,
    }
    return res, example_rows


def _lap(clock: dict[str, float]) -> float:
    """Seconds since the last lap (the benchmark's own profile, written to editbench.json)."""
    now = time.perf_counter()
    dt, clock["start"] = now - clock["start"], now
    return round(dt, 2)


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
