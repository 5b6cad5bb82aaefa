"""Linear attribute probes (paper §4, Table 1): how linearly readable is each representation?

Per attribute of the store (±1 labels) and per method, a logistic regression on standardised
features is fitted on the train split and scored on the test split (accuracy and balanced
accuracy, i.e. the mean of the per-class recalls, which is 0.5 for any constant guess).

Methods, all read from the same rows of the activation store:

- **SAE** (`--sae`): the codes of every token, thresholded per image by eq. 9 (`--threshold-k`;
  "auto" picks the k giving ≈ 95 % sparsity on a train sample, as `hsae eval` does), flattened to
  one C·L vector per image; the `--n-components` columns with the largest mean on the train split
  are kept (Table 1's "top-512 components").
- **flat SAE** (`--flat-sae`, optional): the same, for a one-token-per-image SAE.
- **PCA**: raw h projected on its top principal directions, fitted on the train split. PCA cannot
  have more components than train images or C·K·K, so it is capped there (said in the table).
- **random**: raw h times a fixed N(0, 1) matrix (the random baseline of Table 2, seeded).
- **majority**: the train split's majority class, as the chance reference.

The channel-aware SAE is encoded with image_index=None (its test-time context) on both splits, so
a feature means the same on the rows the probe learns from and the rows it is scored on.

Everything streams over the memory-mapped store in batches: one pass over the train split for the
column means, one pass over train + test for the kept columns (held in RAM: N × 512 floats).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hsae.sae import BaseSAE

Featurizer = Callable[[Tensor], Tensor]
PROBE_FILE, TABLE_FILE = "probe.json", "table.md"
MAJORITY = "majority"
# PCA components with less train variance than this fraction of the top one are rank noise.
DEGENERATE_VARIANCE = 1e-8


@dataclass
class Method:
    """One representation: `featurize` maps h (B, C, K, K) to features (B, F)."""

    key: str
    name: str
    featurize: Featurizer
    select_top: bool  # keep only the n columns with the largest train mean
    info: dict[str, Any] = field(default_factory=dict)
    columns: np.ndarray | None = None


# ----- features -----------------------------------------------------------------------------------
def sparse_featurizer(model: BaseSAE, threshold_k: int | None) -> Featurizer:
    """h → the SAE's codes, thresholded per image (eq. 9) if k is given, flattened to (B, M·L)."""
    from hsae.sae.threshold import codes_as_tokens, threshold_codes

    model.eval()

    def featurize(h: Tensor) -> Tensor:
        tokens = codes_as_tokens(model.encode(h.to(model.W_enc)).cpu())
        if threshold_k is not None:
            tokens = threshold_codes(tokens, threshold_k)
        return tokens.flatten(1)

    return featurize


def dense_featurizer(model: BaseSAE) -> Featurizer:
    """h → the (signed, dense) codes of a projection baseline, (B, L)."""
    model.eval()
    return lambda h: model.encode(h.to(model.W_enc)).flatten(1).cpu()


def _batches(store: Any, rows: np.ndarray, batch: int) -> Iterator[Tensor]:
    for start in range(0, len(rows), batch):
        yield torch.from_numpy(np.asarray(store[rows[start : start + batch]], dtype=np.float32))


@torch.no_grad()
def column_means(
    store: Any, rows: np.ndarray, featurizers: Mapping[str, Featurizer], batch: int = 64
) -> dict[str, np.ndarray]:
    """Mean of every feature column over `rows`, per featurizer (float64, one streamed pass)."""
    sums: dict[str, Tensor] = {}
    for h in _batches(store, rows, batch):
        for key, featurize in featurizers.items():
            s = featurize(h).double().sum(0)
            sums[key] = s if key not in sums else sums[key] + s
    return {key: (s / len(rows)).numpy() for key, s in sums.items()}


def top_columns(means: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest means (all columns if fewer), ascending; ties: lower index."""
    order = np.argsort(-means, kind="stable")
    return np.sort(order[:n])


@torch.no_grad()
def extract_features(
    store: Any, rows: np.ndarray, methods: Sequence[Method], batch: int = 64
) -> dict[str, np.ndarray]:
    """(len(rows), F) float32 features per method, restricted to its chosen columns."""
    parts: dict[str, list[np.ndarray]] = {m.key: [] for m in methods}
    for h in _batches(store, rows, batch):
        for m in methods:
            x = m.featurize(h)
            if m.columns is not None:
                x = x[:, torch.from_numpy(m.columns)]
            parts[m.key].append(x.float().numpy())
    return {key: np.concatenate(p) for key, p in parts.items()}


def select_columns(
    store: Any, train_rows: np.ndarray, methods: Sequence[Method], n: int, batch: int
) -> None:
    """Set `columns` of every select_top method to its top-n columns by train mean."""
    chosen = [m for m in methods if m.select_top]
    if not chosen:
        return
    means = column_means(store, train_rows, {m.key: m.featurize for m in chosen}, batch)
    for m in chosen:
        m.columns = top_columns(means[m.key], n)
        m.info["n_columns_total"] = len(means[m.key])
        m.info["n_columns_active"] = int((means[m.key] > 0).sum())
        m.info["n_features"] = len(m.columns)


# ----- methods ------------------------------------------------------------------------------------
def sae_method(
    key: str,
    label: str,
    path: Path,
    store: Any,
    threshold_k: int | str | None,
    target: float,
    seed: int,
    device: str | torch.device = "cpu",
) -> Method:
    """The probe method of a sparse SAE checkpoint, with k chosen on a train sample for "auto"."""
    from hsae.sae.selection import is_sparse, load_checked, resolve_threshold_k

    model = load_checked(path, store).to(device)
    if not is_sparse(model):
        raise ValueError(
            f"{path} holds a {model.cfg.architecture!r} model, not a sparse SAE; "
            "the PCA and random baselines are fitted by `hsae probe` itself"
        )
    info: dict[str, Any] = {"source": str(path), "architecture": model.cfg.architecture}
    info["n_latents"] = model.cfg.n_latents
    k, k_info = resolve_threshold_k(model, threshold_k, store, None, target, seed)
    if "sample_sparsity" in k_info:
        info.update(
            threshold_target_sparsity=target, threshold_sample_sparsity=k_info["sample_sparsity"]
        )
    info["threshold_k"] = k
    name = label + (f" k={k}" if k is not None else " unthresholded")
    return Method(key, name, sparse_featurizer(model, k), select_top=True, info=info)


def pca_method(store: Any, train_rows: np.ndarray, n: int, batch: int) -> Method:
    """PCA of raw h fitted on the train rows, with min(n, train images − 1, C·K·K) components.

    Centred train data have rank ≤ train images − 1; a component beyond the rank (variance ~0 on
    train, not on test) becomes huge noise once standardised and wrecks every probe, so such
    components are capped and, should duplicates lower the rank further, left out.
    """
    from hsae.sae import PCABaseline, make_config

    _, c, k, _ = store.shape
    n_pca = max(1, min(n, len(train_rows) - 1, c * k * k))
    model = PCABaseline(make_config("pca", c, k, n_latents=n_pca))
    model.fit(store.iter_batches(max(batch, n_pca), indices=train_rows))
    var = model.explained_variance.double().numpy()
    keep = np.flatnonzero(var > DEGENERATE_VARIANCE * var.max())
    info: dict[str, Any] = {"n_features": len(keep), "fitted_on_train_images": len(train_rows)}
    if len(keep) < n:
        info["capped_from"] = n
    name = f"PCA-{len(keep)}"
    return Method("pca", name, dense_featurizer(model), select_top=False, info=info, columns=keep)


def random_method(store: Any, n: int, seed: int) -> Method:
    """Raw h times a fixed N(0, 1) (C·K·K, n) matrix: the random baseline, a function of seed."""
    from hsae.sae import build_sae, make_config

    _, c, k, _ = store.shape
    with torch.random.fork_rng():  # seeded without disturbing the caller's RNG stream
        torch.manual_seed(seed)
        model = build_sae(make_config("random", c, k, n_latents=n))
    info = {"n_features": n, "seed": seed}
    return Method("random", f"random-{n}", dense_featurizer(model), select_top=False, info=info)


# ----- probes -------------------------------------------------------------------------------------
def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in y_true (0.5 for a constant guess on 2 classes)."""
    recalls = [float(np.mean(y_pred[y_true == c] == c)) for c in np.unique(y_true)]
    return float(np.mean(recalls))


def _scores(y_test: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": float(np.mean(pred == y_test)),
        "balanced_accuracy": balanced_accuracy(y_test, pred),
    }


def fit_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    seed: int = 0,
    inv_reg: float = 1.0,
    max_iter: int = 1000,
) -> dict[str, Any]:
    """Standardise → logistic regression on train, scored on test. A one-class train split
    cannot be fitted: it predicts that class (and says so)."""
    from sklearn.exceptions import ConvergenceWarning  # type: ignore[import-untyped]
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
    from sklearn.pipeline import make_pipeline  # type: ignore[import-untyped]
    from sklearn.preprocessing import StandardScaler  # type: ignore[import-untyped]

    if len(np.unique(y_train)) < 2:
        pred = np.full(len(y_test), y_train[0])
        return {**_scores(y_test, pred), "converged": None, "note": "one class in train"}
    clf = make_pipeline(
        StandardScaler(), LogisticRegression(C=inv_reg, max_iter=max_iter, random_state=seed)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(x_train, y_train)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return {**_scores(y_test, clf.predict(x_test)), "converged": converged}


def majority_scores(y_train: np.ndarray, y_test: np.ndarray) -> dict[str, Any]:
    """Predict the train split's majority class for every test image."""
    majority = bool(np.mean(y_train) > 0.5)
    return {**_scores(y_test, np.full(len(y_test), majority)), "converged": None}


def probe_attributes(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    names: Sequence[str],
    **fit_kw: Any,
) -> dict[str, dict[str, Any]]:
    """fit_probe per attribute (column of the boolean label matrices), keyed by name."""
    return {
        name: fit_probe(x_train, y_train[:, a], x_test, y_test[:, a], **fit_kw)
        for a, name in enumerate(names)
    }


def mean_scores(per_attr: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    return {
        metric: float(np.mean([r[metric] for r in per_attr.values()]))
        for metric in ("accuracy", "balanced_accuracy")
    }


# ----- the Table 1 protocol -----------------------------------------------------------------------
def attribute_labels(store: Any) -> tuple[list[str], np.ndarray]:
    """Attribute names and the (N, A) boolean label matrix (True = attribute present)."""
    if store.attributes is None or not store.attribute_names:
        raise ValueError(
            f"activation store {getattr(store, 'path', '?')} has no attribute labels "
            "(attributes.npy); probes need a labelled data set (CelebA layout or toyfaces)"
        )
    return list(store.attribute_names), np.asarray(store.attributes) > 0


def build_methods(
    store: Any,
    sae: Path,
    flat_sae: Path | None,
    train_rows: np.ndarray,
    n: int,
    threshold_k: int | str | None,
    target: float,
    seed: int,
    batch: int,
    device: str | torch.device = "cpu",
) -> list[Method]:
    methods = [sae_method("sae", "SAE", sae, store, threshold_k, target, seed, device)]
    if flat_sae is not None:
        methods.append(
            sae_method("flat_sae", "flat SAE", flat_sae, store, threshold_k, target, seed, device)
        )
    methods.append(pca_method(store, train_rows, n, batch))
    methods.append(random_method(store, n, seed))
    return methods


def run_probe(
    store: Any,
    sae: Path,
    flat_sae: Path | None = None,
    n_components: int = 512,
    threshold_k: int | str | None = "auto",
    target: float = 0.95,
    seed: int = 0,
    batch: int = 64,
    inv_reg: float = 1.0,
    max_iter: int = 1000,
    test_split: str = "test",
    blas_threads: int | None = 1,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """All methods × attributes on (train, test_split); returns the probe.json document.
    The SAEs encode on `device`; PCA, the random baseline and the probes run on the CPU.

    blas_threads caps the BLAS pool of PCA and the probes (None: library default). One thread is
    the default because these problems are small and, on a shared machine, idle BLAS threads spin:
    lbfgs on 240 × 32 features took 5x longer with two threads than with one.
    """
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    from hsae.utils.splits import split_rows

    if n_components < 1:
        raise ValueError(f"--n-components must be >= 1, got {n_components}")
    names, labels = attribute_labels(store)
    train_rows, test_rows = split_rows(store, "train"), split_rows(store, test_split)
    with threadpool_limits(limits=blas_threads):
        methods = build_methods(
            store, sae, flat_sae, train_rows, n_components, threshold_k, target, seed, batch, device
        )
        select_columns(store, train_rows, methods, n_components, batch)
        x_train = extract_features(store, train_rows, methods, batch)
        x_test = extract_features(store, test_rows, methods, batch)
        y_train, y_test = labels[train_rows], labels[test_rows]
        fit_kw = {"seed": seed, "inv_reg": inv_reg, "max_iter": max_iter}
        results = {
            m.key: probe_attributes(x_train[m.key], y_train, x_test[m.key], y_test, names, **fit_kw)
            for m in methods
        }
    results[MAJORITY] = {
        name: majority_scores(y_train[:, a], y_test[:, a]) for a, name in enumerate(names)
    }
    doc = summary(names, y_train, y_test, methods, results)
    return {**doc, "test_split": test_split}


def summary(
    names: Sequence[str],
    y_train: np.ndarray,
    y_test: np.ndarray,
    methods: Sequence[Method],
    results: dict[str, dict[str, dict[str, Any]]],
) -> dict[str, Any]:
    """The probe.json body: split sizes, label balance, methods, per-attribute and mean scores."""
    method_docs = [{"key": m.key, "name": m.name, **m.info} for m in methods]
    method_docs.append({"key": MAJORITY, "name": MAJORITY, "n_features": 0})
    return {
        "attributes": list(names),
        "n_train": len(y_train),
        "n_test": len(y_test),
        "positive_rate_train": dict(zip(names, y_train.mean(0).tolist(), strict=True)),
        "positive_rate_test": dict(zip(names, y_test.mean(0).tolist(), strict=True)),
        "methods": method_docs,
        "results": results,
        "mean": {key: mean_scores(r) for key, r in results.items()},
    }


# ----- outputs ------------------------------------------------------------------------------------
def _score_table(doc: Mapping[str, Any], metric: str) -> list[str]:
    """One markdown table: attributes × methods, the best learned probe per row in bold."""
    methods = doc["methods"]
    learned = [m["key"] for m in methods if m["key"] != MAJORITY]
    lines = [
        "| attribute | test positives | " + " | ".join(m["name"] for m in methods) + " |",
        "|---|" + "---:|" * (len(methods) + 1),
    ]
    res, pos = doc["results"], doc["positive_rate_test"]
    for attr in doc["attributes"]:
        vals = {m["key"]: res[m["key"]][attr][metric] for m in methods}
        lines.append(_score_row(attr, f"{100 * pos[attr]:.0f} %", methods, vals, learned))
    means = {m["key"]: doc["mean"][m["key"]][metric] for m in methods}
    lines.append(_score_row("**mean**", "", methods, means, learned))
    return lines


def _score_row(
    label: str,
    pos: str,
    methods: Sequence[Mapping[str, Any]],
    vals: Mapping[str, float],
    learned: Sequence[str],
) -> str:
    best = max(vals[k] for k in learned)
    cells = [
        f"**{vals[m['key']]:.3f}**"
        if m["key"] in learned and vals[m["key"]] == best
        else f"{vals[m['key']]:.3f}"
        for m in methods
    ]
    return f"| {label} | {pos} | " + " | ".join(cells) + " |"


def _method_note(m: Mapping[str, Any]) -> str:
    key = m["key"]
    if key in ("sae", "flat_sae"):
        k = m.get("threshold_k")
        thr = "no thresholding" if k is None else f"eq. 9 threshold k={k}"
        if "threshold_sample_sparsity" in m:
            thr += f" (sparsity {m['threshold_sample_sparsity']:.3f} on a train sample)"
        return (
            f"- {m['name']}: `{m['source']}` ({m['architecture']}, L={m['n_latents']}), {thr}; "
            f"top {m['n_features']} of {m['n_columns_total']} code columns by train mean "
            f"({m['n_columns_active']} non-zero on some train image)"
        )
    if key == "pca":
        cap = ""
        if "capped_from" in m:
            cap = f" (capped from {m['capped_from']}: PCA has at most min(train images − 1, C·K·K))"
        return (
            f"- {m['name']}: PCA of raw h fitted on {m['fitted_on_train_images']} train images{cap}"
        )
    if key == "random":
        return f"- {m['name']}: raw h times a fixed N(0, 1) matrix (seed {m['seed']})"
    return f"- {m['name']}: predicts the train split's majority class (chance reference)"


def format_table(doc: Mapping[str, Any]) -> str:
    """table.md: accuracy and balanced accuracy tables (attributes × methods, mean row), notes."""
    head = (
        f"Linear probes (paper Table 1 protocol): logistic regression on standardised features, "
        f"fitted on {doc['n_train']} train images, scored on {doc['n_test']} "
        f"{doc['test_split']} images."
    )
    lines = ["# Attribute probes", "", head, "", "## Accuracy", ""]
    lines += _score_table(doc, "accuracy")
    lines += ["", "## Balanced accuracy", "", "Mean of the two per-class recalls (chance 0.5).", ""]
    lines += _score_table(doc, "balanced_accuracy")
    lines += ["", "## Methods", ""] + [_method_note(m) for m in doc["methods"]]
    unconverged = sorted(
        f"{key}/{attr}"
        for key, per in doc["results"].items()
        for attr, r in per.items()
        if r.get("converged") is False
    )
    if unconverged:
        lines += ["", f"Not converged (raise --max-iter): {', '.join(unconverged)}"]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, doc: dict[str, Any]) -> None:
    from hsae.utils.io import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / PROBE_FILE, doc)
    atomic_write_text(out / TABLE_FILE, format_table(doc))


# ----- command ------------------------------------------------------------------------------------
