"""HTML report: markdown through markdown-it, a fake run folder rendered with every convention
(nested images, GIFs, several edit folders, a features folder with its JSON and grids, a missing
stage), named cards and headlines, and the page opened in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

from hsae import report as R
from hsae.cli import main
from hsae.data.store_writer import ActivationStoreWriter
from hsae.report.firing import Wanted, firing_maps
from hsae.sae import build_sae, make_config

C, K, N, L = 4, 3, 40, 16
SPLITS = [0] * 28 + [1] * 4 + [2] * 8
TOP = [("1:5", 1, 5, (255, 0, 0)), ("2:7", 2, 7, (0, 255, 0))]  # component, token, latent, colour
ATTR = ("Smiling", "3:1", 3, 1, (0, 0, 255))
EDIT_ROWS = ("a.png", "b.png")
BAD_NAME = "<b>x&y.png"  # a file name that is also markup: must reach the page escaped
# training, eval, histogram (3) + features: 3 cards × (strip, K×K map), the 2 edit strips of 1:5
# and 2 sub-folder crops (10) + edits: 2 row cards and edit-hat's 2 (4) + editbench's example (1)
# + interpolate's png and gif (2) + the atlas: 1 latent card × (drives, edits, effects) (3);
# edit/'s markdown image points at its cards instead
EXPECTED_IMAGES = 23


def tiny_png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def rows_png(path: Path, colors: list[tuple[int, int, int]], w: int = 24, h: int = 6) -> None:
    """A grid of len(colors) rows, each of one colour (to check the rows are cut right)."""
    a = np.concatenate([np.full((h, w, 3), c, np.uint8) for c in colors])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


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
    build_sae(make_config("channel_aware", C, K, n_latents=L, n_train_images=28)).save(run / "sae")
    log = "".join(
        json.dumps({"step": s, "loss": 10 / s, "mse": 5 / s, "l0": 3}) + "\n" for s in (1, 2, 3)
    )
    (run / "sae" / "train_log.jsonl").write_text(log + '{"step": 4, "lo')  # torn last line
    metrics = {"steps": 3, "final": {"loss": 3.3, "mse": 1.25, "l0": 3.0, "dead_pct": 0.0}}
    (run / "sae" / "metrics.json").write_text(json.dumps(metrics))


EVAL_TABLE = """| method | EV | cosine |
|---|---:|:---:|
| SAE <b>x</b> | 0.91 | 0.95 |
| PCA a\\|b | 0.80 | 0.90 |

- sae thresholded: sparsity 0.950
"""
EVAL_ROWS = [
    {"architecture": "channel_aware", "thresholded": False, "ev": 0.91, "active_per_image": 120},
    {"architecture": "channel_aware", "thresholded": True, "threshold_k": 3, "ev": 0.7},
    {"architecture": "pca", "n_latents": 16, "ev": 0.8},
    {"architecture": "pca", "n_latents": 64, "ev": 0.85},
]


def write_features(folder: Path) -> None:
    comp = lambda c, t, j, r: {"component": c, "token": t, "latent": j, "flat_index": t * L + j,  # noqa: E731
                               "mean": 0.5, "freq": 0.25, "mean_active": 2.0, "max": 3.0,
                               "top_rows": r, "top_values": [3.0, 2.0][: len(r)]}  # fmt: skip
    tops = [{"rank": i + 1, **comp(c, t, j, [i, i + 3])} for i, (c, t, j, _) in enumerate(TOP)]
    name, c, t, j, _ = ATTR
    best = {**comp(c, t, j, [5, 6]), "sign": -1, "auroc_train": 0.2, "auroc_test": 0.25,
            "freq_pos_train": 0.1, "freq_neg_train": 0.6}  # fmt: skip
    doc = {
        "settings": {"n_images": N, "rank_by": "mean"},
        "top_components": tops,
        "attributes": {name: {"best": best}, "Bangs": {"best": None, "note": "one class only"}},
        "files": {"top_grid": "max_activating.png", "attribute_grid": "attribute_components.png"},
    }
    (folder / "features.json").write_text(json.dumps(doc))
    rows_png(folder / "max_activating.png", [col for *_, col in TOP])
    rows_png(folder / "attribute_components.png", [ATTR[-1]])
    (folder / "table.md").write_text(
        "Top features.\n\n![one row per component](max_activating.png)\n"
    )


def write_atlas(folder: Path) -> None:
    """An atlas of one latent (as `hsae features --atlas` writes it) and one of a broken record."""
    files = {k: f"atlas/latent_00007_{k}.png" for k in ("drives", "edits", "effects")}
    for i, rel in enumerate(files.values()):
        tiny_png(folder / rel, (10 * i, 20, 30))
    rec = {
        "rank": 1, "latent": 7, "picked_for": "Smiling", "freq": 0.4,
        "fires_on": {"attribute": "Smiling", "sign": 1, "auroc_train": 0.8},
        "writes": {"attribute": "Eyeglasses", "sign": -1, "effect": -1.25, "se": 0.1,
                   "above_control": True},
        "effect": {"Smiling": 0.2, "Eyeglasses": -1.25}, "effect_add": {"Eyeglasses": -1.5},
        "effect_remove": {"Eyeglasses": -1.0}, "auroc_train": {"Smiling": 0.8},
        "example_ids": ["a.png"], "top_ids": ["b.png", "c.png"], "n_images": 8,
        "files": files,
    }  # fmt: skip
    doc = {
        "settings": {"architecture": "channel_aware", "rank": "auroc", "size": 0.5, "n_val": 8},
        "latents": [rec, {"latent": 9, "writes": None, "files": {"drives": "../a.png"}}],
        "summary": {"n_latents": 2, "n_write_what_they_fire_on": 0, "n_same_attribute": 0,
                    "n_above_control": 1},
    }  # fmt: skip
    (folder / "atlas.json").write_text(json.dumps(doc))


def write_edit(folder: Path) -> None:
    doc = {
        "components": ["1:5"],
        "images": [f"/anywhere/{n}" for n in EDIT_ROWS],
        "grid_columns": ["input", "unedited", "kappa=4"],
        "paths": {"grid": "grid.png", "images": {"a": {"4": "a_kappa4.png"}}},
        "rows": [{"image": "a", "kappa": 4, "pixel_vs_unedited": {"changed_frac": 0.25,
                                                                   "psnr_db": 30.0}}],
    }  # fmt: skip
    (folder / "edit.json").write_text(json.dumps(doc))
    rows_png(folder / "grid.png", [(9, 9, 9), (99, 99, 99)], w=18)
    tiny_png(folder / "a_kappa4.png", (9, 9, 9))  # in a row of the grid: not shown again


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A RUN folder by the stage conventions; counterfactual/ is deliberately missing."""
    run = tmp_path_factory.mktemp("run")
    write_acts_and_sae(run)
    write_stage(run / "eval", EVAL_TABLE, {"ev_vs_budget.png": (0, 128, 0)})
    (run / "eval" / "metrics.json").write_text(json.dumps({"rows": EVAL_ROWS}))
    write_stage(
        run / "probe", "# Probes\n\n| attribute | SAE |\n|---|---|\n| Smiling | 0.9 |\n", {}
    )
    probe = {"methods": [{"key": "sae", "name": "SAE k=3"}, {"key": "pca", "name": "PCA-16"}],
             "attributes": ["Smiling"], "mean": {"sae": {"accuracy": 0.875},
                                                 "pca": {"accuracy": 0.75}}}  # fmt: skip
    (run / "probe" / "probe.json").write_text(json.dumps(probe))
    feats = {"feature_0001/top.png": (200, 0, 0), "feature_0002/top.png": (0, 0, 200)}
    write_stage(run / "features", "", feats)
    write_features(run / "features")
    (run / "features" / "feature_0001" / "atlas.json").write_text(json.dumps({"auroc": 0.75}))
    write_atlas(run / "features")
    write_stage(run / "edit", "# Edit\n\n![the grid](grid.png)\n", {})
    write_edit(run / "edit")
    write_stage(run / "edit-hat", "no table here", {"grid.png": (99, 9, 9), BAD_NAME: (1, 1, 1)})
    write_stage(run / "editbench", "| edit | flip rate |\n|---|---|\n| 1 | 0.5 |\n", {})
    summary = {"sae": {"add": {"flip_rate": 0.125}}, "mean_diff": {"add": {"flip_rate": 0.5}}}
    bench = {"summary": summary, "attributes": {"X": {"val_sweep": {"sae": [{"flip_rate": 0.99}]}}}}
    (run / "editbench" / "editbench.json").write_text(json.dumps(bench))
    rows_png(run / "editbench" / "examples" / "X.png", [(5, 5, 5)] * 3)
    write_stage(run / "interpolate", "Walks.\n", {"walk.png": (1, 2, 3)})
    tiny_gif(run / "interpolate" / "walk.gif")
    return run


@pytest.fixture(scope="module")
def built(run_dir: Path) -> dict:
    return R.build_report(run_dir, sparsity_images=16)


def page_of(run_dir: Path) -> str:
    return (run_dir / "report" / "index.html").read_text()


# ----- markdown -----------------------------------------------------------------------------------
def test_markdown_tables_headings_lists_and_escaping() -> None:
    md = "# Title\n\nSome *text* with `a<b` and **bold**.\n\n" + EVAL_TABLE
    md += "\n```\n<raw> | not a table\n```\n1. one\n2. two\n\n<script>x</script>\n"
    out = R.markdown_to_html(md, heading_offset=2)
    assert "<h3>Title</h3>" in out
    assert "<p>Some <em>text</em> with <code>a&lt;b</code> and <strong>bold</strong>.</p>" in out
    assert '<th style="text-align:right">EV</th>' in out
    assert '<th style="text-align:center">cosine</th>' in out
    assert "<td>SAE &lt;b&gt;x&lt;/b&gt;</td>" in out and "<td>PCA a|b</td>" in out
    assert '<div class="table-wrap"><table>' in out
    assert "<li>sae thresholded: sparsity 0.950</li>" in out
    assert "<pre><code>&lt;raw&gt; | not a table\n</code></pre>" in out
    assert "<ol>\n<li>one</li>\n<li>two</li>\n</ol>" in out
    assert "<b>" not in out and "<raw>" not in out and "<script>" not in out


def test_markdown_images_resolve_point_to_cards_or_fall_back_to_alt_text() -> None:
    urls = {"grid.png": "images/edits/edit/grid.png", "top.png": "#cards"}
    md = (
        "![a grid](grid.png) ![gone](missing.png) ![rows](top.png) [j](javascript:x) ![](d%20f.png)"
    )
    urls["d%20f.png"] = "images/d%20f.png"
    out = R.markdown_to_html(md, resolve=urls.get)
    assert '<img src="images/edits/edit/grid.png" alt="a grid">' in out
    assert '<span class="caption">a grid</span>' in out  # every picture names itself
    assert '<span class="caption">d f.png</span>' in out  # by its file name if it has no alt
    assert "[gone]" in out and "missing.png" not in out
    assert '<a href="#cards">rows (shown as named cards)</a>' in out
    assert "javascript:" not in out.replace("[j](javascript:x)", "")  # not made a link


def test_ragged_table_rows_are_padded() -> None:
    out = R.markdown_to_html("| a | b | c |\n|---|---|---|\n| 1 |\n")
    assert out.count("<td>") == 3 and out.count("<td></td>") == 2


# ----- building the report ------------------------------------------------------------------------
def test_sections_present_and_missing(built: dict, run_dir: Path) -> None:
    assert built["missing"] == ["counterfactual"]
    assert set(built["present"]) == set(R.SECTION_ORDER) - {"counterfactual"}
    page = page_of(run_dir)
    for sid in R.SECTION_ORDER:
        assert f'<section id="{sid}"' in page
    assert "not run — run <code>hsae counterfactual" in page
    edits = next(s for s in built["sections"] if s["id"] == "edits")
    assert edits["sources"] == ["edit", "edit-hat"]  # editbench/ is its own section
    assert json.loads((run_dir / "report" / R.SUMMARY_FILE).read_text()) == built


def test_every_image_is_copied_and_linked_relatively(built: dict, run_dir: Path) -> None:
    report = run_dir / "report"
    page = page_of(run_dir)
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == EXPECTED_IMAGES
    for src in srcs + re.findall(r'<a href="([^"#]+)"', page):
        assert not re.match(r"^(/|[a-z]+:)", src), src  # relative, no scheme: works offline
        assert (report / unquote(src)).is_file(), src
    assert "images/features/features/feature_0002/top.png" in srcs
    assert "images/interpolate/interpolate/walk.gif" in srcs
    assert "data/reconstruction/eval/summary.json" in page
    assert "data/features/features/feature_0001/atlas.json" in page  # nested JSON too
    assert "<script src" not in page and "<link" not in page  # nothing from the network


def test_file_names_reach_the_page_escaped(built: dict, run_dir: Path) -> None:
    page = page_of(run_dir)
    assert "<b>" not in page
    assert "<figcaption>edit-hat/&lt;b&gt;x&amp;y.png</figcaption>" in page  # caption, escaped
    assert '<img src="images/edits/edit-hat/%3Cb%3Ex%26y.png"' in page  # URL, percent-encoded


def test_small_images_are_enlarged_and_captioned(built: dict, run_dir: Path) -> None:
    page = page_of(run_dir)
    assert 'alt="eval/ev_vs_budget.png" width="64" height="48"' in page  # 8×6, × 8 at most
    assert "<figcaption>features/feature_0001/top.png</figcaption>" in page


def test_sections_open_with_their_number(built: dict) -> None:
    head = {s["id"]: s["headline"] for s in built["sections"]}
    assert head["reconstruction"]["value"] == "0.910"
    assert "PCA L=64: 0.850" in head["reconstruction"]["detail"]
    assert "thresholded k=3: 0.700" in head["reconstruction"]["detail"]
    assert head["probe"]["value"] == "0.875" and "PCA-16 0.750" in head["probe"]["detail"]
    # the SAE's best test flip rate; validation sweeps are not results
    assert (
        head["editbench"]["value"] == "0.12" and "mean_diff add 0.50" in head["editbench"]["detail"]
    )
    assert head["edits"]["value"] == "25.0 %" and "1:5 at κ=4" in head["edits"]["detail"]
    assert head["features"]["value"] == "0.750" and "Smiling → 3:1" in head["features"]["label"]
    assert "absent" in head["features"]["label"]  # its test AUROC is 0.25: it fires on no smile
    assert head["training"]["value"] == "1.25"
    assert float(head["sparsity"]["value"]) > 0.5
    assert head["interpolate"] is None and head["counterfactual"] is None


def test_every_feature_is_one_named_card(built: dict, run_dir: Path) -> None:
    page = page_of(run_dir)
    cards = re.findall(r'<article class="card" id="([^"]+)" data-card="([^"]+)"', page)
    names = [n for _, n in cards]
    assert "Smiling: component 3:1" in names
    assert [n for n in names if n.startswith("component")] == ["component 1:5", "component 2:7"]
    assert "edit: a.png" in names and "edit: b.png" in names  # the edit grid, row by row
    assert "a_kappa4.png" not in page  # a file of those rows is not repeated
    assert "features/feature_0001" in names  # a sub-folder of images: a card named after it
    assert "<dt>auroc</dt><dd>0.75</dd>" in page  # with its JSON's scalars as facts
    # the rows of max_activating.png cut in order: each card shows its own colour
    out = run_dir / "report"
    for i, (_, _, _, colour) in enumerate(TOP):
        strip = out / "images/features/features/max_activating" / f"row{i:03d}.png"
        assert np.asarray(Image.open(strip).convert("RGB"))[0, 0].tolist() == list(colour)
    # the grids shown as cards are not repeated unlabelled; their markdown points at the cards
    assert "images/features/features/max_activating.png" not in page
    assert '<a href="#features-top">one row per component (shown as named cards)</a>' in page
    # component 1:5 was edited alone: its card carries the edit strips
    card_15 = page.split('data-card="component 1:5"')[1].split("</article>")[0]
    assert (
        "grid of a.png" in card_15 and "grid of b.png" in card_15 and "where 1:5 fires" in card_15
    )


def test_the_atlas_is_one_labelled_card_per_latent_with_its_number(
    built: dict, run_dir: Path
) -> None:
    page = page_of(run_dir)
    head = {s["id"]: s["headline"] for s in built["sections"]}["atlas"]
    assert head["value"] == "0 of 2" and "write the attribute they fire on" in head["label"]
    assert "strongest: latent 7 writes Eyeglasses (−), fires on Smiling (+)" in head["detail"]
    card = page.split('data-card="latent 7: writes Eyeglasses (−), fires on Smiling (+)"')[1]
    card = card.split("</article>")[0]
    assert "<dt>effect on Eyeglasses</dt><dd>-1.250 ± 0.100 logit per unit size</dd>" in card
    assert "<dd>-1.500 / -1.000</dd>" in card and "<dd>Smiling (0.800)</dd>" in card
    for what in ("is driven by", "added to a.png", "logit change per unit edit size"):
        assert what in card, what
    assert card.count("<figcaption>") == 3
    assert 'data-card="latent 9: writes –, fires on –"' in page  # a broken record: named anyway
    # shown in the atlas section only, not again in the features gallery
    assert page.count("latent_00007_drives.png") == 2  # the link and the img of one figure
    assert "data/features/features/atlas.json" in page


def test_firing_map_splits_the_pre_activation_over_positions(run_dir: Path) -> None:
    """For a linear encoder the map sums to pre(h) − pre(0): the part that h drives."""
    from hsae.data.store import ActivationStore
    from hsae.sae import load_sae
    from hsae.sae.threshold import codes_as_tokens

    rows = (1, 4, 9)
    (m,) = firing_maps(run_dir / "acts", run_dir / "sae", [Wanted(2, 7, rows)])
    assert m is not None and m.shape == (K, K)
    sae = load_sae(run_dir / "sae").eval()
    h = torch.from_numpy(ActivationStore(run_dir / "acts")[list(rows)].astype(np.float32))
    with torch.no_grad():
        pre = codes_as_tokens(sae.pre_activation(h))[:, 2, 7]
        pre0 = codes_as_tokens(sae.pre_activation(torch.zeros_like(h)))[:, 2, 7]
    assert abs(m.sum() - float((pre - pre0).mean())) < 1e-4


def test_training_curves_are_plotted_from_the_log(built: dict, run_dir: Path) -> None:
    assert (run_dir / "report" / "images" / "training" / "loss_curves.png").stat().st_size > 0
    assert "plotted from sae/train_log.jsonl (3 rows)" in page_of(run_dir)


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


def test_unknown_schemas_and_broken_json_render_generically(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_stage(run / "features", "x", {"f1/top.png": (1, 1, 1)})
    (run / "features" / "features.json").write_text("{not json")
    write_stage(run / "editbench", "y", {})
    (run / "editbench" / "editbench.json").write_text(json.dumps({"a": [1, {"b": None}]}))
    (run / "edit").mkdir()
    (run / "edit" / "edit.json").write_text(json.dumps({"grid_columns": "x", "images": 3}))
    summary = R.build_report(run, sparsity_images=0)
    assert {"features", "editbench", "edits"} <= set(summary["present"])
    assert all(s["headline"] is None for s in summary["sections"])
    assert 'data-card="features/f1"' in (run / "report" / "index.html").read_text()


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
    """One launch: every section and card is in the rendered DOM, every image loaded and named
    (a caption or a card), a screenshot is kept."""
    exe = _chromium()
    index = run_dir / "report" / "index.html"
    shot = run_dir / "report" / R.SCREENSHOT_FILE
    res = R.browser_check(index, shot, window=(1000, 1600), exe=exe)
    assert res["loaded"], "the page's load handler did not run"
    assert res["broken_images"] == 0 and res["images"] == EXPECTED_IMAGES
    assert res["unlabelled_images"] == 0
    assert set(R.SECTION_ORDER) <= set(res["sections"])
    assert set(res["present"]) == set(built["present"])
    assert {"Smiling: component 3:1", "component 1:5", "component 2:7", "edit: a.png"} <= set(
        res["cards"]
    )
    assert "mean test accuracy of the SAE k=3 probe over 1 attributes: 0.875" in res["headlines"]
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size == (1000, 1600)
        assert len(np.unique(np.asarray(im.convert("L")))) > 10  # drawn, not a blank page


@pytest.mark.slow
def test_browser_check_detects_broken_and_unlabelled_images(built: dict, run_dir: Path) -> None:
    exe = _chromium()
    page = page_of(run_dir)
    bad = run_dir / "report" / "broken-variant.html"
    good = re.findall(r'<img src="([^"]+)"', page)[0]
    extra = f'<img src="images/no-such.png"><figure><img src="{good}"></figure>'
    bad.write_text(page.replace("<main>", "<main>" + extra, 1))
    try:
        res = R.browser_check(bad, exe=exe)
    finally:
        bad.unlink()
    assert res["loaded"] and res["broken_images"] == 1 and res["unlabelled_images"] == 2


def test_features_headline_reads_an_anti_firing_component_as_a_separator() -> None:
    from hsae.report.features import features_headline

    best = [
        ("Pale_Skin", {"auroc_test": 0.02, "component": "45:494"}),
        ("Eyeglasses", {"auroc_test": 0.90, "component": "48:220"}),
    ]
    h = features_headline(best)
    assert h is not None and h.value == "0.980" and "45:494" in h.label and "absent" in h.label
    h = features_headline([("Eyeglasses", {"auroc_test": 0.90, "component": "48:220"})])
    assert h is not None and h.value == "0.900" and "absent" not in h.label
