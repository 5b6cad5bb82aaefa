"""What the templates render: sections made of blocks (text, markdown, galleries, cards, tables).

Everything here is plain data; the HTML lives in templates/ (jinja2, autoescaped), so a file
name, a caption or a JSON value reaches the page escaped. Only markdown rendered by
`report.markdown` (raw HTML off) enters as `Markup`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup

from hsae.report.collect import Collector, display_size


@dataclass
class Figure:
    """One image: its report URL, the caption naming what it shows, the size to show it at."""

    url: str
    caption: str
    width: int | None = None
    height: int | None = None
    pixel: bool = False  # enlarged: crisp pixels


def figure(col: Collector, src: Path, rel: str, caption: str) -> Figure:
    """Copy src into the report at rel and describe it; small images are shown enlarged."""
    url = col.copy(src, rel)
    return sized(url, caption, col.out / rel)


def sized(url: str, caption: str, path: Path) -> Figure:
    size = display_size(path)
    if size is None:
        return Figure(url, caption)
    return Figure(url, caption, size[0], size[1], size[2] > 1)


@dataclass
class Headline:
    """The one number a section opens with."""

    value: str
    label: str
    detail: str = ""


@dataclass
class Card:
    """One named thing (a feature, an edit, a sub-folder): its figures and facts together."""

    title: str
    anchor: str
    subtitle: str = ""
    facts: list[tuple[str, str]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    note: str = ""


@dataclass
class Block:
    """One piece of a section body; `kind` picks the template macro that draws it."""

    kind: str  # heading | text | html | gallery | cards | table | links
    text: str = ""
    css: str = ""
    anchor: str = ""
    html: Markup | None = None
    figures: list[Figure] = field(default_factory=list)
    cards: list[Card] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    links: list[tuple[str, str | None]] = field(default_factory=list)


@dataclass
class Section:
    """One section of the page: id, title, whether its stage has run, and its blocks."""

    id: str
    title: str
    present: bool
    about: str = ""
    headline: Headline | None = None
    blocks: list[Block] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    n_images: int = 0
    hint: str = ""  # the command that produces it, shown when it has not run
    not_run: str = "not run"


def as_dict(v: object) -> dict[str, Any]:
    """v if it is a JSON object, else an empty one (for reading schemas that may change)."""
    return v if isinstance(v, dict) else {}


def fmt(v: object, spec: str = ".4g") -> str:
    """A number for the page: floats to `spec`, None as an en dash."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)
