"""Figures of the evaluate report: every plot has titles, axis labels and units."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fundus_cli.images import grid_image
from fundus_cli.metrics.fundus_stats import SCALAR_STATS
from fundus_cli.plots import pyplot, save_figure


def side_by_side_grids(real: Any, synth: Any, path: Path, *, per_row: int = 6) -> Path:
    """Real | synthetic, one row of each per class (or one row overall when unlabelled)."""
    plt = pyplot()
    groups: list[tuple[str, np.ndarray, np.ndarray]] = []
    if real.class_names and synth.class_names == real.class_names:
        for c, name in enumerate(real.class_names):
            groups.append((name, real.images[real.labels == c][:per_row], synth.images[synth.labels == c][:per_row]))
    else:
        groups.append(("all", real.images[: per_row * 2], synth.images[: per_row * 2]))
    fig, axes = plt.subplots(len(groups), 2, figsize=(2 * per_row * 0.9 + 1, 1.9 * len(groups) + 0.6),
                             squeeze=False)
    for row, (name, r, s) in enumerate(groups):
        for col, (imgs, what) in enumerate(((r, "real (holdout)"), (s, "synthetic"))):
            ax = axes[row][col]
            ax.axis("off")
            if len(imgs):
                ax.imshow(grid_image(imgs, nrow=per_row))
            else:
                ax.text(0.5, 0.5, "no images", ha="center", va="center")
            ax.set_title(f"{what}: {name}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def metric_bars(overall: dict[str, Any], path: Path) -> Path:
    """One panel per metric: synthetic vs the real-vs-real baseline, with 95 % CIs."""
    plt = pyplot()
    names = list(overall["synthetic"])
    fig, axes = plt.subplots(1, len(names), figsize=(2.4 * len(names), 3.0), squeeze=False)
    for ax, k in zip(axes[0], names):
        rows = [("synthetic", overall["synthetic"][k])]
        if "baseline_train" in overall:
            rows.append(("real train\n(baseline)", overall["baseline_train"][k]))
        vals = [r[1]["value"] for r in rows]
        err = np.array([[max(0.0, r[1]["value"] - r[1]["ci_low"]) for r in rows],
                        [max(0.0, r[1]["ci_high"] - r[1]["value"]) for r in rows]])
        ax.bar(range(len(rows)), vals, yerr=err, capsize=4, color=["tab:orange", "tab:blue"][: len(rows)])
        ax.set_xticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
        better = "lower is better" if k in ("fid", "kid") else "higher is better"
        ax.set_title(f"{k} ({better})", fontsize=9)
        ax.set_ylabel(k)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"realism: {overall['n_compared']} synthetic (or real training) vs {overall['n_real']} real holdout images, 95 % CI", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def stat_histograms(per_image: dict[str, dict[str, np.ndarray]], path: Path) -> Path:
    """Distributions of each fundus statistic: real holdout, synthetic, real train."""
    plt = pyplot()

    units = {"vessel_density": "share of field of view", "sharpness": "Laplacian variance",
             "disc_brightness": "luminance (0-255)"}
    fig, axes = plt.subplots(1, len(SCALAR_STATS) + 1, figsize=(4.0 * (len(SCALAR_STATS) + 1), 3.2))
    colours = {"real": "tab:blue", "synthetic": "tab:orange", "train": "tab:green"}
    for ax, k in zip(axes, SCALAR_STATS):
        allv = np.concatenate([np.asarray(v[k], float) for v in per_image.values()])
        bins = np.linspace(allv.min(), allv.max() + 1e-9, 25)
        for name, v in per_image.items():
            ax.hist(np.asarray(v[k], float), bins=bins, alpha=0.5, density=True, label=name, color=colours.get(name))
        ax.set_title(k.replace("_", " "))
        ax.set_xlabel(units[k])
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    ax = axes[-1]
    for name, v in per_image.items():
        h = np.asarray(v["histogram"]).mean(0)  # (3, bins)
        centres = (np.arange(h.shape[-1]) + 0.5) * 256 / h.shape[-1]
        for c, ch in enumerate("rgb"):
            ax.plot(centres, h[c], color={"r": "red", "g": "green", "b": "blue"}[ch],
                    ls={"real": "-", "synthetic": "--", "train": ":"}.get(name, "-"), lw=1,
                    label=f"{name} {ch}" if c == 0 else None)
    ax.set_title("colour in the field of view\n(solid real, dashed synthetic, dotted train)", fontsize=9)
    ax.set_xlabel("grey level")
    ax.set_ylabel("share of pixels")
    fig.tight_layout()
    return save_figure(fig, path)


def learning_curve(useful: dict[str, Any], path: Path) -> Path:
    """Balanced accuracy against the share of real images, without and with the synthetic ones."""
    from fundus_cli.metrics.usefulness import scenario_name

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    fractions = sorted(useful["fractions"] + ([1.0] if 1.0 not in useful["fractions"] else []))
    sc = useful["scenarios"]
    for with_synth, colour, label in ((False, "tab:blue", "real only"), (True, "tab:orange", "real + synthetic")):
        rows = [sc[scenario_name(f, with_synth)]["balanced_accuracy"] for f in fractions]
        ax.errorbar([100 * f for f in fractions], [r["value"] for r in rows],
                    yerr=[[r["value"] - r["ci_low"] for r in rows], [r["ci_high"] - r["value"] for r in rows]],
                    marker="o", capsize=3, color=colour, label=label)
    if "synthetic" in sc:
        ax.axhline(sc["synthetic"]["balanced_accuracy"]["value"], color="tab:green", ls="--", label="synthetic only")
    ax.axhline(useful["summary"]["chance_balanced_accuracy"], color="grey", ls=":", label="chance")
    ax.set_xlabel("share of the real training images (%)")
    ax.set_ylabel("balanced accuracy on the real holdout")
    ax.set_title(f"learning curve ({useful['seeds']} seeds, 95 % CI over test images)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
