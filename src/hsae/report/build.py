"""`hsae report RUN`: one static, self-contained HTML page summarising a run folder.

RUN is read by convention:

    RUN/acts      activation store          → sparsity histogram (with RUN/sae), K×K firing maps
    RUN/sae       SAE checkpoint            → loss curves (loss_curves.png or train_log.jsonl)
    RUN/eval, RUN/probe, RUN/features, RUN/edit*, RUN/editbench, RUN/counterfactual,
    RUN/interpolate                         → one section each: a "stage folder"
    RUN/features/atlas.json                 → the feature atlas (`report.atlas`)

Each section opens with the one number that matters (`report.headlines`), then shows what its
folder holds (`report.stages`): markdown, every image with a caption naming it, grids cut into
named rows (`report.strips`), the features as one card each (`report.features`), JSON linked. A
missing folder renders as "not run — run `hsae …`", never as an error; a JSON schema the report
does not know costs only its headline and cards.

Output: RUN/report/index.html, RUN/report/images/ (copies of every image), RUN/report/data/ (the
JSON files) and RUN/report/report.json (which sections are present). Links are relative and
nothing loads from the network, so the folder can be zipped or served as is. The page is drawn
from jinja2 templates (templates/, autoescaped); `report.browser` checks it in headless Chromium.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from hsae.report import headlines
from hsae.report.atlas import atlas_claims, atlas_section
from hsae.report.collect import SUMMARY_FILE, Collector, previous_files
from hsae.report.computed import sparsity_section, training_section
from hsae.report.features import feature_cards
from hsae.report.stages import STAGES, Stage, folder_blocks, has_outputs, not_run, stage_folders
from hsae.report.strips import labelled_grids
from hsae.report.view import Block, Card, Figure, Section
from hsae.utils.io import atomic_write_json, atomic_write_text

SECTION_ORDER = (
    "training",
    "reconstruction",
    "sparsity",
    "probe",
    "features",
    "atlas",
    "edits",
    "editbench",
    "counterfactual",
    "interpolate",
)
INDEX_FILE, SCREENSHOT_FILE = "index.html", "screenshot.png"
# Stage folders whose JSON gives the section's headline (edits and features have their own).
HEADLINES = {
    "reconstruction": headlines.reconstruction,
    "probe": headlines.probe,
    "editbench": headlines.editbench,
    "counterfactual": headlines.counterfactual,
    "interpolate": headlines.interpolate,
}


def _environment() -> Environment:
    # Autoescape everything: captions, file names and JSON values are text, never markup.
    return Environment(
        loader=PackageLoader("hsae.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _component_edits(
    grids: dict[Path, tuple[list[Card], dict[str, str]]],
) -> dict[str, list[Figure]]:
    """component → the edit strips of folders that edited that component alone."""
    from hsae.report.stages import read_json_or_none

    found: dict[str, list[Figure]] = {}
    for folder, (cards, _) in grids.items():
        doc = read_json_or_none(folder / "edit.json")
        comps = doc.get("components") if isinstance(doc, dict) else None
        if isinstance(comps, list) and len(comps) == 1:
            found.setdefault(str(comps[0]), []).extend(f for c in cards for f in c.figures)
    return found


def stage_section(
    run: Path, stage: Stage, col: Collector, grids: dict[Path, tuple[list[Card], dict[str, str]]]
) -> Section:
    """A stage's section: its headline, then each folder's cards and generic blocks."""
    folders = [f for f in stage_folders(run, stage) if has_outputs(f)]
    if not folders:
        return not_run(stage, run)
    section = Section(stage.id, stage.title, True, stage.about)
    section.sources = [f.relative_to(run).as_posix() for f in folders]
    if stage.id in HEADLINES:
        section.headline = HEADLINES[stage.id](folders[0])
    elif stage.id == "edits":
        section.headline = headlines.edits(folders)
    for folder in folders:
        lead: list[Block] = []
        cards, claimed = grids.get(folder) or labelled_grids(
            folder, col, f"{stage.id}/{folder.name}"
        )
        if stage.id == "features" and (
            fc := feature_cards(run, folder, col, _component_edits(grids))
        ):
            lead, claimed = fc.blocks, {**claimed, **fc.claimed}
            section.headline, section.n_images = fc.headline, section.n_images + fc.n_images
        if stage.id == "features":  # the atlas's images are its own section's cards
            claimed = {**claimed, **atlas_claims(folder)}
        if cards:
            lead.append(Block("cards", cards=cards))
            section.n_images += sum(len(c.figures) for c in cards)
        blocks, n = folder_blocks(folder, stage.id, col, len(folders) > 1, claimed, lead)
        section.blocks += blocks
        section.n_images += n
    return section


def build_report(
    run: Path | str,
    out: Path | str | None = None,
    sparsity_images: int = 512,
    threshold_k: int | str | None = "auto",
    target: float = 0.95,
) -> dict[str, Any]:
    """Write out/index.html (default RUN/report) with its images and data; return report.json."""
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder not found: {run}")
    col = Collector(Path(out) if out is not None else run / "report")
    previous = previous_files(col.out)
    edit_stage = next(s for s in STAGES if s.id == "edits")
    grids = {f: labelled_grids(f, col, f"edits/{f.name}") for f in stage_folders(run, edit_stage)}
    made = {s.id: stage_section(run, s, col, grids) for s in STAGES}
    made["training"] = training_section(run, col)
    made["atlas"] = atlas_section(run, col)
    made["sparsity"] = sparsity_section(run, col, sparsity_images, threshold_k, target)
    sections = [made[i] for i in SECTION_ORDER]
    col.prune(previous)
    page = (
        _environment()
        .get_template("page.html.j2")
        .render(run=str(run), run_name=run.name, sections=sections)
    )
    atomic_write_text(col.out / INDEX_FILE, page)
    summary = {
        "run": str(run),
        "index": str(col.out / INDEX_FILE),
        "present": [s.id for s in sections if s.present],
        "missing": [s.id for s in sections if not s.present],
        "sections": [
            {
                "id": s.id,
                "title": s.title,
                "present": s.present,
                "sources": s.sources,
                "images": s.n_images,
                "headline": None if s.headline is None else vars(s.headline),
            }
            for s in sections
        ],
        "files": sorted(col.written),
    }
    atomic_write_json(col.out / SUMMARY_FILE, summary)
    return summary


# ----- command ------------------------------------------------------------------------------------
