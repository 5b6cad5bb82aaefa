"""Rows of a stage's image grid cut out as strips, so each row can sit in the card it belongs to.

The grids (`max_activating.png`, `attribute_components.png`, an edit's `grid.png`) are rows of
equal tiles stacked vertically; the JSON beside them says in which order. A grid whose height is
not a multiple of the row count is not cut (the caller shows it whole with its row list).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

from hsae.report.collect import IMAGE_EXTS, Collector
from hsae.report.view import Card, as_dict, sized


def cut_rows(png: Path, n_rows: int) -> list[bytes] | None:
    """PNG bytes of each of the n_rows equal rows of png, or None if it does not divide."""
    if n_rows < 1 or not png.is_file():
        return None
    try:
        with Image.open(png) as im:
            im.load()
            width, height = im.size
            if height % n_rows:
                return None
            step = height // n_rows
            strips = []
            for r in range(n_rows):
                buf = io.BytesIO()
                im.crop((0, r * step, width, (r + 1) * step)).save(buf, format="PNG")
                strips.append(buf.getvalue())
    except (OSError, ValueError):
        return None
    return strips


def _row_names(doc: dict[str, Any], prefix: str) -> list[str]:
    rows = doc.get(f"{prefix}_rows") or doc.get("grid_rows") or doc.get("images") or []
    return [Path(str(r)).name for r in rows] if isinstance(rows, list) else []


def _listed_images(tree: Any) -> list[str]:
    """Every image path (a string ending in an image extension) in a JSON tree."""
    if isinstance(tree, dict):
        return [p for v in tree.values() for p in _listed_images(v)]
    if isinstance(tree, list):
        return [p for v in tree for p in _listed_images(v)]
    return [tree] if isinstance(tree, str) and tree.lower().endswith(IMAGE_EXTS) else []


def labelled_grids(folder: Path, col: Collector, tag: str) -> tuple[list[Card], dict[str, str]]:
    """One card per grid row of every JSON in folder that names its grid's columns.

    A stage JSON may describe a grid as `<name>_columns` (column labels), `paths.<name>` (the
    file, default `<name>.png`) and `<name>_rows`, `grid_rows` or `images` (one per row); rows of
    the same index across its grids (e.g. an edit's grid.png and diff.png) share one card.
    Returns the cards and the grid files they show (relative path → card anchor).
    """
    cards: list[Card] = []
    claimed: dict[str, str] = {}
    for js in sorted(folder.glob("*.json")):
        try:
            doc = json.loads(js.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict):
            continue
        paths = as_dict(doc.get("paths"))
        comps = doc.get("components")
        what = f"components {', '.join(map(str, comps))}" if isinstance(comps, list) else ""
        by_row: dict[int, Card] = {}
        anchor = f"{tag}-{js.stem}".replace("/", "-")
        prefixes = [k[: -len("_columns")] for k in doc if k.endswith("_columns")]
        for prefix in sorted(prefixes, key=lambda p: (p != "grid", p)):
            columns, names = doc[f"{prefix}_columns"], _row_names(doc, prefix)
            rel = str(paths.get(prefix) or f"{prefix}.png")
            strips = cut_rows(folder / rel, len(names)) if isinstance(columns, list) else None
            if not strips:
                continue
            claimed[rel] = f"{anchor}-0"
            cols = " · ".join(map(str, columns))
            for i, (data, name) in enumerate(zip(strips, names, strict=True)):
                card = by_row.setdefault(i, Card(f"{folder.name}: {name}", f"{anchor}-{i}", what))
                out = f"images/{tag}/{Path(rel).stem}/row{i:03d}.png"
                url = col.write(out, data)
                card.figures.append(sized(url, f"{prefix} of {name}: {cols}", col.out / out))
        if by_row:  # the per-image files the JSON lists are in those rows: not shown again
            claimed.update({rel: f"{anchor}-0" for rel in _listed_images(paths)})
        cards += list(by_row.values())
    return cards, claimed
