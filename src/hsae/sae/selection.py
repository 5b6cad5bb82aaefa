"""Choosing and checking SAEs against an activation store: which codes are sparse, eq. 9's k
(fixed, or "auto" on a train sample), and the H-space shape check. The store is duck-typed
(`shape`, `splits`, `path`, row indexing), so this package imports no store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hsae.sae.base import BaseSAE
from hsae.sae.registry import load_sae
from hsae.sae.threshold import choose_k_for_sparsity, codes_as_tokens, sparsity, threshold_codes
from hsae.utils.splits import split_rows

# Dense baselines: their codes are signed projections, so thresholding them means nothing.
DENSE_ARCHITECTURES = ("pca", "random", "beta_vae")


TARGET_SPARSITY = 0.95


K_SAMPLE_IMAGES = 256


def is_sparse(model: BaseSAE) -> bool:
    """True for SAEs (non-negative codes that §3.3 thresholding applies to)."""
    return model.cfg.architecture not in DENSE_ARCHITECTURES


def check_compatible(model: BaseSAE, store: Any, model_src: str = "SAE") -> None:
    """Refuse a model whose H-space shape is not the store's, or that was trained on h of
    another diffusion model (id or weights) than the store's, naming both and the sources."""
    want = (model.cfg.n_channels, model.cfg.spatial, model.cfg.spatial)
    have = tuple(int(s) for s in store.shape[1:])
    where = f"the activation store {getattr(store, 'path', '?')}"
    if want != have:
        raise ValueError(
            f"{model_src} expects h of shape (C, K, K) = {want}, but {where} holds {have}"
        )
    record = (getattr(store, "meta", None) or {}).get("model")
    if not isinstance(record, dict):
        return  # a store without a model record: nothing to compare
    for field, key in (("model_id", "model_id"), ("model_weights", "weights")):
        mine, theirs = getattr(model.cfg, field, None), record.get(key)
        if mine is not None and theirs is not None and mine != theirs:
            raise ValueError(
                f"{model_src} was trained on h of model {model.cfg.model_id!r} (weights "
                f"{model.cfg.model_weights or 'unrecorded'}), but {where} holds h of "
                f"{record.get('model_id')!r} (weights {record.get('weights', 'unrecorded')}): "
                "train an SAE on this store, or use the store it was trained on"
            )


def train_sample_rows(store: Any, n: int = K_SAMPLE_IMAGES, seed: int = 0) -> np.ndarray:
    """Up to n train rows (all rows if the store has no partition), a fixed function of seed."""
    idx = split_rows(store, "train")
    rng = np.random.default_rng([seed, 0xE7A1])
    return np.sort(rng.choice(idx, size=min(n, len(idx)), replace=False))


@torch.no_grad()
def choose_threshold_k(
    model: BaseSAE, store: Any, rows: np.ndarray, target: float = TARGET_SPARSITY
) -> tuple[int, float]:
    """k whose thresholded sparsity on `rows` is closest to `target`, and that sparsity.

    Codes are computed with image_index=None, as for the test rows k will be applied to; the rows
    come from the train split so that k is not tuned on the eval set.
    """
    h = torch.from_numpy(np.asarray(store[rows])).to(model.W_enc)  # its device and dtype
    tokens = codes_as_tokens(model.eval().encode(h))
    k = choose_k_for_sparsity(tokens, target)
    return k, sparsity(threshold_codes(tokens, k))


def parse_threshold_k(value: str | int | None) -> int | str | None:
    """--threshold-k: "auto", "none" or a positive int."""
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return None
    if isinstance(value, str) and value.lower() == "auto":
        return "auto"
    try:
        k = int(value)
    except ValueError:
        raise ValueError(f"--threshold-k must be auto, none or an integer, got {value!r}") from None
    if k < 1:
        raise ValueError(f"--threshold-k must be >= 1, got {k}")
    return k


def resolve_threshold_k(
    sae: BaseSAE,
    spec: str | int | None,
    store: Any = None,
    h: Tensor | None = None,
    target: float = TARGET_SPARSITY,
    seed: int = 0,
) -> tuple[int | None, dict[str, Any]]:
    """--threshold-k (auto, none, K or their parsed forms) → (k or None, how it was chosen).

    auto: `choose_threshold_k` on a train-split sample of `store`; without a store, the k giving
    `target` sparsity on the codes of `h` (the edited images themselves; said so under "how").
    Dense baselines (PCA, β-VAE, random) are never thresholded.
    """
    spec = parse_threshold_k(spec)
    if spec is None:
        return None, {"threshold_k": None, "how": "none"}
    if not is_sparse(sae):
        return None, {"threshold_k": None, "how": f"none ({sae.cfg.architecture} codes are dense)"}
    if isinstance(spec, int):
        if spec > sae.cfg.n_latents:
            n, at = sae.cfg.n_latents, f" at {sae.source}" if sae.source else ""
            raise ValueError(
                f"--threshold-k {spec} exceeds the {n} latents of the SAE{at} (1..{n})"
            )
        return spec, {"threshold_k": spec, "how": f"{spec} (given)"}
    if store is not None:
        rows = train_sample_rows(store, seed=seed)
        k, s = choose_threshold_k(sae, store, rows, target)
        how = f"{k} (auto: sparsity {s:.3f} on {len(rows)} train rows of {store.path})"
    elif h is not None:
        tokens = codes_as_tokens(sae.eval().encode(h.to(sae.W_enc)))
        k = choose_k_for_sparsity(tokens, target)
        s = sparsity(threshold_codes(tokens, k))
        how = f"{k} (auto: sparsity {s:.3f} on the {len(h)} edited image(s); no store)"
    else:
        raise ValueError("--threshold-k auto needs an activation store (--store) or the images' h")
    return k, {"threshold_k": k, "target_sparsity": target, "sample_sparsity": s, "how": how}


def load_checked(path: Path, store: Any) -> BaseSAE:
    """load_sae(path) with the store/SAE shape check naming both paths."""
    model = load_sae(path)
    check_compatible(model, store, f"SAE {path}")
    return model
