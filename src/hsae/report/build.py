"""`hsae report RUN`: one static, self-contained HTML page summarising a run folder.

RUN is read by convention only (no stage's JSON schema is relied on):

    RUN/acts      activation store          → sparsity histogram (with RUN/sae)
    RUN/sae       SAE checkpoint            → loss curves (loss_curves.png or train_log.jsonl)
    RUN/eval, RUN/probe, RUN/features, RUN/edit*, RUN/editbench, RUN/counterfactual,
    RUN/interpolate                         → one section each: a "stage folder"

A stage folder holds `table.md` (markdown tables and prose, converted here), PNG/GIF images (at
any depth; each embedded with its path as caption) and JSON summaries (copied and linked). A
missing folder renders as "not run — run `hsae …`", never as an error.

Output: RUN/report/index.html, RUN/report/images/ (copies of every image), RUN/report/data/ (the
JSON files) and RUN/report/report.json (which sections are present). Links are relative and
nothing loads from the network, so the folder can be zipped or served as is. A small inline
script counts images that failed to load into `<body data-broken-images>`, which
`browser_check` (headless Chromium: screenshot + DOM dump) reads back.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hsae.cli.options import add_threshold_arguments
from hsae.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

IMAGE_EXTS = (".png", ".gif", ".jpg", ".jpeg", ".webp", ".svg")
MAX_IMAGES_PER_FOLDER = 150  # a features folder can hold thousands of crops; the page stays usable
MAX_JSON_BYTES = 2_000_000  # larger JSON files are listed, not copied
SMALL_IMAGE_PX = 256  # images smaller than this are shown enlarged (toy images are 32 × 32)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


# ----- markdown → HTML ----------------------------------------------------------------------------
_SEPARATOR = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|(\d+)[.)])\s+(.*)$")
_CODE_SPAN = re.compile(r"`([^`]+)`")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_LINK = re.compile(r"\[([^\]]+)\]\((https?://[^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")

ImageResolver = Callable[[str], str | None]


def inline_html(text: str, resolve: ImageResolver | None = None) -> str:
    """Escape text, then render `code`, **bold**, ![alt](img) and [text](http…) links.

    Images resolve through `resolve` (a path relative to the markdown file → a report URL);
    an unresolved image becomes its alt text, so no markdown reference can break the page.
    """
    parts = _CODE_SPAN.split(text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:  # inside backticks: literal
            out.append(f"<code>{html.escape(part)}</code>")
            continue
        s = html.escape(part, quote=False)

        def image(m: re.Match[str]) -> str:
            url = resolve(html.unescape(m.group(2))) if resolve else None
            if url is None:
                return f"[{m.group(1)}]"
            return f'<img src="{html.escape(url)}" alt="{html.escape(m.group(1))}">'

        s = _IMAGE.sub(image, s)
        s = _LINK.sub(lambda m: f'<a href="{html.escape(m.group(2))}">{m.group(1)}</a>', s)
        out.append(_BOLD.sub(r"<strong>\1</strong>", s))
    return "".join(out)


def split_row(line: str) -> list[str]:
    """Cells of a pipe-table row; `\\|` is a literal pipe."""
    s = line.strip()
    s = s[1:] if s.startswith("|") else s
    s = s[:-1] if s.endswith("|") and not s.endswith("\\|") else s
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", s)]


def _alignment(cell: str) -> str:
    c = cell.strip()
    if c.startswith(":") and c.endswith(":"):
        return "center"
    return "right" if c.endswith(":") else ("left" if c.startswith(":") else "")


def table_html(lines: Sequence[str], resolve: ImageResolver | None = None) -> str:
    """A pipe table: header line, separator line, body lines."""
    header, aligns = split_row(lines[0]), [_alignment(c) for c in split_row(lines[1])]
    width = len(header)

    def cells(row: list[str], tag: str) -> str:
        row = row + [""] * (width - len(row))
        out = []
        for j, c in enumerate(row):
            a = aligns[j] if j < len(aligns) else ""
            style = f' style="text-align:{a}"' if a else ""
            out.append(f"<{tag}{style}>{inline_html(c, resolve)}</{tag}>")
        return "<tr>" + "".join(out) + "</tr>"

    body = "\n".join(cells(split_row(line), "td") for line in lines[2:])
    return (
        f'<div class="table-wrap"><table>\n<thead>{cells(header, "th")}</thead>\n'
        f"<tbody>\n{body}\n</tbody></table></div>"
    )


def _is_table_start(lines: Sequence[str], i: int) -> bool:
    return "|" in lines[i] and i + 1 < len(lines) and bool(_SEPARATOR.match(lines[i + 1]))


def _take_while(lines: Sequence[str], i: int, pred: Callable[[str], bool]) -> int:
    while i < len(lines) and pred(lines[i]):
        i += 1
    return i


def _list_html(items: Sequence[str], resolve: ImageResolver | None) -> str:
    ordered = bool(_LIST_ITEM.match(items[0]).group(1))  # type: ignore[union-attr]
    tag = "ol" if ordered else "ul"
    lis = "".join(
        f"<li>{inline_html(_LIST_ITEM.match(x).group(2), resolve)}</li>"  # type: ignore[union-attr]
        for x in items
    )
    return f"<{tag}>{lis}</{tag}>"


def markdown_to_html(
    text: str, heading_offset: int = 0, resolve: ImageResolver | None = None
) -> str:
    """The markdown the stages write: headings, paragraphs, pipe tables, lists, fenced code.

    Headings are shifted down by `heading_offset` levels so a stage's "#" nests in its section.
    """
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.strip().startswith("```"):
            j = _take_while(lines, i + 1, lambda s: not s.strip().startswith("```"))
            out.append(f"<pre><code>{html.escape(chr(10).join(lines[i + 1 : j]))}</code></pre>")
            i = j + 1
        elif m := _HEADING.match(line):
            level = min(6, len(m.group(1)) + heading_offset)
            out.append(f"<h{level}>{inline_html(m.group(2), resolve)}</h{level}>")
            i += 1
        elif _is_table_start(lines, i):
            j = _take_while(lines, i + 2, lambda s: "|" in s and bool(s.strip()))
            out.append(table_html(lines[i:j], resolve))
            i = j
        elif _LIST_ITEM.match(line):
            j = _take_while(lines, i, lambda s: bool(_LIST_ITEM.match(s)))
            out.append(_list_html(lines[i:j], resolve))
            i = j
        else:
            j = _take_while(lines, i, lambda s: _is_paragraph_line(lines, s))
            j = max(j, i + 1)
            out.append(f"<p>{inline_html(' '.join(x.strip() for x in lines[i:j]), resolve)}</p>")
            i = j
    return "\n".join(out)


def _is_paragraph_line(lines: Sequence[str], s: str) -> bool:
    t = s.strip()
    return bool(t) and not (t.startswith(("```", "|")) or _HEADING.match(s) or _LIST_ITEM.match(s))


# ----- collecting files into the report folder ----------------------------------------------------
@dataclass
class Section:
    """One section of the page: id, title, HTML body, and whether its stage has run."""

    id: str
    title: str
    present: bool
    body: str
    sources: list[str] = field(default_factory=list)
    n_images: int = 0


@dataclass
class Collector:
    """Copies files into the report folder and remembers each one (report.json lists them)."""

    out: Path
    written: set[str] = field(default_factory=set)  # paths relative to out, posix

    def copy(self, src: Path, rel: str) -> str:
        """Copy src to out/rel (atomically); returns the relative URL."""
        return self.write(rel, src.read_bytes())

    def write(self, rel: str, data: bytes) -> str:
        atomic_write_bytes(self.out / rel, data)
        return self.track(rel)

    def track(self, rel: str) -> str:
        """Record a file written under out/ by someone else (e.g. a plotting helper)."""
        self.written.add(Path(rel).as_posix())
        return url_of(rel)

    def prune(self, previous: Sequence[str]) -> None:
        """Delete the files an earlier build wrote (listed in its report.json) and this one did
        not, so a stage that disappeared leaves no stale copy; files of anyone else are kept."""
        for rel in sorted(set(previous) - self.written):
            f = self.out / rel
            if ".." in Path(rel).parts or not f.is_file():
                continue
            f.unlink()
            for d in f.parents:  # drop folders this emptied, up to the report folder
                if d == self.out or not d.is_relative_to(self.out) or any(d.iterdir()):
                    break
                d.rmdir()


def previous_files(out: Path) -> list[str]:
    """Files listed by the report.json of an earlier build in `out` (none if absent/unreadable)."""
    try:
        files = json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [f for f in files if isinstance(f, str)]


def url_of(rel: str) -> str:
    """A relative URL for a report-relative path (each segment percent-encoded)."""
    from urllib.parse import quote

    return "/".join(quote(p) for p in Path(rel).parts)


def display_size(path: Path) -> tuple[int, int, int] | None:
    """(width, height, scale) to show an image at: small images enlarged by an integer factor."""
    from PIL import Image

    if path.suffix.lower() == ".svg":
        return None
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError):
        return None  # unreadable: left to the browser, whose check reports it as broken
    scale = max(1, min(8, SMALL_IMAGE_PX // max(w, h, 1)))
    return w * scale, h * scale, scale


def figure_html(
    url: str, caption: str, size: tuple[int, int] | None, enlarged: bool = False
) -> str:
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    cls = ' class="pixel"' if enlarged else ""  # crisp pixels when enlarged, smooth otherwise
    alt = html.escape(caption)
    return (
        f'<figure><a href="{html.escape(url)}"><img src="{html.escape(url)}" alt="{alt}"{dims}'
        f"{cls}></a><figcaption>{alt}</figcaption></figure>"
    )


def image_figure(url: str, caption: str, path: Path) -> str:
    """figure_html with the displayed size of the image file at `path`."""
    size = display_size(path)
    return figure_html(url, caption, size[:2] if size else None, bool(size and size[2] > 1))


def _images_in(folder: Path) -> list[Path]:
    files = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


# ----- stage folders ------------------------------------------------------------------------------
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
     "The most used SAE features and the images that activate them most."),
    ("edits", "Edit grids", "edit*",
     "hsae edit --sae {run}/sae --image IMG --component C:J --kappa K --out {run}/edit",
     "Scaling one SAE component of h_t at one timestep and resuming the diffusion."),
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


def _has_outputs(folder: Path) -> bool:
    return any(folder.glob("*.md")) or any(folder.glob("*.json")) or bool(_images_in(folder))


def not_run_html(hint: str, run: Path, why: str = "") -> str:
    cmd = html.escape(hint.format(run=run))
    return f'<p class="not-run">not run{html.escape(why)} — run <code>{cmd}</code></p>'


def folder_html(folder: Path, section_id: str, col: Collector, heading: bool) -> tuple[str, int]:
    """table.md (and any other .md), every image with its caption, links to the JSON files."""
    tag = f"{section_id}/{folder.name}"
    images = _images_in(folder)
    shown = images[:MAX_IMAGES_PER_FOLDER]
    urls = {_rel(p, folder): col.copy(p, f"images/{tag}/{_rel(p, folder)}") for p in shown}
    parts = [f"<h3>{html.escape(folder.name)}/</h3>"] if heading else []
    mds = sorted(folder.glob("*.md"), key=lambda p: (p.name != "table.md", p.name))
    for md in mds:
        text = md.read_text(encoding="utf-8", errors="replace")
        parts.append(markdown_to_html(text, heading_offset=2, resolve=urls.get))
    figures = [image_figure(u, f"{folder.name}/{rel}", folder / rel) for rel, u in urls.items()]
    if figures:
        parts.append('<div class="gallery">' + "\n".join(figures) + "</div>")
    if len(images) > len(shown):
        parts.append(f"<p>{len(images) - len(shown)} more images in <code>{folder}</code>.</p>")
    parts.append(json_links(folder, tag, col))
    return "\n".join(p for p in parts if p), len(shown)


def _rel(p: Path, folder: Path) -> str:
    return p.relative_to(folder).as_posix()


def json_links(folder: Path, tag: str, col: Collector) -> str:
    items = []
    for f in sorted(folder.glob("*.json")):
        size = f.stat().st_size
        name = html.escape(f.name)
        label = f"{name} ({size / 1024:.1f} kB)" if size >= 1024 else name
        if size <= MAX_JSON_BYTES:
            items.append(
                f'<a href="{html.escape(col.copy(f, f"data/{tag}/{f.name}"))}">{label}</a>'
            )
        else:
            items.append(f"{label}, not copied: see <code>{html.escape(str(f))}</code>")
    return f'<p class="data">Data: {", ".join(items)}</p>' if items else ""


def stage_section(run: Path, stage: Stage, col: Collector) -> Section:
    folders = [f for f in stage_folders(run, stage) if _has_outputs(f)]
    about = f"<p>{html.escape(stage.about)}</p>"
    if not folders:
        return Section(stage.id, stage.title, False, about + not_run_html(stage.hint, run))
    bodies, n = [about], 0
    for f in folders:
        body, k = folder_html(f, stage.id, col, heading=len(folders) > 1)
        bodies.append(body)
        n += k
    sources = [f.relative_to(run).as_posix() for f in folders]
    return Section(stage.id, stage.title, True, "\n".join(bodies), sources, n)


# ----- computed sections: training curves, code sparsity ------------------------------------------
TRAIN_HINT = "hsae train --store {run}/acts --out {run}/sae"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines log; a torn last line (a run killed mid-write) is skipped."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in rows if isinstance(r, dict) and "step" in r]


def scalar_table(doc: Any) -> str:
    """Two-column table of the scalar entries of a JSON object and of its "final" object."""
    if not isinstance(doc, dict):
        return ""
    items = [(k, v) for k, v in doc.items() if isinstance(v, int | float | str | bool)]
    final = doc.get("final")
    if isinstance(final, dict):
        items += [(f"final {k}", v) for k, v in final.items() if isinstance(v, int | float)]
    if not items:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in items
    )
    return f'<div class="table-wrap"><table class="kv"><tbody>{rows}</tbody></table></div>'


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def training_section(run: Path, col: Collector) -> Section:
    """RUN/sae/loss_curves.png, else a plot of RUN/sae/train_log.jsonl; plus metrics.json."""
    from hsae.utils.io import read_json

    sae = run / "sae"
    png, log = sae / "loss_curves.png", sae / "train_log.jsonl"
    title = "Training curves"
    rel = "images/training/loss_curves.png"
    if png.is_file():
        url, caption = col.copy(png, rel), "sae/loss_curves.png"
    elif log.is_file() and (history := read_jsonl(log)):
        from hsae.training.plots import plot_curves

        plot_curves(history, col.out / rel)
        url, caption = col.track(rel), f"plotted from sae/train_log.jsonl ({len(history)} rows)"
    else:
        return Section("training", title, False, not_run_html(TRAIN_HINT, run))
    body = image_figure(url, caption, col.out / rel)
    metrics = sae / "metrics.json"
    if metrics.is_file():
        try:
            body += scalar_table(read_json(metrics, "training metrics"))
        except ValueError as e:
            body += f"<p>{html.escape(str(e))}</p>"
    return Section("training", title, True, body, ["sae"], 1)


def eval_rows(store: Any, max_images: int) -> tuple[np.ndarray, str]:
    """Up to max_images evenly spaced test rows (all rows if the store has no test split)."""
    try:
        rows, split = np.asarray(store.indices_for_split("test"), dtype=np.int64), "test"
    except ValueError:
        rows, split = np.arange(len(store)), "all"
    if len(rows) == 0:
        rows, split = np.arange(len(store)), "all"
    if len(rows) > max_images:
        rows = rows[np.unique(np.linspace(0, len(rows) - 1, max_images).astype(np.int64))]
    return rows, split


def code_sparsity(
    acts: Path,
    sae_dir: Path,
    max_images: int = 512,
    threshold_k: int | str | None = "auto",
    target: float = 0.95,
    batch: int = 64,
) -> dict[str, Any]:
    """Per-image fraction of zero code values, raw and thresholded (eq. 9), on test rows."""
    import torch

    from hsae.data.store import ActivationStore
    from hsae.sae.selection import load_checked, resolve_threshold_k
    from hsae.sae.threshold import codes_as_tokens, threshold_codes

    store = ActivationStore(acts)
    model = load_checked(sae_dir, store).eval()
    rows, split = eval_rows(store, max_images)
    k = resolve_threshold_k(model, threshold_k, store, None, target)[0]
    raw, thr = [], []
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            h = torch.from_numpy(np.asarray(store[rows[start : start + batch]], dtype=np.float32))
            tokens = codes_as_tokens(model.encode(h.to(model.W_enc.dtype)))
            raw.append((tokens == 0).flatten(1).double().mean(1).numpy())
            if k is not None:
                zero = threshold_codes(tokens, int(k)) == 0
                thr.append(zero.flatten(1).double().mean(1).numpy())
    return {
        "split": split,
        "n_images": len(rows),
        "threshold_k": k,
        "architecture": model.cfg.architecture,
        "raw": np.concatenate(raw),
        "thresholded": np.concatenate(thr) if thr else None,
    }


def plot_sparsity(stats: dict[str, Any], target: float) -> bytes:
    """Histogram PNG of per-image sparsity (Agg canvas, no pyplot), raw and thresholded."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.15, top=0.9)
    ax = fig.add_subplot(1, 1, 1)
    series = [("raw codes", stats["raw"])]
    if stats["thresholded"] is not None:
        series.append((f"thresholded, k={stats['threshold_k']}", stats["thresholded"]))
    lo = min(float(s.min()) for _, s in series)
    bins = np.linspace(min(lo, target) - 1e-3, 1.0, 41).tolist()
    for label, s in series:
        ax.hist(s, bins=bins, alpha=0.6, label=label)
    ax.axvline(target, color="k", linestyle="--", linewidth=1, label=f"target {target:g}")
    ax.set_xlabel("fraction of zero code values per image")
    ax.set_ylabel("images")
    ax.set_title(f"Code sparsity, {stats['n_images']} {stats['split']} images")
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def sparsity_section(
    run: Path, col: Collector, max_images: int, threshold_k: int | str | None, target: float
) -> Section:
    title = "Code sparsity"
    if max_images < 1:
        return Section("sparsity", title, False, "<p>skipped (--sparsity-images 0).</p>")
    if not (run / "sae" / "cfg.json").is_file() or not (run / "acts" / "manifest.json").is_file():
        return Section(
            "sparsity", title, False, not_run_html(TRAIN_HINT, run, " (needs acts/, sae/)")
        )
    try:
        stats = code_sparsity(run / "acts", run / "sae", max_images, threshold_k, target)
    except (OSError, ValueError, RuntimeError) as e:
        body = f'<p class="not-run">could not be computed: {html.escape(str(e))}</p>'
        return Section("sparsity", title, False, body)
    url = col.write("images/sparsity/sparsity_hist.png", plot_sparsity(stats, target))
    caption = f"per-image sparsity of {stats['architecture']} codes ({stats['split']} split)"
    means = [("raw", stats["raw"])]
    if stats["thresholded"] is not None:
        means.append((f"thresholded (k={stats['threshold_k']})", stats["thresholded"]))
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{s.mean():.4f}</td><td>{s.min():.4f}</td>"
        f"<td>{s.max():.4f}</td></tr>"
        for n, s in means
    )
    table = (
        '<div class="table-wrap"><table><thead><tr><th>codes</th><th>mean sparsity</th>'
        f"<th>min</th><th>max</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )
    body = figure_html(url, caption, None) + table
    return Section("sparsity", title, True, body, ["sae", "acts"], 1)


# ----- the page -----------------------------------------------------------------------------------
CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1em 2em;
       color: #1d1d1f; background: #fff; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
section { margin: 2.2em 0; }
.table-wrap { overflow-x: auto; margin: 0.8em 0; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #d0d0d0; padding: 3px 8px; vertical-align: top; }
thead th { background: #f2f2f2; }
tbody tr:nth-child(even) { background: #fafafa; }
code { background: #f2f2f2; padding: 0 3px; border-radius: 3px; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
.gallery { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
figure { margin: 0; max-width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
img.pixel { image-rendering: pixelated; }
figcaption { font-size: 12px; color: #555; max-width: 420px; word-break: break-all; }
.present { color: #11763a; font-weight: 600; } .missing { color: #a15c00; font-weight: 600; }
.not-run { color: #a15c00; }
img.broken { outline: 3px solid red; }
"""

# Counts images that did not load (naturalWidth 0) once the page has loaded, for browser_check;
# also outlines them in red for a human reader.
CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  broken.forEach(function (i) { i.classList.add("broken"); });
  document.body.dataset.images = String(imgs.length);
  document.body.dataset.brokenImages = String(broken.length);
  document.body.dataset.loaded = "1";
});
"""


def contents_html(sections: Sequence[Section]) -> str:
    rows = []
    for s in sections:
        status = "present" if s.present else "missing"
        label = f'<span class="{status}">{"present" if s.present else "not run"}</span>'
        src = ", ".join(f"<code>{html.escape(x)}/</code>" for x in s.sources)
        link = f'<a href="#{s.id}">{html.escape(s.title)}</a>'
        rows.append(f"<tr><td>{link}</td><td>{label}</td><td>{src}</td></tr>")
    n = sum(s.present for s in sections)
    return (
        f'<nav id="contents"><h2>Contents</h2><p>{n} of {len(sections)} sections present.</p>'
        '<div class="table-wrap"><table><thead><tr><th>section</th><th>status</th>'
        f"<th>source</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div></nav>"
    )


def page_html(run: Path, sections: Sequence[Section]) -> str:
    present = " ".join(s.id for s in sections if s.present)
    missing = " ".join(s.id for s in sections if not s.present)
    body = "\n".join(
        f'<section id="{s.id}" class="{"present" if s.present else "missing"}-section">'
        f"<h2>{html.escape(s.title)}</h2>\n{s.body}\n</section>"
        for s in sections
    )
    title = f"hsae report: {html.escape(run.name)}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{CSS}</style></head>
<body data-sections-present="{present}" data-sections-missing="{missing}">
<header><h1>H-space SAE report</h1><p>Run folder: <code>{html.escape(str(run))}</code></p></header>
{contents_html(sections)}
<main>
{body}
</main>
<script>{CHECK_SCRIPT}</script>
</body></html>
"""


SECTION_ORDER = (
    "training",
    "reconstruction",
    "sparsity",
    "probe",
    "features",
    "edits",
    "editbench",
    "counterfactual",
    "interpolate",
)
INDEX_FILE, SUMMARY_FILE, SCREENSHOT_FILE = "index.html", "report.json", "screenshot.png"


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
    made = {s.id: stage_section(run, s, col) for s in STAGES}
    made["training"] = training_section(run, col)
    made["sparsity"] = sparsity_section(run, col, sparsity_images, threshold_k, target)
    sections = [made[i] for i in SECTION_ORDER]
    col.prune(previous)
    atomic_write_text(col.out / INDEX_FILE, page_html(run, sections))
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
            }
            for s in sections
        ],
        "files": sorted(col.written),
    }
    atomic_write_json(col.out / SUMMARY_FILE, summary)
    return summary


# ----- headless browser check ---------------------------------------------------------------------
def find_chromium() -> str | None:
    """$HSAE_CHROMIUM, else the first Chromium/Chrome on PATH."""
    if os.environ.get("HSAE_CHROMIUM"):
        return os.environ["HSAE_CHROMIUM"]
    return next((p for n in CHROMIUM_NAMES if (p := shutil.which(n))), None)


# --virtual-time-budget lets the page finish loading (and run the onload check) before the DOM is
# dumped; --no-sandbox because CI containers run as root.
# fmt: off
CHROMIUM_FLAGS = ("--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                  "--no-first-run", "--disable-extensions", "--disable-dev-shm-usage",
                  "--virtual-time-budget=10000")
# fmt: on


def chromium_command(
    exe: str, url: str, profile: Path, shot: Path, window: tuple[int, int]
) -> list[str]:
    per_run = [f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}"]
    return [exe, *CHROMIUM_FLAGS, *per_run, f"--screenshot={shot}", "--dump-dom", url]


def run_chromium(cmd: list[str], timeout: float) -> str:
    """Run one headless Chromium in its own process group; return stdout (the DOM)."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        dom, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RuntimeError(f"chromium did not finish within {timeout:g} s") from None
    finally:
        # Helpers (crashpad) can outlive the browser; they are in the group we started.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    if proc.returncode != 0 or "<body" not in dom:
        tail = "\n".join(err.strip().splitlines()[-5:])
        raise RuntimeError(f"chromium failed (exit {proc.returncode}): {tail}")
    return dom


def parse_dom(dom: str) -> dict[str, Any]:
    """What the page's check script recorded, and the ids of its sections."""
    m = re.search(r"<body\b[^>]*>", dom)
    tag = m.group(0) if m else ""

    def attr(name: str) -> str | None:
        a = re.search(rf'\b{name}="([^"]*)"', tag)
        return a.group(1) if a else None

    broken, images = attr("data-broken-images"), attr("data-images")
    return {
        "loaded": attr("data-loaded") == "1",
        "images": int(images) if images is not None else None,
        "broken_images": int(broken) if broken is not None else None,
        "sections": re.findall(r'<section\b[^>]*\bid="([^"]+)"', dom),
        "present": (attr("data-sections-present") or "").split(),
    }


def browser_check(
    index: Path,
    screenshot: Path | None = None,
    window: tuple[int, int] = (1280, 2400),
    timeout: float = 180.0,
    exe: str | None = None,
) -> dict[str, Any]:
    """Open index.html in headless Chromium once: screenshot + DOM dump, parsed by parse_dom."""
    exe = exe or find_chromium()
    if exe is None:
        raise FileNotFoundError(
            "no Chromium found (tried $HSAE_CHROMIUM and " + ", ".join(CHROMIUM_NAMES) + "); "
            "install it with `make chromium` or `apt-get install chromium`"
        )
    with tempfile.TemporaryDirectory(prefix="hsae-chromium-", ignore_cleanup_errors=True) as tmp:
        shot = Path(tmp) / "shot.png"
        cmd = chromium_command(
            exe, Path(index).resolve().as_uri(), Path(tmp) / "profile", shot, window
        )
        result = parse_dom(run_chromium(cmd, timeout))
        result["screenshot"] = None
        if screenshot is not None and shot.is_file():
            atomic_write_bytes(screenshot, shot.read_bytes())
            result["screenshot"] = str(screenshot)
    return result


# ----- command ------------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="static HTML report of a run folder (RUN/report/index.html)")
    p.add_argument("run", type=Path, help="run folder (acts/, sae/, eval/, probe/, ...)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN/report)")
    p.add_argument(
        "--sparsity-images", type=int, default=512, help="test images for the histogram (0: skip)"
    )
    add_threshold_arguments(p)
    p.add_argument(
        "--check", action="store_true", help="open it in headless Chromium: broken images, shot"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hsae.sae.selection import parse_threshold_k

    k = parse_threshold_k(args.threshold_k)
    summary = build_report(args.run, args.out, args.sparsity_images, k, args.target_sparsity)
    print(f"wrote {summary['index']}")
    print(f"present: {', '.join(summary['present']) or '-'}")
    print(f"not run: {', '.join(summary['missing']) or '-'}")
    if not args.check:
        return 0
    index = Path(summary["index"])
    res = browser_check(index, index.parent / SCREENSHOT_FILE)
    print(
        f"browser check: {res['images']} images, {res['broken_images']} broken, "
        f"screenshot {res['screenshot']}"
    )
    return 0 if res["loaded"] and res["broken_images"] == 0 else 1
