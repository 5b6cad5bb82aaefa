"""Outputs of `hsae editbench`: editbench.json, table.md, curves/<attribute>.png (flip rate,
others kept and outside-region change against the edit size) and examples/<attribute>.png."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

BENCH_FILE, TABLE_FILE, CURVES_DIR, EXAMPLES_DIR = (
    "editbench.json",
    "table.md",
    "curves",
    "examples",
)
BASELINES = ("mean_diff", "pca", "random")
BAR = {"flip": 0.80, "keep": 0.95, "outside": 0.02}


def _f(v: Any, spec: str = ".2f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _rate(row: dict[str, Any], key: str) -> str:
    ci = row.get(f"{key}_ci")
    if row.get(key) is None:
        return "–"
    if not ci or ci[0] is None:
        return _f(row[key])
    return f"{row[key]:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def is_sae(label: str) -> bool:
    return not any(label == b or label.startswith(b + " ") for b in BASELINES)


def row_at(rows: list[dict[str, Any]], size: float | None, direction: str) -> dict | None:
    if size is None:
        return None
    for r in rows:
        if r["direction"] == direction and r["target_size"] == size:
            return r
    return None


def meets_bar(r: dict[str, Any] | None, pca: dict[str, Any] | None) -> bool:
    if r is None or not r["n"] or r["flipped"] is None:
        return False
    out = r.get("change_outside")
    ok = r["flipped"] >= BAR["flip"] and (r["preserved"] or 0) >= BAR["keep"]
    ok = ok and (out is None or out <= BAR["outside"])
    return ok and (pca is None or pca["flipped"] is None or r["flipped"] >= pca["flipped"])


def _pca_row(curves: dict[str, list], size: float | None, d: str) -> dict | None:
    found = [row_at(v, size, d) for k, v in curves.items() if k.startswith("pca")]
    rows = [r for r in found if r is not None and r["flipped"] is not None]
    return max(rows, key=lambda r: r["flipped"]) if rows else None


def attribute_table(attr: str, res: dict[str, Any], window: str) -> list[str]:
    curves = res["curves"][window]
    lines = [
        f"### {attr} (window {window}; test: {res['n_test_without']} without, "
        f"{res['n_test_with']} with)",
        "",
        "| feature | dir | size (first step) | size Σ window | flip [95%] | kept [95%] | out Δ | "
        "bar |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in ("add", "remove"):
        size = (res.get("matched") or {}).get(d, {}).get("size")
        pca = _pca_row(curves, size, d)
        for label, rows in curves.items():
            r = row_at(rows, size, d)
            if r is None:
                continue
            bar = ("yes" if meets_bar(r, pca) else "no") if is_sae(label) else ""
            lines.append(
                f"| {label} | {d} | {_f(r['size'])} (target {size:g}) | {_f(r['size_sum'])} | "
                f"{_rate(r, 'flipped')} (n={r['n']}) | {_rate(r, 'preserved')} | "
                f"{_f(r['change_outside'], '.3f')} | {bar} |"
            )
    return lines


def selection_lines(res: dict[str, Any]) -> list[str]:
    lines = ["", "| feature | selection | train AUROC | size per unit |", "|---|---|---|---|"]
    for label, f in res["features"].items():
        lines.append(
            f"| {label} | {f.get('selection', '–')} | {_f(f.get('auroc_train'), '.3f')} | "
            f"{_f(f.get('size_per_unit'), '.3g')} |"
        )
    return lines


def format_table(doc: dict[str, Any]) -> str:
    s = doc["settings"]
    lines = [
        "# Attribute-edit benchmark",
        "",
        f"{s['n_test']} test images of `{s['store']}` (t={s['t']}, {s['steps']} DDIM steps), "
        f"mode `{s['mode']}`, codes {s['codes']}. Features chosen on {s['n_train_stats']} train "
        f"images (AUROC) and {s['effect_images']} validation images (effect). Rows are at the "
        "matched size: the smallest swept size at which the mean-difference direction reaches its "
        f"best validation flip rate with ≥ {s['min_keep']:g} of the other attributes kept. "
        "flip = fraction of the group the classifier now judges the other way; kept = fraction "
        "of other-attribute verdicts unchanged; out Δ = mean |Δpixel| (0–1) outside the "
        "attribute's region; bar = flip ≥ 0.80, kept ≥ 0.95, out Δ ≤ 0.02 and flip ≥ the best "
        "PCA direction at the same size (SAE features only). Brackets: Wilson 95% intervals.",
        "",
    ]
    for w in s["windows"]:
        lines += [f"## Window {w}", ""]
        for attr, res in doc["attributes"].items():
            lines += [*attribute_table(attr, res, w), ""]
    lines += ["## Selected features", ""]
    for attr, res in doc["attributes"].items():
        lines += [f"### {attr}", *selection_lines(res), ""]
    return "\n".join(lines) + "\n"


def plot_curves(attr: str, res: dict[str, Any], window: str, path: Path) -> None:
    """Three panels against the measured first-step edit size: flip, kept, outside change."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hsae.utils.io import atomic_write_bytes

    n_feats = len(res["curves"][window])
    legend_rows = math.ceil(n_feats / 4)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5 + 0.22 * legend_rows))
    keys = (("flipped", "flip rate"), ("preserved", "others kept"), ("change_outside", "out Δ"))
    colours = plt.get_cmap("tab20")
    for i, (label, rows) in enumerate(res["curves"][window].items()):
        for d, style in (("add", "-"), ("remove", "--")):
            rr = [r for r in rows if r["direction"] == d and r["n"]]
            xs = [r["size"] for r in rr]
            for ax, (key, _) in zip(axes, keys, strict=True):
                ys = [math.nan if r[key] is None else r[key] for r in rr]
                kw = {"color": colours(i % 20), "ls": style, "marker": "o", "ms": 3}
                if key == "flipped":
                    ci = [r["flipped_ci"] or [y, y] for y, r in zip(ys, rr, strict=True)]
                    lo = [max(y - c[0], 0.0) for y, c in zip(ys, ci, strict=True)]
                    hi = [max(c[1] - y, 0.0) for y, c in zip(ys, ci, strict=True)]
                    name = label if d == "add" else None  # one legend entry per feature
                    ax.errorbar(xs, ys, yerr=[lo, hi], label=name, capsize=2, **kw)
                else:
                    ax.plot(xs, ys, **kw)
    for ax, (_, title) in zip(axes, keys, strict=True):
        ax.set_xlabel("‖h̃ − h‖ / ‖h‖ at the first edited step")
        ax.set_title(f"{attr}: {title} (window {window}; add solid, remove dashed)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].axhline(BAR["flip"], color="k", lw=0.5)
    axes[1].axhline(BAR["keep"], color="k", lw=0.5)
    axes[2].axhline(BAR["outside"], color="k", lw=0.5)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.subplots_adjust(bottom=(0.22 * legend_rows + 0.6) / (4.5 + 0.22 * legend_rows), top=0.92)
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def _example_grid(ex: dict[str, Any], path: Path) -> list[str]:
    """Rows: input, unedited resume, then one row per feature (grey where not kept)."""
    from hsae.utils.viz import save_grid

    n = len(ex["ids"])
    if n == 0:
        return []
    rows, labels = [ex["input"], ex["clean"]], ["input", "unedited resume"]
    for label, kept in ex["edits"].items():
        imgs = [kept.get(i, torch.zeros_like(ex["input"][0])) for i in range(n)]
        rows.append(torch.stack(imgs))
        labels.append(label)
    save_grid(rows, path)
    return labels


def write_editbench(out: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """editbench.json, table.md, curves/*.png, examples/*.png; returns the JSON document."""
    from hsae.utils.io import atomic_write_json, atomic_write_text
    from hsae.utils.jsonable import jsonable

    out.mkdir(parents=True, exist_ok=True)
    examples = doc.pop("_examples", {})
    window = doc["settings"]["windows"][-1]
    for attr, res in doc["attributes"].items():
        rel = f"{CURVES_DIR}/{attr}.png"
        plot_curves(attr, res, window, out / rel)
        res["curves_png"] = rel
        ex = examples.get(attr)
        if ex is not None:
            rel = f"{EXAMPLES_DIR}/{attr}.png"
            labels = _example_grid(ex, out / rel)
            if labels:
                res["examples"] = {"png": rel, "rows": labels, "ids": ex["ids"]}
    doc = jsonable(doc)
    atomic_write_json(out / BENCH_FILE, doc)
    atomic_write_text(out / TABLE_FILE, format_table(doc))
    return doc
