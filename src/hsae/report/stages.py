"""Stage folders rendered by convention: markdown, every image named, every JSON linked.

A stage folder holds `table.md` (and maybe other .md), images at any depth and JSON files. Images
at the top of the folder form a captioned gallery; each sub-folder that holds images becomes one
card named after it, with the scalar entries of its JSON files as facts (so a per-feature atlas,
whatever its schema, reads as named cards); JSON files are copied and linked. A folder's images
that a known stage shows as cards (`claimed`) are left out of the gallery and of its markdown.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markupsafe import Markup

from hsae.report.collect import Collector, images_in
from hsae.report.markdown import markdown_to_html
from hsae.report.view import Block, Card, Figure, Section, figure, fmt

MAX_IMAGES_PER_FOLDER = 150  # a features folder can hold thousands of crops; the page stays usable
MAX_JSON_BYTES = 2_000_000  # larger JSON files are listed, not copied
MAX_JSON_FILES = 200
MAX_FACTS = 8


@dataclass(frozen=True)
class Stage:
    id: str
    title: str
    folder: str  # under RUN; "edit*" matches every edit folder except editbench
    hint: str  # the command that produces it ({run} is filled in)
    about: str


# fmt: off
STAGES = tuple(Stage(*row) for row in (
    ("reconstruction", "Reconstruction (Table 2)", "eval",
     "hsae eval --store {run}/acts --sae {run}/sae --random --out {run}/eval",
     "Explained variance, cosine, MSE and MAE of ĥ on the test split, raw and thresholded."),
    ("probe", "Attribute probes (Table 1)", "probe",
     "hsae probe --store {run}/acts --sae {run}/sae --out {run}/probe",
     "Logistic regression per attribute on the top-512 code components and baselines."),
    ("features", "Top features", "features",
     "hsae features --store {run}/acts --sae {run}/sae --data DATA --out {run}/features",
     "The most used SAE components and the images that activate them most, one card each."),
    ("edits", "Edit grids", "edit*",
     "hsae edit --sae {run}/sae --image IMG --component C:J --kappa K --out {run}/edit",
     "Scaling one SAE component of h_t and resuming the diffusion."),
    ("editbench", "Edit benchmark", "editbench",
     "hsae editbench --store {run}/acts --sae {run}/sae --data DATA --out {run}/editbench",
     "Edits judged by the attribute classifier: target flips and collateral changes."),
    ("counterfactual", "Counterfactuals", "counterfactual",
     "hsae counterfactual --sae {run}/sae --component C:J --kappa K --data DATA "
     "--out {run}/counterfactual",
     "An edit, then its inverse on the re-encoded result (paper §4.6.1)."),
    ("interpolate", "Interpolations", "interpolate",
     "hsae interpolate --sae {run}/sae --a IMG_A --b IMG_B --out {run}/interpolate",
     "Walks between two images in SAE space, as a grid and an animation."),
))
# fmt: on


def stage_folders(run: Path, stage: Stage) -> list[Path]:
    if stage.folder == "edit*":
        return sorted(
            p for p in run.glob("edit*") if p.is_dir() and not p.name.startswith("editbench")
        )
    folder = run / stage.folder
    return [folder] if folder.is_dir() else []


def has_outputs(folder: Path) -> bool:
    return any(folder.glob("*.md")) or any(folder.rglob("*.json")) or bool(images_in(folder))


def not_run(stage: Stage, run: Path, why: str = "") -> Section:
    return Section(
        stage.id, stage.title, False, stage.about, hint=stage.hint.format(run=run),
        not_run="not run" + why,
    )  # fmt: skip


def rel_of(p: Path, folder: Path) -> str:
    return p.relative_to(folder).as_posix()


def read_json_or_none(path: Path) -> Any:
    """A JSON document, or None when it is missing, unreadable or not JSON (shown as a link)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def scalar_facts(doc: Any, limit: int = MAX_FACTS) -> list[tuple[str, str]]:
    """(key, value) of the scalar entries of a JSON object, and of its "final" object."""
    if not isinstance(doc, dict):
        return []
    items = [(str(k), v) for k, v in doc.items() if isinstance(v, int | float | str | bool)]
    final = doc.get("final")
    if isinstance(final, dict):
        items += [(f"final {k}", v) for k, v in final.items() if isinstance(v, int | float)]
    return [(k, fmt(v)) for k, v in items if not (isinstance(v, str) and len(v) > 120)][:limit]


def folder_blocks(
    folder: Path,
    section_id: str,
    col: Collector,
    heading: bool,
    claimed: Mapping[str, str] | None = None,
    lead: Sequence[Block] = (),
) -> tuple[list[Block], int]:
    """Blocks of one stage folder, and how many images they show.

    `claimed` maps image paths (relative to the folder) that a known stage shows elsewhere (as
    cards) to the anchor of what shows them: their markdown references become links there.
    """
    claimed = claimed or {}
    tag = f"{section_id}/{folder.name}"
    images = [p for p in images_in(folder) if rel_of(p, folder) not in claimed]
    shown = images[:MAX_IMAGES_PER_FOLDER]
    figs = {
        rel_of(p, folder): figure(
            col, p, f"images/{tag}/{rel_of(p, folder)}", f"{folder.name}/{rel_of(p, folder)}"
        )
        for p in shown
    }
    blocks = [Block("heading", text=f"{folder.name}/", anchor=f"{section_id}-{folder.name}")]
    blocks = [*(blocks if heading else []), *lead]
    urls = {**{r: f.url for r, f in figs.items()}, **{r: f"#{a}" for r, a in claimed.items()}}
    inline: set[str] = set()  # images the markdown shows (with its alt text as caption)

    def resolve(rel: str) -> str | None:
        inline.add(rel)
        return urls.get(rel)

    mds = sorted(folder.glob("*.md"), key=lambda p: (p.name != "table.md", p.name))
    for md in mds:
        text = md.read_text(encoding="utf-8", errors="replace")
        blocks.append(Block("html", html=Markup(markdown_to_html(text, 2, resolve))))
    figs = {r: f for r, f in figs.items() if r not in inline}  # not shown twice
    top = [f for r, f in figs.items() if "/" not in r]
    if top:
        blocks.append(Block("gallery", figures=top))
    cards = subfolder_cards(folder, figs, tag)
    if cards:
        blocks.append(Block("cards", cards=cards))
    if len(images) > len(shown):
        blocks.append(Block("text", text=f"{len(images) - len(shown)} more images in {folder}."))
    links = json_links(folder, tag, col)
    if links:
        blocks.append(Block("links", text="Data", links=links))
    return blocks, len(shown)


def subfolder_cards(folder: Path, figs: Mapping[str, Figure], tag: str) -> list[Card]:
    """One card per sub-folder with images: its images, the scalars of its JSON files."""
    groups: dict[str, list[Figure]] = {}
    for rel, f in figs.items():
        if "/" in rel:
            groups.setdefault(rel.split("/", 1)[0], []).append(f)
    cards = []
    for name, group in groups.items():
        facts: list[tuple[str, str]] = []
        for js in sorted((folder / name).glob("*.json")):
            facts += scalar_facts(read_json_or_none(js), MAX_FACTS - len(facts))
        anchor = f"{tag}/{name}".replace("/", "-")
        cards.append(Card(f"{folder.name}/{name}", anchor, facts=facts, figures=group))
    return cards


def json_links(folder: Path, tag: str, col: Collector) -> list[tuple[str, str | None]]:
    """(label, URL) of each JSON file under folder, copied if small enough (URL None if not)."""
    links: list[tuple[str, str | None]] = []
    files = sorted(folder.rglob("*.json"), key=lambda p: (p.parent != folder, rel_of(p, folder)))
    for f in files[:MAX_JSON_FILES]:
        rel, size = rel_of(f, folder), f.stat().st_size
        label = f"{rel} ({size / 1024:.1f} kB)" if size >= 1024 else rel
        if size <= MAX_JSON_BYTES:
            links.append((label, col.copy(f, f"data/{tag}/{rel}")))
        else:
            links.append((f"{label}, not copied: see {f}", None))
    if len(files) > MAX_JSON_FILES:
        links.append((f"{len(files) - MAX_JSON_FILES} more JSON files in {folder}", None))
    return links
