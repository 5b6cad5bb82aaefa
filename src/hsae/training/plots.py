"""The training log and its loss curves."""

from __future__ import annotations

import io
import json
from pathlib import Path

from hsae.utils.io import atomic_write_bytes, atomic_write_text


def _write_log(out: Path, history: list[dict[str, float]]) -> None:
    atomic_write_text(out / "train_log.jsonl", "".join(json.dumps(r) + "\n" for r in history))


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """loss, MSE, L0 and dead % against step, as a PNG (Agg canvas: no display, no pyplot).

    Linear axes and a fixed layout: log-axis mathtext labels and tight_layout cost seconds.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [("loss", "loss"), ("mse", "MSE"), ("l0", "L0 per token"), ("dead_pct", "dead %")]
    fig = Figure(figsize=(13, 3.2))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.16, top=0.9, wspace=0.3)
    steps = [r["step"] for r in history]
    for i, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.plot(steps, [r.get(key, float("nan")) for r in history])
        ax.set_title(title)
        ax.set_xlabel("step")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    atomic_write_bytes(path, buf.getvalue())
