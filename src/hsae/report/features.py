"""The features section: one card per feature, from `features.json` and the grids beside it.

A card names its component (token:latent, flat index k) and its firing figures, and shows its
max-activating images (its row of the stage's grid), where it fires on the K×K map (computed from
RUN/acts and RUN/sae, see `report.firing`) and, when an edit folder of the run edited that
component alone, the edit's strip. Cards come in two groups: the best component per attribute
(AUROC) and the top components by the stage's ranking. A features folder without a readable
features.json falls back to the generic folder rendering.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsae.report.collect import Collector
from hsae.report.firing import Wanted, describe, firing_maps, map_png
from hsae.report.stages import read_json_or_none
from hsae.report.strips import cut_rows
from hsae.report.view import Block, Card, Figure, Headline, as_dict, fmt, sized

FEATURES_FILE = "features.json"
MAP_SHOWN_PX = 120  # the K×K map on the page, beside its strip
GRID_FILES = {"top_grid": "max_activating.png", "attribute_grid": "attribute_components.png"}


@dataclass
class FeatureCards:
    blocks: list[Block]
    headline: Headline | None
    claimed: dict[str, str]  # grid files shown as cards → the anchor of their cards
    n_images: int


def _components(doc: Mapping[str, Any]) -> tuple[list[dict], list[tuple[str, dict]]]:
    tops = [c for c in doc.get("top_components") or [] if isinstance(c, dict) and "component" in c]
    attrs = as_dict(doc.get("attributes"))
    best = [(n, r["best"]) for n, r in attrs.items() if isinstance(r, dict) and r.get("best")]
    return tops, best


def _grid_file(doc: Mapping[str, Any], key: str) -> str:
    files = as_dict(doc.get("files"))
    return str(files.get(key) or GRID_FILES[key])


def _strips(
    folder: Path, name: str, labels: Sequence[str], col: Collector, tag: str
) -> list[Figure | None]:
    """Each grid row as its own figure (None for all when the grid is missing or ragged)."""
    cut = cut_rows(folder / name, len(labels))
    if cut is None:
        return [None] * len(labels)
    stem = Path(name).stem
    figs: list[Figure | None] = []
    for i, (data, label) in enumerate(zip(cut, labels, strict=True)):
        rel = f"images/{tag}/{stem}/row{i:03d}.png"
        url = col.write(rel, data)
        figs.append(sized(url, label, col.out / rel))
    return figs


def _maps(run: Path, comps: Sequence[dict], n: int) -> tuple[list[Any], str]:
    """Firing maps of comps (None each, with the reason, when acts/ or sae/ cannot serve)."""
    if not (run / "acts" / "manifest.json").is_file() or not (run / "sae" / "cfg.json").is_file():
        return [None] * len(comps), "no K×K maps: the run has no acts/ and sae/"
    wanted = [
        Wanted(int(c.get("token", 0)), int(c.get("latent", 0)), tuple(c.get("top_rows", [])[:n]))
        for c in comps
    ]
    try:
        return list(firing_maps(run / "acts", run / "sae", wanted)), ""
    except (OSError, ValueError, IndexError, RuntimeError, KeyError) as e:
        return [None] * len(comps), f"no K×K maps: {e}"


def _map_figure(m: Any, comp: str, n: int, col: Collector, tag: str, i: int) -> Figure | None:
    if m is None:
        return None
    url = col.write(f"images/{tag}/maps/{i:03d}.png", map_png(m))
    caption = (
        f"where {comp} fires: its input over the K×K map of h_t, mean of its {n} top images "
        f"(red raises it, blue lowers it; {describe(m)})"
    )
    return Figure(url, caption, MAP_SHOWN_PX, MAP_SHOWN_PX, pixel=True)


def _top_values(c: Mapping[str, Any]) -> str:
    vals = [v for v in c.get("top_values") or [] if isinstance(v, int | float)]
    return ", ".join(f"{v:.3g}" for v in vals[:8])


def _attribute_card(name: str, b: dict, figs: list[Figure | None]) -> Card:
    sign = "+" if b.get("sign", 1) > 0 else "−"
    facts = [
        ("flat index k", fmt(b.get("flat_index"))),
        ("AUROC train / test", f"{fmt(b.get('auroc_train'), '.3f')} / "
                               f"{fmt(b.get('auroc_test'), '.3f')}"),
        ("fires with / without (train)", f"{fmt(b.get('freq_pos_train'), '.2f')} / "
                                         f"{fmt(b.get('freq_neg_train'), '.2f')}"),
        ("mean activation", fmt(b.get("mean"), ".3g")),
        ("firing frequency", fmt(b.get("freq"), ".3f")),
    ]  # fmt: skip
    return Card(
        f"{name}: component {b['component']}",
        f"features-attr-{name}",
        f"sign {sign}: fires {'more' if sign == '+' else 'less'} when {name} is present",
        facts,
        [f for f in figs if f is not None],
    )


def _top_card(c: dict, figs: list[Figure | None], rank_by: str) -> Card:
    facts = [
        ("flat index k", fmt(c.get("flat_index"))),
        ("mean activation", fmt(c.get("mean"), ".3g")),
        ("firing frequency", fmt(c.get("freq"), ".3f")),
        ("mean when firing", fmt(c.get("mean_active"), ".3g")),
        ("max", fmt(c.get("max"), ".3g")),
        ("top activations", _top_values(c)),
    ]
    title = f"component {c['component']}"
    sub = f"rank {c.get('rank', '?')} by {rank_by}"
    return Card(title, f"features-top-{c['component']}", sub, facts,
                [f for f in figs if f is not None])  # fmt: skip


def feature_cards(
    run: Path, folder: Path, col: Collector, edits: Mapping[str, list[Figure]] | None = None
) -> FeatureCards | None:
    """Cards for the features folder, or None when its features.json cannot be read.

    `edits` maps a component to the edit strips of the run that edited it alone.
    """
    doc = read_json_or_none(folder / FEATURES_FILE)
    if not isinstance(doc, dict):
        return None
    tops, best = _components(doc)
    if not tops and not best:
        return None
    settings = as_dict(doc.get("settings"))
    rank_by, tag = str(settings.get("rank_by", "mean")), f"features/{folder.name}"
    grids = {key: _grid_file(doc, key) for key in GRID_FILES}
    strips = _all_strips(folder, grids, tops, best, int(settings.get("n_images") or 0), col, tag)
    comps = [b for _, b in best] + tops
    maps, map_note = _all_maps(run, comps, col, tag)
    edits = edits or {}

    def figs(i: int, c: dict) -> list[Figure | None]:
        return [strips[i], maps[i], *edits.get(str(c["component"]), [])]

    attr_cards = [_attribute_card(n, b, figs(i, b)) for i, (n, b) in enumerate(best)]
    top_cards = [_top_card(c, figs(len(best) + i, c), rank_by) for i, c in enumerate(tops)]
    blocks = [Block("text", text=map_note, css="not-run")] if map_note else []
    claimed = {}
    for key, anchor, cards, title in (
        ("attribute_grid", "features-attr", attr_cards, "Best component per attribute"),
        ("top_grid", "features-top", top_cards, f"Top {len(top_cards)} components by {rank_by}"),
    ):
        if cards:
            blocks += [Block("heading", text=title, anchor=anchor), Block("cards", cards=cards)]
            if cards[0].figures and strips[(0 if key == "attribute_grid" else len(best))]:
                claimed[grids[key]] = anchor  # cut into the cards: not shown whole again
    n_shown = sum(len(c.figures) for c in attr_cards + top_cards)
    return FeatureCards(blocks, features_headline(best), claimed, n_shown)


def _all_strips(
    folder: Path,
    grids: Mapping[str, str],
    tops: Sequence[dict],
    best: Sequence[tuple[str, dict]],
    n_img: int,
    col: Collector,
    tag: str,
) -> list[Figure | None]:
    """The grid rows of the attribute cards, then of the top-component cards."""

    def label(c: Mapping[str, Any], what: str) -> str:
        n = len(c.get("top_rows") or [])
        return f"{what}: max-activating, {n} of {n_img} images, best first"

    attr = [label(b, f"{n}: component {b['component']}") for n, b in best]
    top = [label(c, f"component {c['component']}") for c in tops]
    return _strips(folder, grids["attribute_grid"], attr, col, tag) + _strips(
        folder, grids["top_grid"], top, col, tag
    )


def _all_maps(
    run: Path, comps: Sequence[dict], col: Collector, tag: str
) -> tuple[list[Figure | None], str]:
    """The K×K map figure of each component (None each, with the reason, when not computable)."""
    n_map = max((len(c.get("top_rows") or []) for c in comps), default=0)
    maps, note = _maps(run, comps, n_map)
    figs = [
        _map_figure(m, str(c["component"]), min(n_map, len(c.get("top_rows") or [])), col, tag, i)
        for i, (m, c) in enumerate(zip(maps, comps, strict=True))
    ]
    return figs, note


def features_headline(best: Sequence[tuple[str, dict]]) -> Headline | None:
    """The attribute one component separates best (test AUROC when there is one)."""

    def sep(b: Mapping[str, Any]) -> float:
        auc = b.get("auroc_test") if b.get("auroc_test") is not None else b.get("auroc_train")
        return abs(float(auc) - 0.5) if isinstance(auc, int | float) else -1.0

    scored = [(sep(b), n, b) for n, b in best if sep(b) >= 0]
    if not scored:
        return None
    _, name, b = max(scored, key=lambda t: t[0])
    split = "test" if b.get("auroc_test") is not None else "train"
    auc = float(b["auroc_test"] if split == "test" else b["auroc_train"])  # sep() checked it
    # AUROC below 0.5 is a component that fires on the attribute's absence: as a separator it is
    # as good as 1 − AUROC, which is the number a reader compares across attributes.
    absent = " (it fires when the attribute is absent)" if auc < 0.5 else ""
    return Headline(
        fmt(max(auc, 1.0 - auc), ".3f"),
        f"AUROC ({split}) of the best single component: {name} → {b['component']}{absent}",
        f"0.5 is chance; {len(best)} attributes have a best component",
    )
