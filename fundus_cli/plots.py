"""matplotlib, imported on first use, and the figures shared by commands: every plot has titles,
axis labels and units."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fundus_cli.fsio import atomic_path


def pyplot():  # type: ignore[no-untyped-def]
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Write `fig` as a PNG atomically and free it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    pyplot().close(fig)
    return path


def plot_losses(metrics_jsonl: Path, out_png: Path, *, title: str) -> Path | None:
    """Loss curves from metrics.jsonl (one panel per loss), with labelled axes."""
    from fundus_cli.schemas.training_run import read_metrics

    rows = read_metrics(metrics_jsonl.read_text(), metrics_jsonl)
    if not rows:
        return None
    plt = pyplot()
    keys = [k for k in ("loss", "recon", "kl", "d_loss", "g_loss", "r1", "lecam", "d_real", "d_fake") if k in rows[-1]]
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.0), squeeze=False)
    for ax, k in zip(axes[0], keys):
        vals = [r.get(k) for r in rows]
        # markers when there are few points (a short run logs one or two): a lone point has no line
        ax.plot(steps, vals, lw=1, marker="o" if len(rows) < 20 else None, ms=3)
        ax.set_title(k)
        ax.set_xlabel("step")
        ax.set_ylabel(k)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out_png)
