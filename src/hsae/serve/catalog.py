"""The feature list: every SAE latent with its firing rate, AUROC per attribute and measured effect.

A feature here is an SAE latent j at all its tokens (the editing unit `hsae edit --latent J` and
the editor default, docs/editing.md). Its figures come from one streaming pass of the SAE over
the first `n_rows` train rows of the run's store (`editing.selection.code_stats`, raw codes):

- firing rate: the fraction of (image, token) codes where it is > 0; "images": the fraction of
  images where it fires at one token at least;
- AUROC per attribute of its latent-wide score Σ_t α_tj (the handle `hsae editbench` ranks by);
- measured effect: the test flip rates `hsae editbench` measured for it, at the matched size,
  where the benchmark selected this latent;
- its top images (highest score) and where it fires on the K×K map (gradient × input of the
  score, summed over channels and averaged over its top images: `report.firing`'s map for a
  whole latent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hsae.editing.selection import CodeStats, code_stats, store_h
from hsae.sae.base import BaseSAE
from hsae.sae.threshold import codes_as_tokens
from hsae.serve.run import InputError
from hsae.utils.splits import split_rows

SORTS = ("latent", "firing", "images", "mean", "auroc", "effect")


@dataclass
class Effect:
    """One editbench measurement of a latent: test flip rates at the matched size."""

    attribute: str
    label: str  # the benchmark's row label, e.g. "ca latent add (effect)"
    window: str
    add: float | None
    remove: float | None
    size_add: float | None
    size_remove: float | None

    @property
    def best(self) -> float:
        return max((v for v in (self.add, self.remove) if v is not None), default=-1.0)


@dataclass
class Feature:
    latent: int
    firing: float
    images: float
    mean: float
    abar: float
    auroc: dict[str, float]
    effects: list[Effect] = field(default_factory=list)

    @property
    def best_attribute(self) -> tuple[str, float] | None:
        """The attribute its score separates best, with that AUROC (< 0.5: fires on absence)."""
        known = [(a, v) for a, v in self.auroc.items() if math.isfinite(v)]
        return max(known, key=lambda av: abs(av[1] - 0.5)) if known else None

    @property
    def effect(self) -> float | None:
        return max(e.best for e in self.effects) if self.effects else None

    def words(self) -> str:
        """What a search matches: the latent number, its best attribute and measured ones."""
        best = self.best_attribute
        names = [best[0]] if best else []
        return " ".join([str(self.latent), *names, *(e.attribute for e in self.effects)]).lower()


def rank_auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC of every column of scores (N, L) for bool labels (N,), ties counted half; NaN when
    a class is absent. Mann-Whitney U from average ranks: one sort for all columns."""
    from scipy.stats import rankdata

    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(scores.shape[1], np.nan)
    ranks = rankdata(scores, axis=0)
    u = ranks[y].sum(axis=0) - n_pos * (n_pos + 1) / 2
    return np.asarray(u / (n_pos * n_neg), dtype=np.float64)


class Catalog:
    """Every latent's figures, computed once when the explorer starts."""

    def __init__(
        self, sae: BaseSAE, store: Any, n_rows: int = 512, editbench: dict | None = None
    ) -> None:
        self.sae, self.store = sae, store
        self.n_latents = int(sae.cfg.n_latents)
        self.attribute_names: list[str] = []
        self.rows = np.zeros(0, dtype=np.int64)
        self.stats: CodeStats | None = None
        if store is not None:
            self.rows = split_rows(store, "train")[: max(int(n_rows), 1)]
            self.stats = code_stats(sae, store, self.rows)
            self.attribute_names = list(store.attribute_names)
        self.features = self._features()
        self.effect_notes = self._add_effects(editbench)
        self._maps: dict[int, np.ndarray] = {}

    def _features(self) -> list[Feature]:
        if self.stats is None:
            nan = float("nan")
            return [Feature(j, nan, nan, nan, nan, {}) for j in range(self.n_latents)]
        st = self.stats
        labels = self.store.attributes
        aurocs: dict[str, np.ndarray] = {}
        if labels is not None:
            for a, name in enumerate(self.attribute_names):
                aurocs[name] = rank_auroc(st.score, np.asarray(labels)[self.rows, a] > 0)
        firing = st.freq.mean(0).numpy()
        images = (st.score > 0).mean(0)
        mean = st.mean.mean(0).numpy()
        abar = np.array([float(st.latent_abar(j).mean()) for j in range(self.n_latents)])
        return [
            Feature(j, float(firing[j]), float(images[j]), float(mean[j]), float(abar[j]),
                    {n: float(v[j]) for n, v in aurocs.items()})
            for j in range(self.n_latents)
        ]  # fmt: skip

    def _add_effects(self, doc: dict | None) -> str:
        """Attach editbench's measured flips to the latents it selected; say what was found."""
        if not doc:
            return "no editbench results in this run"
        saes = (doc.get("settings") or {}).get("saes") or {}
        mine = [n for n, arch in saes.items() if arch == self.sae.cfg.architecture]
        if len(mine) != 1:
            return f"editbench measured SAEs {sorted(saes)}; none is uniquely this run's SAE"
        found = 0
        for attr, res in (doc.get("attributes") or {}).items():
            for effect, latent in _latent_effects(attr, res, mine[0]):
                if 0 <= latent < self.n_latents:
                    self.features[latent].effects.append(effect)
                    found += 1
        return f"{found} editbench measurements of latents of SAE {mine[0]!r}"

    # ----- queries ------------------------------------------------------------------------------
    def get(self, latent: int) -> Feature:
        if not 0 <= latent < self.n_latents:
            raise InputError(
                f"unknown feature: latent {latent}; this SAE has latents 0..{self.n_latents - 1}",
                404,
            )
        return self.features[latent]

    def query(self, q: str = "", sort: str = "firing", attribute: str | None = None) -> list:
        """Features matching every word of q, sorted (descending; `latent` ascending)."""
        if sort not in SORTS:
            raise InputError(f"unknown sort {sort!r}; expected one of {', '.join(SORTS)}")
        if attribute and attribute not in self.attribute_names:
            raise InputError(f"unknown attribute {attribute!r}; the store labels "
                             f"{', '.join(self.attribute_names) or 'none'}")  # fmt: skip
        words = q.lower().split()
        hits = [f for f in self.features if all(w in f.words() for w in words)]
        return sorted(hits, key=lambda f: _sort_key(f, sort, attribute))

    def top_rows(self, latent: int, n: int = 8) -> list[tuple[int, float]]:
        """(store row, score) of the latent's n highest scores, of the rows it fires on."""
        if self.stats is None:
            return []
        score = self.stats.score[:, latent]
        order = np.argsort(-score, kind="stable")[:n]
        return [(int(self.rows[i]), float(score[i])) for i in order if score[i] > 0]

    def firing_map(self, latent: int, n: int = 8) -> np.ndarray | None:
        """(K, K) gradient × input of the latent's score over its top images (None: no rows)."""
        if latent in self._maps:
            return self._maps[latent]
        rows = [r for r, _ in self.top_rows(latent, n)]
        if not rows:
            return None
        h = store_h(self.store, np.asarray(sorted(rows))).to(self.sae.W_enc.dtype)
        h.requires_grad_(True)
        with torch.enable_grad():
            score = codes_as_tokens(self.sae.encode(h))[:, :, latent].sum()
            (grad,) = torch.autograd.grad(score, h)
        m = (grad * h).detach().sum(dim=1).mean(dim=0).double().numpy()
        self._maps[latent] = m
        return m


def _sort_key(f: Feature, sort: str, attribute: str | None) -> tuple[float, int]:
    def desc(v: float | None) -> float:  # missing and NaN last
        return -v if v is not None and math.isfinite(v) else math.inf

    if sort == "latent":
        return (0.0, f.latent)
    if sort == "auroc":
        if attribute:
            v = f.auroc.get(attribute)
            return (desc(abs(v - 0.5) if v is not None else None), f.latent)
        best = f.best_attribute
        return (desc(abs(best[1] - 0.5) if best else None), f.latent)
    if sort == "effect":
        return (desc(f.effect), f.latent)
    return (desc(getattr(f, sort)), f.latent)


def _latent_effects(attr: str, res: dict, sae_name: str) -> list[tuple[Effect, int]]:
    """(effect, latent) of each latent-wide feature of `sae_name` the benchmark measured."""
    out: list[tuple[Effect, int]] = []
    curves = res.get("curves") or {}
    if not curves:
        return out
    window = list(curves)[-1]
    matched = res.get("matched") or {}
    sizes = {d: (matched.get(d) or {}).get("size") for d in ("add", "remove")}
    for label, feat in (res.get("features") or {}).items():
        if not (isinstance(feat, dict) and feat.get("unit") == "latent"):
            continue
        if not label.startswith(f"{sae_name} latent") or feat.get("latent") is None:
            continue
        flips = {}
        for d, size in sizes.items():
            rows = curves[window].get(label) or []
            hit = [r for r in rows if r.get("direction") == d and r.get("target_size") == size]
            flips[d] = hit[0].get("flipped") if hit else None
        eff = Effect(attr, label, window, flips["add"], flips["remove"],
                     sizes["add"], sizes["remove"])  # fmt: skip
        out.append((eff, int(feat["latent"])))
    return out
