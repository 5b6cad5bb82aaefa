"""Feature discovery (`hsae features`): which SAE components fire, on what, for which attribute.

A component is one (token, latent) entry of an SAE code laid out as tokens (B, M, L) by
`codes_as_tokens`: for the channel-aware SAE token = channel c, so (c, j) is "channel c, latent j"
with the paper's flat index k = c·L + j; flat SAEs have M = 1, spatial SAEs one token per position.
Codes are thresholded per image by eq. 9 (`--threshold-k`, auto ≈ 95% sparsity as in the paper) and
computed with the test-time context (image_index=None) for every row, so train and test images are
encoded the same way and a component chosen on train means the same thing on test.

Two streaming passes over the memory-mapped store, `--batch` images at a time:

1. `scan_codes`: per component the mean activation (zeros included), firing frequency (fraction of
   images where it is > 0), max, a running top-n of (value, row) for max-activating images, and for
   labelled train rows per-attribute sums (positives / all) of values, squares and firings.
2. `best_components_per_attribute`: the exact AUROC of each attribute's candidate components on
   the train split, and on the test split for the winner. Candidates are the components ranked
   highest by two cheap train statistics from pass 1 (|Cohen's d| of the activation and |difference
   of firing rates|), interleaved; an exact AUROC of all M·L components would need every code of
   every train image in memory (65k values per image for the toy model). `--candidates` ≥ M·L
   makes it exhaustive.

AUROC is P(value on a positive > value on a negative) + ½ P(tie), so 0.5 is chance. The best
component maximises |AUROC − 0.5|: AUROC < 0.5 means the component is anti-correlated with the
attribute (sign −1: it fires *less* when the attribute is present), which is still a usable handle.

Outputs in `--out`: features.json (settings + top components + per-attribute best components),
table.md, components.npz (mean / freq / max of every component), max_activating.png (one row of
top images per top component) and attribute_components.png (one row per attribute: the images that
most activate its best component).
"""

from __future__ import annotations

import io
import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hsae.analysis.code_scan import (
    DEFAULT_BATCH,
    DEFAULT_CANDIDATES,
    DEFAULT_GRID_IMAGES,
    DEFAULT_TOP,
    RANK_BY,
    CodeScan,
    best_components_per_attribute,
    component_summary,
    scan_codes,
    top_components,
)
from hsae.sae.selection import resolve_threshold_k
from hsae.utils.splits import optional_split_rows

FEATURES_FILE, TABLE_FILE, STATS_FILE = "features.json", "table.md", "components.npz"
TOP_GRID_FILE, ATTRIBUTE_GRID_FILE = "max_activating.png", "attribute_components.png"
# Store-meta keys under which an extraction may record its image folder.
DATA_META_KEYS = ("data", "data_dir", "data_path")


# ----- threshold and images -----------------------------------------------------------------------
def resolve_data_dir(store: Any, data: Path | str | None) -> Path | None:
    """--data, else an image folder the store records (if it still exists), else None."""
    if data is not None:
        data = Path(data)
        if not data.is_dir():
            raise FileNotFoundError(f"--data {data} is not a folder (expected the store's images)")
        return data
    # Recorded under the run meta, or at the manifest's top level (outside what resume compares).
    for where in (getattr(store, "meta", {}), getattr(store, "manifest", {})):
        for key in DATA_META_KEYS:
            value = (where or {}).get(key)
            if isinstance(value, str) and Path(value).is_dir():
                return Path(value)
    return None


def image_paths(data: Path, ids: list[str]) -> list[Path]:
    """Files of the store image `ids` in `data` (CelebA layout or plain folder, as extracted)."""
    from hsae.data.images import ImageDataset

    ds = ImageDataset(data, size=1)  # size is unused until an image is read
    by_id = {r.id: r.path for r in ds.records}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(
            f"{len(missing)} store image id(s) are not in --data {data}, e.g. {missing[0]!r}: "
            "pass the folder the store was extracted from"
        )
    return [by_id[i] for i in ids]


def load_rows_images(store: Any, data: Path, rows: list[int] | np.ndarray, size: int) -> Tensor:
    """(n, 3, size, size) images in [-1, 1] of store rows, read from the data folder."""
    from hsae.data.images import load_image

    ids = [store.ids[int(r)] for r in rows]
    if not ids:
        return torch.zeros(0, 3, size, size)
    return torch.stack([load_image(p, size) for p in image_paths(data, ids)])


def image_size_of(store: Any, default: int = 64) -> int:
    """The model's image side as the store's meta records it (`model.image_size`)."""
    size = (getattr(store, "meta", {}) or {}).get("model", {}).get("image_size")
    return int(size) if size else default


def grid_rows(store: Any, data: Path, components: list[dict], n: int, size: int) -> list[Tensor]:
    """One row of n tiles per component: its firing top images, grey tiles where fewer fired."""
    rows = []
    for comp in components:
        imgs = load_rows_images(store, data, comp["top_rows"][:n], size)
        pad = torch.zeros(n - len(imgs), 3, size, size)  # 0 in [-1, 1] is mid-grey
        rows.append(torch.cat([imgs, pad]))
    return rows


# ----- the command --------------------------------------------------------------------------------
@dataclass
class FeaturesConfig:
    threshold_k: str | int | None = "auto"
    target_sparsity: float = 0.95
    split: str = "all"
    n_top: int = DEFAULT_TOP
    n_grid: int = DEFAULT_GRID_IMAGES
    rank_by: str = "mean"
    n_candidates: int = DEFAULT_CANDIDATES
    batch: int = DEFAULT_BATCH
    image_size: int | None = None
    seed: int = 0
    progress: bool = True


def run_features(
    store_path: Path | str,
    sae_path: Path | str,
    out: Path | str,
    data: Path | str | None = None,
    cfg: FeaturesConfig | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Everything `hsae features` does (the SAE encoding on `device`); returns features.json."""
    from hsae.data.store import ActivationStore
    from hsae.sae.selection import load_checked

    cfg = cfg or FeaturesConfig()
    if cfg.n_top < 1 or cfg.n_grid < 1:
        raise ValueError(f"--top and --n-images must be >= 1, got {cfg.n_top}, {cfg.n_grid}")
    if cfg.rank_by not in RANK_BY:
        raise ValueError(f"--rank-by must be one of {RANK_BY}, got {cfg.rank_by!r}")
    store = ActivationStore(store_path)
    sae = load_checked(Path(sae_path), store).eval().to(device)
    data_dir = resolve_data_dir(store, data)
    stat_rows = np.asarray(store.indices_for_split(cfg.split), dtype=np.int64)
    if stat_rows.size == 0:
        raise ValueError(f"activation store {store.path} has no rows in split {cfg.split!r}")
    k, k_info = resolve_threshold_k(
        sae, cfg.threshold_k, store, None, cfg.target_sparsity, cfg.seed
    )
    labelled = store.attributes is not None and bool(store.attribute_names)
    train = optional_split_rows(store, "train")
    train = np.arange(len(store)) if train is None else train
    scan = scan_codes(
        sae,
        store,
        stat_rows,
        k,
        cfg.batch,
        cfg.n_grid,
        train if labelled else None,
        progress=cfg.progress,
    )
    top = top_components(scan, cfg.n_top, cfg.rank_by)
    attrs = (
        best_components_per_attribute(
            sae, store, k, None, cfg.n_candidates, cfg.batch, scan, cfg.progress
        )
        if labelled
        else {}
    )
    out = Path(out)
    doc = {
        "command": shlex.join(sys.argv),
        "settings": {
            "store": str(store_path),
            "sae": str(sae_path),
            "data": None if data_dir is None else str(data_dir),
            "architecture": sae.cfg.architecture,
            "n_tokens": scan.n_tokens,
            "n_latents": scan.n_latents,
            **k_info,
            "split": cfg.split,
            "n_images": scan.n_images,
            "rank_by": cfg.rank_by,
            "n_candidates": cfg.n_candidates,
            "context": "test-time (image_index=None) for every row",
        },
        "top_components": _ids(top, store),
        "attributes": attrs,
        "files": {},
    }
    _add_attribute_tops(doc, scan, store)
    write_features(out, doc, scan, store, data_dir, cfg)
    return doc


def _ids(components: list[dict], store: Any) -> list[dict]:
    for c in components:
        c["top_ids"] = [store.ids[r] for r in c["top_rows"]]
    return components


def _add_attribute_tops(doc: dict, scan: CodeScan, store: Any) -> None:
    """Give each attribute's best component its max-activating images (from the same scan)."""
    for res in doc["attributes"].values():
        if res.get("best"):
            summary = component_summary(scan, res["best"]["flat_index"])
            res["best"].update(
                mean=summary["mean"],
                freq=summary["freq"],
                top_rows=summary["top_rows"],
                top_ids=[store.ids[r] for r in summary["top_rows"]],
            )


def write_features(
    out: Path, doc: dict, scan: CodeScan, store: Any, data_dir: Path | None, cfg: FeaturesConfig
) -> None:
    """features.json, table.md, components.npz and (with images) the two PNG grids."""
    from hsae.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(
        buf, mean=scan.mean, freq=scan.freq, max=scan.max, shape=[scan.n_tokens, scan.n_latents]
    )
    atomic_write_bytes(out / STATS_FILE, buf.getvalue())
    doc["files"]["stats"] = STATS_FILE
    if data_dir is not None:
        _write_grids(out, doc, store, data_dir, cfg)
    else:
        doc["files"]["note"] = (
            "no image grids: pass --data (the store's meta records no image folder)"
        )
    atomic_write_json(out / FEATURES_FILE, doc)
    atomic_write_text(out / TABLE_FILE, format_features_table(doc))


def _write_grids(out: Path, doc: dict, store: Any, data_dir: Path, cfg: FeaturesConfig) -> None:
    from hsae.utils.viz import save_grid

    size = cfg.image_size or image_size_of(store)
    save_grid(
        grid_rows(store, data_dir, doc["top_components"], cfg.n_grid, size), out / TOP_GRID_FILE
    )
    doc["files"]["top_grid"] = TOP_GRID_FILE
    best = [r["best"] for r in doc["attributes"].values() if r.get("best")]
    if best:
        save_grid(grid_rows(store, data_dir, best, cfg.n_grid, size), out / ATTRIBUTE_GRID_FILE)
        doc["files"]["attribute_grid"] = ATTRIBUTE_GRID_FILE


def _f(v: Any, spec: str = ".3f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_features_table(doc: dict) -> str:
    """Markdown: settings line, top-components table, per-attribute best-component table."""
    s = doc["settings"]
    k = s.get("threshold_k")
    how = (
        f"thresholded per image by eq. 9 with k={k}"
        + (
            f" (auto: target sparsity {s['target_sparsity']:g}, "
            f"{s['sample_sparsity']:.3f} on a train sample)"
            if "sample_sparsity" in s
            else ""
        )
        if k is not None
        else "not thresholded"
    )
    lines = [
        f"# SAE components of `{s['sae']}`",
        "",
        f"Codes of {s['n_images']} images (split `{s['split']}`) of `{s['store']}`, {how}. "
        f"A component is (token c, latent j), flat index k = c·{s['n_latents']} + j.",
        "",
        f"## Top {len(doc['top_components'])} components by {s['rank_by']}",
        "",
        "| rank | component c:j | k | mean | firing freq | mean when firing | max | top images |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in doc["top_components"]:
        ids = ", ".join(c["top_ids"][:3]) + (" …" if len(c["top_ids"]) > 3 else "")
        lines.append(
            f"| {c['rank']} | {c['component']} | {c['flat_index']} | {_f(c['mean'], '.3g')} | "
            f"{_f(c['freq'])} | {_f(c['mean_active'], '.3g')} | {_f(c['max'], '.3g')} | {ids} |"
        )
    if "top_grid" in doc["files"]:
        lines += ["", f"![max-activating images, one row per component]({TOP_GRID_FILE})"]
    lines += _attribute_lines(doc)
    if "note" in doc["files"]:
        lines += ["", f"Note: {doc['files']['note']}."]
    return "\n".join(lines) + "\n"


def _attribute_lines(doc: dict) -> list[str]:
    if not doc["attributes"]:
        return ["", "The store has no attribute labels: no per-attribute components."]
    first = next(iter(doc["attributes"].values()))
    lines = [
        "",
        "## Best component per attribute",
        "",
        f"Chosen by AUROC on the train split ({first['n_train']} images; "
        f"{first['n_candidates']} candidates per attribute), reported on the test split "
        f"({first['n_test']} images). Sign + : fires more when the attribute is present; "
        "− : anti-correlated (AUROC < 0.5).",
        "",
        "| attribute | component c:j | k | sign | AUROC train | AUROC test | "
        "firing freq with / without (train) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in doc["attributes"].items():
        b = r.get("best")
        if b is None:
            lines.append(f"| {name} | – | – | – | – | – | {r.get('note', '')} |")
            continue
        lines.append(
            f"| {name} | {b['component']} | {b['flat_index']} | {'+' if b['sign'] > 0 else '−'} | "
            f"{_f(b['auroc_train'])} | {_f(b['auroc_test'])} | "
            f"{_f(b['freq_pos_train'], '.2f')} / {_f(b['freq_neg_train'], '.2f')} |"
        )
    if "attribute_grid" in doc["files"]:
        lines += [
            "",
            f"![images that most activate each attribute's component]({ATTRIBUTE_GRID_FILE})",
        ]
    return lines
