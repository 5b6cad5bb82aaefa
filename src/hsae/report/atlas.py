"""The feature-atlas section: one card per latent of RUN/features/atlas.json (`hsae features
--atlas`), named by what it writes and what it fires on, with the images that drive it, its edit
at two sizes and its effect bars; the section opens with how many latents write the attribute
they fire on. Without atlas.json the section is "not run"; an unknown schema costs its cards."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hsae.editing.atlas_write import ATLAS_DIR, ATLAS_FILE, latent_label
from hsae.report.collect import Collector, images_in
from hsae.report.stages import read_json_or_none
from hsae.report.view import Block, Card, Figure, Headline, Section, as_dict, figure, fmt

FOLDER = "features"
ABOUT = (
    "What the top SAE latents write: the change of every attribute's classifier logit per unit "
    "of edit size ‖h̃−h‖/‖h‖ when the latent is added at all its tokens over the edit window, on "
    "validation images. Each latent is named by the attribute it moves most (writes) and the one "
    "its activation separates best on train (fires on)."
)
RANK_TEXT = {
    "auroc": "train AUROC (the attributes take turns)",
    "freq": "firing frequency",
    "mean": "mean activation",
}
HINT = "hsae features --store {run}/acts --sae {run}/sae --data DATA --out {run}/features --atlas"


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def atlas_claims(folder: Path) -> dict[str, str]:
    """The atlas's images in a features folder (shown as atlas cards, not in its gallery)."""
    sub = folder / ATLAS_DIR
    if not (folder / ATLAS_FILE).is_file() or not sub.is_dir():
        return {}
    return {p.relative_to(folder).as_posix(): "atlas" for p in images_in(sub)}


def atlas_headline(doc: Mapping[str, Any]) -> Headline | None:
    """k of N: the latents that write the attribute they fire on (same attribute and sign)."""
    summ = as_dict(doc.get("summary"))
    n, k = _num(summ.get("n_latents")), _num(summ.get("n_write_what_they_fire_on"))
    if n is None or k is None or n < 1:
        return None
    parts = []
    if (same := _num(summ.get("n_same_attribute"))) is not None:
        parts.append(f"{same:.0f} write the attribute they fire on with either sign")
    if (above := _num(summ.get("n_above_control"))) is not None:
        parts.append(f"{above:.0f} move an attribute more than a random direction of the same size")
    writers = [
        r
        for r in doc.get("latents") or []
        if _num(as_dict(as_dict(r).get("writes")).get("effect")) is not None
    ]
    if writers:
        best = max(writers, key=lambda r: abs(float(r["writes"]["effect"])))
        parts.append(
            f"strongest: latent {best.get('latent')} {latent_label(best)}, "
            f"{float(best['writes']['effect']):+.2f} logit per unit edit size"
        )
    return Headline(
        f"{k:.0f} of {n:.0f}",
        "latents write the attribute they fire on (same attribute and sign)",
        "; ".join(parts),
    )


def _facts(r: Mapping[str, Any]) -> list[tuple[str, str]]:
    w, f = as_dict(r.get("writes")), as_dict(r.get("fires_on"))
    a = str(w.get("attribute"))
    add, rem = as_dict(r.get("effect_add")).get(a), as_dict(r.get("effect_remove")).get(a)
    facts = [
        (f"effect on {a}", f"{fmt(w.get('effect'), '+.3f')} ± {fmt(w.get('se'), '.3f')} "
                           "logit per unit size"),
        ("add / remove (one-sided)", f"{fmt(add, '+.3f')} / {fmt(rem, '+.3f')}"),
        ("beats the random direction", "yes" if w.get("above_control") else "no"),
        (f"train AUROC for {f.get('attribute', '–')}", fmt(f.get("auroc_train"), ".3f")),
        ("picked for (train AUROC)", _picked(r)),
        ("firing frequency", fmt(r.get("freq"), ".3f")),
        ("measured edit size", fmt(r.get("size_measured"), ".3f")),
    ]  # fmt: skip
    return facts if w.get("attribute") is not None else facts[2:]


def _picked(r: Mapping[str, Any]) -> str:
    name = r.get("picked_for")
    if not isinstance(name, str):
        return "–"
    return f"{name} ({fmt(as_dict(r.get('auroc_train')).get(name), '.3f')})"


def _captions(r: Mapping[str, Any], s: Mapping[str, Any]) -> dict[str, str]:
    j, size = r.get("latent"), _num(s.get("size"))
    ids = ", ".join(str(i) for i in r.get("example_ids") or [])
    sizes = "" if size is None else f": −{2 * size:g}, −{size:g}, +{size:g}, +{2 * size:g}"
    n_top = len(r.get("top_ids") or [])
    return {
        "drives": f"latent {j} is driven by: its {n_top} train images with the largest "
        "latent-wide activation Σ_t α_tj, best first",
        "edits": f"latent {j} added to {ids or 'validation images'}, one row per image: the "
        f"unedited resume, then edit sizes ‖h̃−h‖/‖h‖{sizes}",
        "effects": f"latent {j}: logit change per unit edit size of every attribute (± SE over "
        f"{r.get('n_images', '?')} validation images; black tick: a random direction)",
    }


def atlas_card(folder: Path, r: Mapping[str, Any], s: Mapping[str, Any], col: Collector) -> Card:
    captions, files = _captions(r, s), as_dict(r.get("files"))
    figs: list[Figure] = []
    for key in ("drives", "edits", "effects"):
        rel = files.get(key)
        src = folder / str(rel) if isinstance(rel, str) else None
        if src is not None and ".." not in Path(str(rel)).parts and src.is_file():
            figs.append(figure(col, src, f"images/atlas/{folder.name}/{rel}", captions[key]))
    rank = r.get("rank", "?")
    return Card(
        f"latent {r.get('latent')}: {latent_label(dict(r))}",
        f"atlas-latent-{r.get('latent')}",
        f"rank {rank} by {s.get('rank', '?')}",
        _facts(r),
        figs,
    )


def atlas_section(run: Path, col: Collector) -> Section:
    folder = run / FOLDER
    section = Section("atlas", "Feature atlas", False, ABOUT, hint=HINT.format(run=run))
    doc = read_json_or_none(folder / ATLAS_FILE)
    if not isinstance(doc, dict):
        return section
    latents = [r for r in doc.get("latents") or [] if isinstance(r, dict) and "latent" in r]
    if not latents:
        section.not_run = f"{FOLDER}/{ATLAS_FILE} lists no latents"
        return section
    s = as_dict(doc.get("settings"))
    cards = [atlas_card(folder, r, s, col) for r in latents]
    rank = RANK_TEXT.get(str(s.get("rank")), str(s.get("rank", "?")))
    text = (
        f"{len(cards)} latents of the {s.get('architecture', '?')} SAE ranked by "
        f"{rank}, each added at ±{fmt(s.get('size'))} (‖h̃−h‖/‖h‖, first edited "
        f"step) on {s.get('n_val', '?')} validation images over window {s.get('window', '?')}; "
        f"{s.get('n_train_stats', '?')} train images for ā and the AUROCs."
    )
    section.present, section.sources = True, [FOLDER]
    section.headline = atlas_headline(doc)
    section.blocks = [Block("text", text=text), Block("cards", cards=cards)]
    section.n_images = sum(len(c.figures) for c in cards)
    return section
