"""Where a component fires on the K×K map of h_t, drawn for its feature card.

For a component (token m, latent j) and its max-activating images, the map is gradient × input of
its encoder pre-activation with respect to h, summed over channels and averaged over the images:
for the linear encoders of every SAE here it splits the part of the pre-activation that h drives
exactly over the K×K positions (what is left is the bias and the context terms). A channel-aware
component reads one channel, so its map is that channel's weighted map; a spatial one reads one
position; a flat one all of h.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAP_PX = 96  # the K×K map is drawn this many pixels wide


@dataclass(frozen=True)
class Wanted:
    """A component and the store rows whose h the map averages over."""

    token: int
    latent: int
    rows: tuple[int, ...]


def firing_maps(acts: Path, sae_dir: Path, wanted: Sequence[Wanted]) -> list[np.ndarray | None]:
    """One (K, K) map per wanted component (None where it has no rows)."""
    import torch

    from hsae.data.store import ActivationStore
    from hsae.sae import load_sae
    from hsae.sae.threshold import codes_as_tokens

    store = ActivationStore(acts)
    sae = load_sae(sae_dir).eval()
    maps: list[np.ndarray | None] = []
    for w in wanted:
        if not w.rows:
            maps.append(None)
            continue
        rows = np.asarray(sorted(set(w.rows)), dtype=np.int64)
        h = torch.from_numpy(np.asarray(store[rows], dtype=np.float32)).to(sae.W_enc.dtype)
        h.requires_grad_(True)
        pre = codes_as_tokens(sae.pre_activation(h))[:, w.token, w.latent]
        (grad,) = torch.autograd.grad(pre.sum(), h)
        maps.append((grad * h).detach().sum(dim=1).mean(dim=0).double().numpy())
    return maps


def map_png(m: np.ndarray, px: int = MAP_PX) -> bytes:
    """The map as a PNG: red where h raises the pre-activation, blue where it lowers it."""
    from matplotlib import colormaps
    from PIL import Image

    scale = float(np.abs(m).max()) or 1.0
    rgb = colormaps["RdBu_r"]((m / scale + 1) / 2)[..., :3]
    img = Image.fromarray((rgb * 255).round().astype(np.uint8))
    side = max(1, px // max(m.shape))
    img = img.resize((m.shape[1] * side, m.shape[0] * side), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def describe(m: np.ndarray) -> str:
    """Where the map peaks, as text for the caption: '(row, col) of K×K'."""
    r, c = np.unravel_index(int(np.argmax(np.abs(m))), m.shape)
    return f"peak at row {r}, column {c} of {m.shape[0]}×{m.shape[1]}"
