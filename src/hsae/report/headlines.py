"""The one number each known stage's section opens with, read from the stage's JSON.

Every reader is defensive: a key that is missing or not a number means no headline (the section
still renders everything the folder holds), so a stage whose schema changes never breaks the
report. Searches such as `find_numbers` walk any JSON, for stages whose layout varies.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hsae.report.stages import read_json_or_none
from hsae.report.view import Headline, as_dict, fmt

SPARSE_ARCHITECTURES = ("channel_aware", "flat", "spatial", "topk")


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def find_numbers(
    doc: Any, key: str, skip: tuple[str, ...] = (), path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], float]]:
    """(path, value) of every numeric `key` in a JSON tree, not below keys named in `skip`."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == key and _num(v) is not None:
                yield path, float(v)
            elif str(k) not in skip:
                yield from find_numbers(v, key, skip, (*path, str(k)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from find_numbers(v, key, skip, (*path, str(i)))


def reconstruction(folder: Path) -> Headline | None:
    """EV of the SAE (raw codes) against the best PCA baseline, from eval/metrics.json."""
    doc = read_json_or_none(folder / "metrics.json")
    rows = doc.get("rows") if isinstance(doc, dict) else None
    if not isinstance(rows, list):
        return None
    rows = [r for r in rows if isinstance(r, dict) and _num(r.get("ev")) is not None]
    sae = [r for r in rows if r.get("architecture") in SPARSE_ARCHITECTURES]
    raw = [r for r in sae if not r.get("thresholded")]
    if not raw:
        return None
    pca = [r for r in rows if r.get("architecture") == "pca"]
    parts = []
    if pca:
        best = max(pca, key=lambda r: float(r["ev"]))
        parts.append(f"vs PCA L={best.get('n_latents', '?')}: {float(best['ev']):.3f}")
    parts += [
        f"thresholded k={r.get('threshold_k', '?')}: {float(r['ev']):.3f}"
        for r in sae
        if r.get("thresholded")
    ]
    r = raw[0]
    budget = _num(r.get("active_per_image"))
    label = "explained variance of the SAE (raw codes" + (
        f", {budget:.0f} active values per image)" if budget is not None else ")"
    )
    return Headline(f"{float(r['ev']):.3f}", label, "; ".join(parts))


def probe(folder: Path) -> Headline | None:
    """Mean test accuracy of the SAE probe, against the other methods, from probe/probe.json."""
    doc = read_json_or_none(folder / "probe.json")
    mean = doc.get("mean") if isinstance(doc, dict) else None
    if not isinstance(mean, dict):
        return None
    names = {
        m.get("key"): m.get("name", m.get("key"))
        for m in doc.get("methods") or []
        if isinstance(m, dict)
    }
    acc = {k: _num(v.get("accuracy")) for k, v in mean.items() if isinstance(v, dict)}
    acc = {k: v for k, v in acc.items() if v is not None}
    if "sae" not in acc:
        return None
    others = [f"{names.get(k, k)} {v:.3f}" for k, v in acc.items() if k != "sae"]
    n_attr = len(doc.get("attributes") or [])
    return Headline(
        f"{acc['sae']:.3f}",
        f"mean test accuracy of the {names.get('sae', 'SAE')} probe"
        + (f" over {n_attr} attributes" if n_attr else ""),
        "; ".join(others),
    )


def editbench(folder: Path) -> Headline | None:
    """The best SAE edit's flip rate, beside the best of any method (validation sweeps skipped)."""
    doc = read_json_or_none(folder / "editbench.json")
    if not isinstance(doc, dict):
        return None
    where = doc["summary"] if isinstance(doc.get("summary"), dict) else doc
    found = list(find_numbers(where, "flip_rate", skip=("val_sweep", "validation", "sweep")))
    if not found:
        return None
    sae = [(p, v) for p, v in found if "sae" in p]
    best_path, best = max(sae or found, key=lambda t: t[1])
    top_path, top = max(found, key=lambda t: t[1])
    scope = "mean over attributes" if where is not doc else "one attribute"
    return Headline(
        f"{best:.2f}",
        f"flip rate of the best {'SAE ' if sae else ''}edit ({' '.join(best_path)}, {scope})",
        f"best of any method: {' '.join(top_path)} {top:.2f}",
    )


def edits(folders: list[Path]) -> Headline | None:
    """The largest pixel change an edit made against the unedited resume (edit.json rows)."""
    best: tuple[float, str] | None = None
    for folder in folders:
        doc = read_json_or_none(folder / "edit.json")
        rows = doc.get("rows") if isinstance(doc, dict) else None
        comps = ", ".join(str(c) for c in doc.get("components") or []) if rows else ""
        for r in rows or []:
            pix = as_dict(as_dict(r).get("pixel_vs_unedited"))
            frac = _num(pix.get("changed_frac"))
            if frac is not None and (best is None or frac > best[0]):
                psnr = _num(pix.get("psnr_db"))
                what = f"{comps} at κ={fmt(r.get('kappa'))} on {r.get('image')} ({folder.name}/)"
                best = (frac, what + (f", PSNR {psnr:.1f} dB" if psnr is not None else ""))
    if best is None:
        return None
    return Headline(f"{100 * best[0]:.1f} %", "of pixels changed by the strongest edit", best[1])


def counterfactual(folder: Path) -> Headline | None:
    """PSNR of the restored image against the input, per method, beside the inversion floor."""
    doc = read_json_or_none(folder / "counterfactual.json")
    mean = doc.get("mean") if isinstance(doc, dict) else None
    if not isinstance(mean, dict) or not isinstance(mean.get("methods"), dict):
        return None
    psnrs = {}
    for name, m in mean["methods"].items():
        r = m.get("restored_vs_input") if isinstance(m, dict) else None
        if isinstance(r, dict) and _num(r.get("psnr_db")) is not None:
            psnrs[name] = float(r["psnr_db"])
    if not psnrs:
        return None
    first = next(iter(psnrs))
    floor = mean.get("rec_vs_input")
    parts = [f"{n} {v:.1f} dB" for n, v in psnrs.items() if n != first]
    if isinstance(floor, dict) and _num(floor.get("psnr_db")) is not None:
        parts.append(f"invert→resume floor {float(floor['psnr_db']):.1f} dB")
    return Headline(f"{psnrs[first]:.1f} dB", f"PSNR of the restored image vs the input ({first})",
                    "; ".join(parts))  # fmt: skip


def interpolate(folder: Path) -> Headline | None:
    """The largest jump between consecutive frames of the SAE walk (MSE), beside raw h's."""
    doc = read_json_or_none(folder / "interpolate.json")
    frames = doc.get("frames") if isinstance(doc, dict) else None
    if not isinstance(frames, dict) or not frames:
        return None
    jumps = {
        path: max((v for r in rows if (v := _num(r.get("mse_to_prev"))) is not None), default=None)
        for path, rows in frames.items()
        if isinstance(rows, list)
    }
    jumps = {k: v for k, v in jumps.items() if v is not None}
    if not jumps:
        return None
    first = next(iter(jumps))
    others = "; ".join(f"{k}: {v:.3g}" for k, v in jumps.items() if k != first)
    return Headline(f"{jumps[first]:.3g}", f"largest MSE between consecutive frames ({first} walk)",
                    others)  # fmt: skip
