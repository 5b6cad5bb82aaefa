"""Code statistics of an SAE over an activation store, streamed in two passes: firing
frequency / mean / max of every component (pass 1), then the exact AUROC of each attribute's
candidate components (pass 2). No images, no outputs: `hsae.analysis.features` writes those."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from hsae.sae.base import BaseSAE
from hsae.sae.tokens import encode_tokens, n_tokens
from hsae.utils.splits import optional_split_rows

RANK_BY = ("mean", "freq", "max")
DEFAULT_TOP, DEFAULT_GRID_IMAGES, DEFAULT_CANDIDATES, DEFAULT_BATCH = 10, 8, 64, 64
RUNNERS_UP = 3  # per attribute, how many next-best components features.json lists


# ----- pass 1: streaming code statistics ----------------------------------------------------------
@dataclass
class CodeScan:
    """Per-component statistics of thresholded codes; arrays are indexed by flat k = m·L + j."""

    n_tokens: int
    n_latents: int
    threshold_k: int | None
    rows: np.ndarray  # store rows the statistics cover
    sum: np.ndarray  # (D,) float64
    fire: np.ndarray  # (D,) int64: images where the component is > 0
    max: np.ndarray  # (D,) float64
    top_values: np.ndarray  # (n_top, D) float32, descending per column
    top_rows: np.ndarray  # (n_top, D) store rows (-1: fewer images than n_top)
    attribute_names: list[str] = field(default_factory=list)
    labelled_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    n_pos: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (A,)
    pos: dict[str, np.ndarray] = field(default_factory=dict)  # sum / sq / fire: (A, D)
    lab: dict[str, np.ndarray] = field(default_factory=dict)  # sum / sq / fire: (D,)

    @property
    def n_images(self) -> int:
        return len(self.rows)

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.n_images, 1)

    @property
    def freq(self) -> np.ndarray:
        return self.fire / max(self.n_images, 1)

    @property
    def mean_active(self) -> np.ndarray:
        """Mean value over the images where the component fires (0 where it never does)."""
        return np.divide(self.sum, self.fire, out=np.zeros_like(self.sum), where=self.fire > 0)

    def component(self, flat: int) -> tuple[int, int]:
        return divmod(int(flat), self.n_latents)


def flat_codes(sae: BaseSAE, h: Tensor, threshold_k: int | None) -> Tensor:
    """(B, M·L) codes of h, thresholded by eq. 9 when k is given, test-time context."""
    return encode_tokens(sae, h, threshold_k).flatten(1).float().cpu()


def _batches(rows: np.ndarray, batch: int) -> list[np.ndarray]:
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    return [rows[i : i + batch] for i in range(0, len(rows), batch)]


def _store_h(store: Any, rows: np.ndarray, sae: BaseSAE) -> Tensor:
    h = torch.from_numpy(np.asarray(store[rows], dtype=np.float32))
    return h.to(sae.W_enc)  # the SAE's device and dtype


@torch.no_grad()
def scan_codes(
    sae: BaseSAE,
    store: Any,
    rows: np.ndarray,
    threshold_k: int | None = None,
    batch: int = DEFAULT_BATCH,
    n_top: int = DEFAULT_GRID_IMAGES,
    labelled_rows: np.ndarray | None = None,
    attributes: list[str] | None = None,
    progress: bool = False,
) -> CodeScan:
    """Pass 1 over the union of `rows` (component statistics, top images) and `labelled_rows`
    (per-attribute sums for `attributes`, default all of the store's), one batch at a time."""
    sae.eval()
    rows = np.asarray(rows, dtype=np.int64)
    lab_rows = np.zeros(0, np.int64) if labelled_rows is None else np.asarray(labelled_rows)
    names = list(store.attribute_names) if attributes is None else list(attributes)
    labels = _labels(store, names) if len(lab_rows) else None
    d = n_tokens(sae) * sae.cfg.n_latents
    scan = CodeScan(
        n_tokens=n_tokens(sae),
        n_latents=sae.cfg.n_latents,
        threshold_k=threshold_k,
        rows=rows,
        sum=np.zeros(d),
        fire=np.zeros(d, np.int64),
        max=np.full(d, -np.inf),  # -inf, not 0: dense baselines have signed codes
        top_values=np.full((n_top, d), -np.inf, np.float32),
        top_rows=np.full((n_top, d), -1, np.int64),
        attribute_names=names if labels is not None else [],
        labelled_rows=lab_rows.astype(np.int64),
    )
    top_v, top_r = torch.from_numpy(scan.top_values), torch.from_numpy(scan.top_rows)
    if labels is not None:
        scan.n_pos = labels[lab_rows].sum(axis=0).astype(np.float64)
        scan.pos = {s: np.zeros((len(names), d)) for s in ("sum", "sq", "fire")}
        scan.lab = {s: np.zeros(d) for s in ("sum", "sq", "fire")}
    order = np.union1d(rows, lab_rows).astype(np.int64)
    in_stats, in_lab = np.isin(order, rows), np.isin(order, lab_rows)
    steps = _batches(np.arange(len(order)), batch)
    for pos in tqdm(steps, desc="scan codes", unit="batch", disable=not progress, leave=False):
        idx = order[pos]
        codes = flat_codes(sae, _store_h(store, idx, sae), threshold_k)
        s = torch.from_numpy(in_stats[pos])
        if s.any():
            c = codes[s]
            scan.sum += c.double().sum(0).numpy()
            scan.fire += (c > 0).sum(0).numpy()
            scan.max = np.maximum(scan.max, c.amax(0).double().numpy())
            r = torch.from_numpy(idx[in_stats[pos]])
            vals = torch.cat([top_v, c])
            rws = torch.cat([top_r, r[:, None].expand(-1, c.shape[1])])
            top_v, which = vals.topk(n_top, dim=0)
            top_r = rws.gather(0, which)
        lab = in_lab[pos]
        if labels is not None and lab.any():
            _accumulate_labels(scan, codes[torch.from_numpy(lab)], labels[idx[lab]])
    scan.top_values, scan.top_rows = top_v.numpy(), top_r.numpy()
    return scan


def _accumulate_labels(scan: CodeScan, codes: Tensor, y: np.ndarray) -> None:
    """Add one batch's per-attribute sums: positives via a (A, b) @ (b, D) product."""
    c = codes.double()
    parts = {"sum": c, "sq": c * c, "fire": (c > 0).double()}
    pos = torch.from_numpy(y.T.astype(np.float64))
    for name, v in parts.items():
        scan.pos[name] += (pos @ v).numpy()
        scan.lab[name] += v.sum(0).numpy()


def _labels(store: Any, names: list[str]) -> np.ndarray:
    """Bool (N, A) labels of `names` for every store row, with errors naming what exists."""
    have = list(store.attribute_names)
    if store.attributes is None or not have:
        raise ValueError(f"activation store {store.path} has no attribute labels")
    missing = [a for a in names if a not in have]
    if missing:
        raise ValueError(f"attribute(s) {missing} not in store {store.path}; it has {have}")
    return np.asarray(store.attributes)[:, [have.index(a) for a in names]] > 0


# ----- top components -----------------------------------------------------------------------------
def top_components(scan: CodeScan, n: int = DEFAULT_TOP, rank_by: str = "mean") -> list[dict]:
    """The n components with the largest mean activation (or firing frequency, or max)."""
    if rank_by not in RANK_BY:
        raise ValueError(f"--rank-by must be one of {RANK_BY}, got {rank_by!r}")
    key = {"mean": scan.mean, "freq": scan.freq, "max": scan.max}[rank_by]
    # Stable sort on (-key, k): ties resolve to the lower flat index, deterministically.
    order = np.lexsort((np.arange(len(key)), -key))[:n]
    return [dict(rank=i + 1, **component_summary(scan, int(k))) for i, k in enumerate(order)]


def component_summary(scan: CodeScan, flat: int) -> dict[str, Any]:
    """Statistics of one component, with its max-activating (firing) rows, best first."""
    tok, lat = scan.component(flat)
    fired = scan.top_values[:, flat] > 0
    return {
        "component": f"{tok}:{lat}",
        "token": tok,
        "latent": lat,
        "flat_index": int(flat),
        "mean": float(scan.mean[flat]),
        "freq": float(scan.freq[flat]),
        "mean_active": float(scan.mean_active[flat]),
        "max": float(scan.max[flat]),
        "top_rows": scan.top_rows[fired, flat].tolist(),
        "top_values": scan.top_values[fired, flat].tolist(),
    }


# ----- pass 2: per-attribute AUROC ----------------------------------------------------------------
def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their average rank (as the Mann-Whitney U test needs)."""
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inv.reshape(-1)]


def auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC of each column of scores (N, K) for bool labels (N,); NaN if a class is absent.

    Mann-Whitney form: (sum of the positives' ranks − n₊(n₊+1)/2) / (n₊ n₋), ties averaged, which
    equals P(score₊ > score₋) + ½ P(score₊ = score₋) and sklearn's roc_auc_score.
    """
    s = np.asarray(scores, dtype=np.float64)
    s = s[:, None] if s.ndim == 1 else s
    y = np.asarray(labels).astype(bool)
    if len(y) != len(s):
        raise ValueError(f"{len(s)} score rows for {len(y)} labels")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(s.shape[1], np.nan)
    u = np.array([_average_ranks(s[:, j])[y].sum() for j in range(s.shape[1])])
    return (u - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def candidate_components(scan: CodeScan, n_candidates: int = DEFAULT_CANDIDATES) -> np.ndarray:
    """(A, n) flat indices per attribute: the top of |Cohen's d| and |Δ firing rate|, interleaved.

    Both statistics come from pass 1 over the labelled (train) rows. The firing-rate difference
    catches sparse components, whose AUROC is driven by *whether* they fire; Cohen's d catches
    components that fire on everything with different strength.
    """
    if not scan.pos:
        raise ValueError("the scan has no attribute statistics (no labelled rows)")
    if n_candidates < 1:
        raise ValueError(f"--candidates must be >= 1, got {n_candidates}")
    n_lab = float(len(scan.labelled_rows))
    n_pos = scan.n_pos[:, None]
    n_neg = n_lab - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_p = scan.pos["sum"] / n_pos
        mean_n = (scan.lab["sum"] - scan.pos["sum"]) / n_neg
        var_p = scan.pos["sq"] / n_pos - mean_p**2
        var_n = (scan.lab["sq"] - scan.pos["sq"]) / n_neg - mean_n**2
        d = np.abs(mean_p - mean_n) / np.sqrt(np.maximum((var_p + var_n) / 2, 0) + 1e-12)
        f = np.abs(scan.pos["fire"] / n_pos - (scan.lab["fire"] - scan.pos["fire"]) / n_neg)
    d, f = np.nan_to_num(d), np.nan_to_num(f)
    n = min(n_candidates, d.shape[1])
    out = np.empty((d.shape[0], n), np.int64)
    for a in range(d.shape[0]):
        # Interleave both rankings (stable: ties go to the lower k), keep first occurrences.
        both = np.stack([np.argsort(-d[a], kind="stable"), np.argsort(-f[a], kind="stable")], 1)
        both = both.reshape(-1)
        _, first = np.unique(both, return_index=True)
        out[a] = both[np.sort(first)][:n]
    return out


@torch.no_grad()
def gather_components(
    sae: BaseSAE,
    store: Any,
    rows: np.ndarray,
    flat_idx: np.ndarray,
    threshold_k: int | None = None,
    batch: int = DEFAULT_BATCH,
    progress: bool = False,
) -> np.ndarray:
    """(len(rows), K) values of the components `flat_idx` on store `rows` (pass 2)."""
    sae.eval()
    rows = np.asarray(rows, dtype=np.int64)
    cols = torch.as_tensor(np.asarray(flat_idx, dtype=np.int64))
    out = np.zeros((len(rows), len(cols)), np.float32)
    parts = _batches(np.arange(len(rows)), batch)
    for pos in tqdm(parts, desc="gather", unit="batch", disable=not progress, leave=False):
        codes = flat_codes(sae, _store_h(store, rows[pos], sae), threshold_k)
        out[pos] = codes[:, cols].numpy()
    return out


def best_components_per_attribute(
    sae: BaseSAE,
    store: Any,
    threshold_k: int | None = None,
    attributes: list[str] | None = None,
    n_candidates: int = DEFAULT_CANDIDATES,
    batch: int = DEFAULT_BATCH,
    scan: CodeScan | None = None,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Per attribute, the component whose train-split AUROC is furthest from 0.5, with its sign
    (+1 fires with the attribute, −1 anti-correlated) and its AUROC on the test split.

    A store without a partition selects on all rows and reports no test AUROC. `scan` may be a
    pass-1 scan whose labelled rows are the train rows (it is computed if not given).
    """
    train = optional_split_rows(store, "train")
    test = optional_split_rows(store, "test") if train is not None else None
    train = np.arange(len(store)) if train is None else train
    names = list(store.attribute_names) if attributes is None else list(attributes)
    if scan is None or not np.array_equal(scan.labelled_rows, train):
        scan = scan_codes(sae, store, train, threshold_k, batch, 1, train, names, progress=progress)
    if scan.attribute_names != names:
        raise ValueError(f"scan covers attributes {scan.attribute_names}, asked for {names}")
    cands = candidate_components(scan, n_candidates)
    uniq, where = np.unique(cands, return_inverse=True)
    where = where.reshape(cands.shape)
    eval_rows = train if test is None else np.concatenate([train, test])
    vals = gather_components(sae, store, eval_rows, uniq, threshold_k, batch, progress)
    labels = _labels(store, names)
    out = {}
    for a, name in enumerate(names):
        cols = where[a]
        auc_train = auroc(vals[: len(train), cols], labels[train, a])
        auc_test = auroc(vals[len(train) :, cols], labels[test, a]) if test is not None else None
        out[name] = _attribute_result(scan, name, a, uniq[cols], auc_train, auc_test, train, test)
    return out


def _attribute_result(
    scan: CodeScan,
    name: str,
    a: int,
    flat: np.ndarray,
    auc_train: np.ndarray,
    auc_test: np.ndarray | None,
    train: np.ndarray,
    test: np.ndarray | None,
) -> dict[str, Any]:
    n_pos, n_lab = float(scan.n_pos[a]), float(len(scan.labelled_rows))
    base: dict[str, Any] = {
        "attribute": name,
        "n_train": len(train),
        "n_pos_train": int(n_pos),
        "n_test": 0 if test is None else len(test),
        "n_candidates": len(flat),
    }
    if np.all(np.isnan(auc_train)):
        return {**base, "best": None, "runners_up": [], "note": "one class only in train split"}
    sep = np.where(np.isnan(auc_train), -1.0, np.abs(auc_train - 0.5))
    order = np.lexsort((flat, -sep))  # best separation first, ties to the lower flat index

    def entry(i: int) -> dict[str, Any]:
        k = int(flat[i])
        tok, lat = scan.component(k)
        fire_pos = scan.pos["fire"][a, k] / n_pos if n_pos else math.nan
        n_neg = n_lab - n_pos
        fire_neg = (scan.lab["fire"][k] - scan.pos["fire"][a, k]) / n_neg if n_neg else math.nan
        test_auc = None if auc_test is None else _finite(auc_test[i])
        return {
            "component": f"{tok}:{lat}",
            "token": tok,
            "latent": lat,
            "flat_index": k,
            "sign": 1 if auc_train[i] >= 0.5 else -1,
            "auroc_train": float(auc_train[i]),
            "auroc_test": test_auc,
            "freq_pos_train": float(fire_pos),
            "freq_neg_train": float(fire_neg),
        }

    ranked = [entry(int(i)) for i in order[: RUNNERS_UP + 1]]
    return {**base, "best": ranked[0], "runners_up": ranked[1:]}


def _finite(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)
