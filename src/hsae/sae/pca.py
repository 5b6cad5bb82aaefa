"""PCA baseline of Table 2 ("PCA-L"): a linear projection of the flattened C·K·K vector.

codes = (h − mean) · Vᵀ and ĥ = codes · V + mean, with V (L, C·K·K) the top L = cfg.n_latents
principal directions (orthonormal rows). Both maps are stored in the shared SAE layout as buffers
(no gradient training): W_enc = Vᵀ, b_enc = −mean·Vᵀ, W_dec = V, b_dec = mean, so the base
class's save/load (safetensors), `fold_input_scale` and `decoder_directions` work unchanged.

`fit(batches)` streams image batches into scikit-learn's IncrementalPCA in float64. IncrementalPCA
needs at least n_components rows in its first `partial_fit`, and each call costs an SVD of
(L + rows) × C·K·K, so small batches (the trainer's 32 images against L = 512) are buffered into
chunks of `chunk_rows` (default L) rows; only the final remainder may be shorter. Peak memory is
about (2L + chunk_rows) · C·K·K float64 values (≈ 1 GB for SD 2.1 with L = 512).
If the data have rank ≤ L the fit is exact; otherwise it is IncrementalPCA's approximation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from hsae.sae.base import BaseSAE, SAEConfig
from hsae.sae.registry import register

Batch = Tensor | np.ndarray | tuple[Any, ...] | list[Any]


@register("pca")
class PCABaseline(BaseSAE):
    """Closed-form PCA with L components; codes (B, L) are dense and signed (no ReLU)."""

    code_axes: ClassVar[tuple[str, ...]] = ("latent",)
    contexts: ClassVar[tuple[str, ...]] = ("none",)

    n_samples_seen: Tensor
    explained_variance: Tensor

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        d, n = cfg.d_in, cfg.n_latents
        if n > d:
            raise ValueError(f"pca: n_latents ({n}) cannot exceed C·K·K = d_in ({d})")
        self.register_buffer("W_enc", torch.zeros(d, n))
        self.register_buffer("b_enc", torch.zeros(n))
        self.register_buffer("W_dec", torch.zeros(n, d))
        self.register_buffer("b_dec", torch.zeros(d))
        # Variance of the data along each component (sklearn's explained_variance_, ddof = 1).
        self.register_buffer("explained_variance", torch.zeros(n))
        # 0 until fitted: encode/decode refuse to run on an all-zero projection.
        self.register_buffer("n_samples_seen", torch.zeros((), dtype=torch.long))

    @classmethod
    def token_dim(cls, n_channels: int, spatial: int) -> int:
        return n_channels * spatial * spatial

    @property
    def components(self) -> Tensor:
        """(L, d_in) principal directions, in order of decreasing variance."""
        return self.W_dec

    @property
    def mean(self) -> Tensor:
        """(d_in,) the data mean that PCA centres on."""
        return self.b_dec

    def target_tokens(self, h: Tensor) -> Tensor:
        return h.flatten(1)

    def activation(self, pre: Tensor) -> Tensor:
        return pre  # a projection: codes keep their sign

    def pre_activation(self, h: Tensor, image_index: Tensor | None = None) -> Tensor:
        self.check_input(h)
        self._require_fit()
        return self.target_tokens(h) @ self.W_enc + self.b_enc

    def decode(self, codes: Tensor) -> Tensor:
        self.check_codes(codes, ())
        self._require_fit()
        k = self.cfg.spatial
        out = codes @ self.W_dec + self.b_dec
        return out.reshape(codes.shape[0], self.cfg.n_channels, k, k)

    def _require_fit(self) -> None:
        if int(self.n_samples_seen) == 0:
            raise RuntimeError("PCABaseline is not fitted: call .fit(batches) first")

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)
        self.explained_variance *= scale**2  # a variance: in squared units of h

    @torch.no_grad()
    def fit(
        self,
        batches: Iterable[Batch],
        max_images: int | None = None,
        chunk_rows: int | None = None,
    ) -> PCABaseline:
        """Fit on image batches h (B, C, K, K), replacing any previous fit; returns self.

        Items may be tensors/arrays or tuples whose first element is h (e.g. the trainer's
        `StoreBatches`, which is endless: pass `max_images` to stop it). Needs at least
        n_latents images in total; `chunk_rows` (≥ n_latents) rows go to each partial_fit.
        """
        # Imported here: slow to import, and only fitting needs it (sklearn ships no stubs).
        from sklearn.decomposition import IncrementalPCA  # type: ignore[import-untyped]

        n = self.cfg.n_latents
        chunk = n if chunk_rows is None else chunk_rows
        if chunk < n:
            raise ValueError(f"chunk_rows ({chunk}) must be >= n_latents ({n})")
        ipca = IncrementalPCA(n_components=n)
        pending: list[np.ndarray] = []
        n_pending = total = 0
        for rows in self._rows(batches, max_images):
            pending.append(rows)
            n_pending += len(rows)
            total += len(rows)
            if n_pending >= chunk:
                ipca.partial_fit(np.concatenate(pending))
                pending, n_pending = [], 0
        if total < n:
            raise ValueError(
                f"PCA with n_latents={n} components needs at least {n} images, got {total}"
            )
        if pending:  # after the first chunk, sklearn accepts a remainder of any size
            ipca.partial_fit(np.concatenate(pending))
        self._set_fit(ipca)
        return self

    def _rows(self, batches: Iterable[Batch], max_images: int | None) -> Iterator[np.ndarray]:
        """Each batch as float64 rows (B, C·K·K), stopping after `max_images` images."""
        it, left = iter(batches), max_images
        while left is None or left > 0:  # checked before next(): an endless source stays put
            item = next(it, None)
            if item is None:
                return
            h = torch.as_tensor(item[0] if isinstance(item, (tuple, list)) else item)
            self.check_input(h)
            h = h if left is None else h[:left]
            left = None if left is None else left - h.shape[0]
            if h.shape[0]:
                yield h.flatten(1).detach().cpu().double().numpy()

    def _set_fit(self, ipca: Any) -> None:
        comp = torch.from_numpy(ipca.components_)  # float64 (L, d_in), orthonormal rows
        mean = torch.from_numpy(ipca.mean_)
        self.W_dec.copy_(comp)
        self.W_enc.copy_(comp.T)
        self.b_dec.copy_(mean)
        self.b_enc.copy_(-(mean @ comp.T))  # centring folded into the bias, in float64
        self.explained_variance.copy_(torch.from_numpy(ipca.explained_variance_))
        self.n_samples_seen.fill_(int(ipca.n_samples_seen_))
