"""The atlas's files (`hsae.editing.atlas`): atlas.json beside the features output, and per latent
three PNGs under atlas/: the train images that drive it, its edit of the example images at two
sizes, and its effect bars over every classifier attribute. Everything is written atomically."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from hsae.utils.io import atomic_write_bytes, atomic_write_json

ATLAS_FILE, ATLAS_DIR = "atlas.json", "atlas"
WRITE_COLOUR, OTHER_COLOUR = "#b03a2e", "#9aa5b1"


def _sign(s: Any) -> str:
    return "+" if s is not None and s > 0 else "−" if s is not None and s < 0 else "?"


def latent_label(rec: dict[str, Any]) -> str:
    """The atlas's one-line name of a latent: writes X (+), fires on Y (−)."""
    w, f = rec.get("writes") or {}, rec.get("fires_on")
    writes = f"writes {w['attribute']} ({_sign(w.get('sign'))})" if w.get("attribute") else ""
    fires = f"fires on {f['attribute']} ({_sign(f.get('sign'))})" if f else "fires on –"
    return ", ".join(p for p in (writes or "writes –", fires))


def plot_effects(rec: dict[str, Any], names: list[str], control: dict[str, Any]) -> bytes:
    """Horizontal bars: the mean logit change per unit edit size of every attribute (± SE), the
    written attribute coloured, the random direction's value as a black tick."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def vec(d: dict[str, Any]) -> np.ndarray:
        return np.array([np.nan if d.get(n) is None else float(d[n]) for n in names])

    eff, se, ctrl = vec(rec["effect"]), vec(rec.get("effect_se") or {}), vec(control)
    writes, fires = (rec.get("writes") or {}).get("attribute"), rec.get("fires_on") or {}
    fig = Figure(figsize=(4.6, 0.26 * len(names) + 1.1))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(names))
    colours = [WRITE_COLOUR if n == writes else OTHER_COLOUR for n in names]
    err = None if np.isnan(se).all() else np.nan_to_num(se)
    ax.barh(y, np.nan_to_num(eff), xerr=err, color=colours, error_kw={"linewidth": 0.8})
    ax.scatter(ctrl, y, marker="|", s=80, color="k", zorder=3)
    ax.axvline(0, color="k", linewidth=0.6)
    labels = [f"{n} ◂ fires" if n == fires.get("attribute") else n for n in names]
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("logit change per unit edit size (± SE; |: a random direction)", fontsize=7)
    ax.set_title(f"latent {rec['latent']}\n{latent_label(rec)}", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def write_atlas(out: Path | str, doc: dict[str, Any], pictures: dict[int, dict]) -> dict[str, Any]:
    """atlas.json and atlas/*.png in `out`; each latent's record names its files (relative)."""
    from hsae.utils.viz import save_grid

    out = Path(out)
    (out / ATLAS_DIR).mkdir(parents=True, exist_ok=True)
    names = list(doc["settings"]["attributes"])
    for rec in doc["latents"]:
        pics, stem = pictures.get(rec["latent"], {}), f"{ATLAS_DIR}/latent_{rec['latent']:05d}"
        files: dict[str, str] = {}
        if pics.get("drives") is not None and len(pics["drives"]):
            save_grid([pics["drives"]], out / f"{stem}_drives.png")
            files["drives"] = f"{stem}_drives.png"
        if pics.get("edits"):
            save_grid(list(pics["edits"]), out / f"{stem}_edits.png")
            files["edits"] = f"{stem}_edits.png"
        atomic_write_bytes(
            out / f"{stem}_effects.png", plot_effects(rec, names, doc["control"]["effect"])
        )
        files["effects"] = f"{stem}_effects.png"
        rec["files"] = files
    atomic_write_json(out / ATLAS_FILE, doc)
    return doc


def _f(v: Any, spec: str = "+.3f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_atlas(doc: dict[str, Any]) -> str:
    """A markdown table of the atlas (one row per latent) with its summary line."""
    s, summ = doc["settings"], doc["summary"]
    lines = [
        f"Feature atlas: {summ['n_write_what_they_fire_on']} of {summ['n_latents']} latents "
        f"write the attribute they fire on (same sign); {summ['n_above_control']} move an "
        f"attribute more than a random direction of the same size "
        f"(max |effect| {summ['control_max_abs_effect']:.3f}). Edit size ±{s['size']:g} "
        f"(‖h̃−h‖/‖h‖), window {s['window']}, {s['n_val']} validation images.",
        "",
        "| rank | latent | fires on (train AUROC) | writes | logit / unit size ± SE | "
        "add / remove | above control |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in doc["latents"]:
        w, f = r["writes"], r.get("fires_on")
        a = w.get("attribute")
        fires = f"{f['attribute']} ({_sign(f['sign'])}, {f['auroc_train']:.3f})" if f else "–"
        one_sided = f"{_f(r['effect_add'].get(a))} / {_f(r['effect_remove'].get(a))}" if a else "–"
        lines.append(
            f"| {r['rank']} | {r['latent']} | {fires} | {a or '–'} ({_sign(w.get('sign'))}) | "
            f"{_f(w.get('effect'))} ± {_f(w.get('se'), '.3f')} | {one_sided} | "
            f"{'yes' if w.get('above_control') else 'no'} |"
        )
    return "\n".join(lines) + "\n"
