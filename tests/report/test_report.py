"""HTML report: markdown conversion, a fake run folder rendered with every convention (nested
images, GIFs, several edit folders, a missing stage), and the page opened in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hsae.cli import main
from hsae.data.store import ActivationStoreWriter
from hsae.report import build as R
from hsae.sae import build_sae, make_config

C, K, N = 4, 3, 40
SPLITS = [0] * 28 + [1] * 4 + [2] * 8
# loss curves + histogram + 8 stage <img>: 7 image files, the edit grid also shown from table.md
EXPECTED_IMAGES = 10


def tiny_png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def tiny_gif(path: Path) -> None:
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def write_stage(folder: Path, table: str, images: dict[str, tuple[int, int, int]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "table.md").write_text(table)
    (folder / "summary.json").write_text(json.dumps({"any": "schema", "n": 1}))
    for rel, color in images.items():
        tiny_png(folder / rel, color)


def write_acts_and_sae(run: Path) -> None:
    rng = np.random.default_rng(0)
    w = ActivationStoreWriter.open(
        run / "acts",
        meta={"model": {"model_id": "unit"}, "t": 0.7},
        shape=(C, K, K),
        dtype="float16",
        shard_size=16,
        ids=[f"{i:03d}.png" for i in range(N)],
        splits=SPLITS,
    )
    h = rng.standard_normal((N, C, K, K)).astype(np.float32)
    for i in w.pending_shards():
        a, b = w.shard_rows(i)
        w.write_shard(i, h[a:b])
    torch.manual_seed(0)
    build_sae(make_config("channel_aware", C, K, n_latents=16, n_train_images=28)).save(run / "sae")
    log = "".join(
        json.dumps({"step": s, "loss": 10 / s, "mse": 5 / s, "l0": 3}) + "\n" for s in (1, 2, 3)
    )
    (run / "sae" / "train_log.jsonl").write_text(log + '{"step": 4, "lo')  # torn last line


EVAL_TABLE = """| method | EV | cosine |
|---|---:|:---:|
| SAE <b>x</b> | 0.91 | 0.95 |
| PCA a\\|b | 0.80 | 0.90 |

- sae thresholded: sparsity 0.950
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A RUN folder by the stage conventions; counterfactual/ is deliberately missing."""
    run = tmp_path_factory.mktemp("run")
    write_acts_and_sae(run)
    write_stage(run / "eval", EVAL_TABLE, {"ev_vs_budget.png": (0, 128, 0)})
    write_stage(
        run / "probe", "# Probes\n\n| attribute | SAE |\n|---|---|\n| Smiling | 0.9 |\n", {}
    )
    feats = {"feature_0001/top.png": (200, 0, 0), "feature_0002/top.png": (0, 0, 200)}
    write_stage(run / "features", "Top features by mean activation.\n", feats)
    write_stage(run / "edit", "# Edit\n\n![the grid](grid.png)\n", {"grid.png": (9, 9, 9)})
    write_stage(run / "edit-hat", "no table here", {"grid.png": (99, 9, 9)})
    write_stage(run / "editbench", "| edit | flip rate |\n|---|---|\n| 1 | 0.5 |\n", {})
    write_stage(run / "interpolate", "Walks.\n", {"walk.png": (1, 2, 3)})
    tiny_gif(run / "interpolate" / "walk.gif")
    return run


@pytest.fixture(scope="module")
def built(run_dir: Path) -> dict:
    return R.build_report(run_dir, sparsity_images=16)


# ----- markdown -----------------------------------------------------------------------------------
def test_markdown_tables_headings_lists_and_escaping() -> None:
    md = "# Title\n\nSome *text* with `a<b` and **bold**.\nsecond line\n\n" + EVAL_TABLE
    md += "\n```\n<raw> | not a table\n```\n1. one\n2. two\n"
    out = R.markdown_to_html(md, heading_offset=2)
    assert "<h3>Title</h3>" in out
    assert (
        "<p>Some *text* with <code>a&lt;b</code> and <strong>bold</strong>. second line</p>" in out
    )
    assert '<th style="text-align:right">EV</th>' in out
    assert '<th style="text-align:center">cosine</th>' in out
    assert "<td>SAE &lt;b&gt;x&lt;/b&gt;</td>" in out and "<td>PCA a|b</td>" in out
    assert "<ul><li>sae thresholded: sparsity 0.950</li></ul>" in out
    assert "<pre><code>&lt;raw&gt; | not a table</code></pre>" in out
    assert "<ol><li>one</li><li>two</li></ol>" in out
    assert "<b>" not in out and "<raw>" not in out


def test_markdown_images_resolve_or_fall_back_to_alt_text() -> None:
    urls = {"grid.png": "images/edits/edit/grid.png"}
    out = R.markdown_to_html("![a grid](grid.png) ![gone](missing.png)", resolve=urls.get)
    assert '<img src="images/edits/edit/grid.png" alt="a grid">' in out
    assert "[gone]" in out and "missing.png" not in out


def test_ragged_table_rows_are_padded() -> None:
    out = R.table_html(["| a | b | c |", "|---|---|---|", "| 1 |"])
    assert out.count("<td>") == 3


# ----- building the report ------------------------------------------------------------------------
def test_sections_present_and_missing(built: dict, run_dir: Path) -> None:
    assert built["missing"] == ["counterfactual"]
    assert set(built["present"]) == set(R.SECTION_ORDER) - {"counterfactual"}
    page = (run_dir / "report" / "index.html").read_text()
    for sid in R.SECTION_ORDER:
        assert f'<section id="{sid}"' in page
    assert "not run — run <code>hsae counterfactual" in page
    edits = next(s for s in built["sections"] if s["id"] == "edits")
    assert edits["sources"] == ["edit", "edit-hat"]  # editbench/ is its own section
    assert json.loads((run_dir / "report" / R.SUMMARY_FILE).read_text()) == built


def test_every_image_is_copied_and_linked_relatively(built: dict, run_dir: Path) -> None:
    report = run_dir / "report"
    page = (report / "index.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == EXPECTED_IMAGES
    for src in srcs + re.findall(r'<a href="([^"#]+)"', page):
        assert not re.match(r"^(/|[a-z]+:)", src), src  # relative, no scheme: works offline
        assert (report / src).is_file(), src
    assert "images/features/features/feature_0002/top.png" in srcs
    assert "images/interpolate/interpolate/walk.gif" in srcs
    assert "data/reconstruction/eval/summary.json" in page
    assert "<script src" not in page and "<link" not in page  # nothing from the network


def test_small_images_are_enlarged_and_captioned(built: dict, run_dir: Path) -> None:
    page = (run_dir / "report" / "index.html").read_text()
    assert 'alt="eval/ev_vs_budget.png" width="64" height="48"' in page  # 8×6, × 8 at most
    assert "<figcaption>features/feature_0001/top.png</figcaption>" in page


def test_training_curves_are_plotted_from_the_log(built: dict, run_dir: Path) -> None:
    assert (run_dir / "report" / "images" / "training" / "loss_curves.png").stat().st_size > 0
    assert (
        "plotted from sae/train_log.jsonl (3 rows)" in (run_dir / "report/index.html").read_text()
    )


def test_sparsity_matches_a_direct_computation(run_dir: Path) -> None:
    from hsae.data.store import ActivationStore
    from hsae.sae import load_sae
    from hsae.sae.threshold import codes_as_tokens, threshold_codes

    stats = R.code_sparsity(run_dir / "acts", run_dir / "sae", max_images=16, threshold_k=3)
    store = ActivationStore(run_dir / "acts")
    rows = store.indices_for_split("test")
    assert stats["split"] == "test" and stats["n_images"] == len(rows) == 8
    with torch.no_grad():
        tokens = codes_as_tokens(
            load_sae(run_dir / "sae").encode(torch.from_numpy(store[rows].astype(np.float32)))
        )
    expected = (threshold_codes(tokens, 3) == 0).flatten(1).double().mean(1).numpy()
    np.testing.assert_allclose(stats["thresholded"], expected)
    assert np.all(stats["thresholded"] >= stats["raw"])


def test_rebuild_removes_its_own_stale_copies_only(tmp_path: Path) -> None:
    run, out = tmp_path / "run", tmp_path / "run" / "report"
    write_stage(run / "features", "x", {"f1/top.png": (1, 1, 1)})
    write_stage(run / "edit", "y", {"grid.png": (2, 2, 2)})
    R.build_report(run, sparsity_images=0)
    copied = out / "images" / "features" / "features" / "f1" / "top.png"
    theirs = out / "images" / "notes.png"  # not written by the report: must survive
    tiny_png(theirs, (0, 0, 0))
    assert copied.is_file()
    shutil.rmtree(run / "features")
    summary = R.build_report(run, sparsity_images=0)
    assert not copied.exists() and not (out / "images" / "features").exists()
    assert theirs.is_file() and (out / "images" / "edits" / "edit" / "grid.png").is_file()
    assert "features" in summary["missing"] and "edits" in summary["present"]
    assert "images/edits/edit/grid.png" in summary["files"]


def test_cli_report_and_missing_run(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r"
    assert main(["report", str(run_dir), "--out", str(out), "--sparsity-images", "0"]) == 0
    text = capsys.readouterr().out
    assert "not run: sparsity, counterfactual" in text and (out / "index.html").is_file()
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "run folder not found" in capsys.readouterr().err


def test_empty_run_renders_every_section_as_not_run(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    summary = R.build_report(tmp_path / "run")
    assert summary["present"] == [] and summary["missing"] == list(R.SECTION_ORDER)


# ----- in a real browser --------------------------------------------------------------------------
def _chromium() -> str:
    exe = R.find_chromium()
    if exe is None:
        pytest.skip("chromium is not installed (`make chromium` installs Debian's package)")
    return exe


@pytest.mark.slow
def test_report_in_headless_chromium(built: dict, run_dir: Path) -> None:
    """One launch: every section is in the rendered DOM, no image failed, a screenshot is kept."""
    exe = _chromium()
    index = run_dir / "report" / "index.html"
    shot = run_dir / "report" / R.SCREENSHOT_FILE
    res = R.browser_check(index, shot, window=(1000, 1600), exe=exe)
    assert res["loaded"], "the page's load handler did not run"
    assert res["broken_images"] == 0 and res["images"] == EXPECTED_IMAGES
    assert set(R.SECTION_ORDER) <= set(res["sections"])
    assert set(res["present"]) == set(built["present"])
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size == (1000, 1600)
        assert len(np.unique(np.asarray(im.convert("L")))) > 10  # drawn, not a blank page


@pytest.mark.slow
def test_browser_check_detects_a_broken_image(built: dict, run_dir: Path) -> None:
    exe = _chromium()
    page = (run_dir / "report" / "index.html").read_text()
    bad = run_dir / "report" / "broken-variant.html"
    bad.write_text(page.replace("<main>", '<main><img src="images/no-such.png">', 1))
    try:
        res = R.browser_check(bad, exe=exe)
    finally:
        bad.unlink()
    assert res["loaded"] and res["broken_images"] == 1
