"""Figures for the privacy audit report: titles, axis labels and units on every panel.

Pure functions of arrays: the audit command reads the images and passes them in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fundus_cli.plots import pyplot, save_figure

# Mean |difference| per pixel in standardised units (each image has unit variance inside the
# mask): 0 for a copy, about 1.1 for unrelated images. The colour scale is fixed so that
# panels compare across rows and reports.
DIFF_MAX = 2.0


@dataclass(frozen=True)
class Pair:
    """One query image beside its nearest training image."""

    query: np.ndarray  # uint8 (S, S, 3) as displayed (already mirrored when the match was mirrored)
    train: np.ndarray  # uint8 (S', S', 3)
    diff: np.ndarray  # float (s, s): mean |difference| over RGB at the working size, NaN outside the mask
    query_title: str
    train_title: str
    diff_title: str


def nearest_pairs(synthetic: list[Pair], reference: list[Pair], path: Path, *, reference_name: str,
                  title: str) -> Path:
    """Rows of (synthetic | nearest training | difference) next to (reference | nearest
    training | difference), the reference being holdout images (or training images without
    a holdout): what chance closeness looks like."""
    plt = pyplot()
    rows = max(len(synthetic), len(reference), 1)
    fig, axes = plt.subplots(rows, 7, figsize=(14.5, 2.35 * rows + 1.0), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 1, 0.12, 1, 1, 1]})
    heads = ("synthetic", "nearest training image", "|difference|", "", reference_name,
             "nearest training image", "|difference|")
    image = None
    for r in range(rows):
        for c in range(7):
            axes[r][c].axis("off")
        for side, pairs in ((0, synthetic), (4, reference)):
            if r >= len(pairs):
                if r == 0:
                    axes[r][side + 1].text(0.5, 0.5, "no images", ha="center", va="center")
                continue
            p = pairs[r]
            axes[r][side].imshow(p.query)
            axes[r][side].set_title(p.query_title, fontsize=8)
            axes[r][side + 1].imshow(p.train)
            axes[r][side + 1].set_title(p.train_title, fontsize=8)
            image = axes[r][side + 2].imshow(np.ma.masked_invalid(p.diff), cmap="magma", vmin=0.0, vmax=DIFF_MAX)
            axes[r][side + 2].set_title(p.diff_title, fontsize=8)
    for c, head in enumerate(heads):
        if head:
            axes[0][c].annotate(head, (0.5, 1.32), xycoords="axes fraction", ha="center", fontsize=10,
                                fontweight="bold")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.93, 0.97))
    if image is not None:
        cax = fig.add_axes((0.945, 0.15, 0.012, 0.7))
        bar = fig.colorbar(image, cax=cax)
        bar.set_label("mean |difference| per pixel (standardised units; 0 = identical)", fontsize=8)
    return save_figure(fig, path)


@dataclass(frozen=True)
class DistancePanel:
    """dcr of the synthetic and the calibration images in one embedding."""

    name: str
    synthetic: np.ndarray
    calibration: np.ndarray
    calibration_name: str  # "holdout" or "training (leave-one-out)"
    tau: float | None
    alpha: float
    subtitle: str  # key statistics


def distance_histograms(panels: list[DistancePanel], path: Path) -> Path:
    """Per embedding: histograms of dcr(S) and dcr(H) (as shares, so unequal sizes compare),
    tau_alpha marked."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.9), squeeze=False)
    for ax, p in zip(axes[0], panels):
        s = np.asarray(p.synthetic, float)
        h = np.asarray(p.calibration, float)
        s, h = s[np.isfinite(s)], h[np.isfinite(h)]
        both = np.concatenate([s, h])
        hi = float(both.max()) if both.size else 1.0
        bins = np.linspace(0.0, hi * 1.02 + 1e-9, 31)
        for values, label, colour in ((h, f"{p.calibration_name} (n = {len(h)})", "tab:blue"),
                                      (s, f"synthetic (n = {len(s)})", "tab:orange")):
            if len(values):
                ax.hist(values, bins=bins, weights=np.full(len(values), 1.0 / len(values)), alpha=0.55,
                        color=colour, label=label)
        if p.tau is not None:
            ax.axvline(p.tau, color="black", ls="--", lw=1.2, label=f"tau (alpha = {p.alpha:g}) = {p.tau:.3g}")
        else:  # tau is the floor(alpha (n + 1))-th smallest calibration distance
            need = math.ceil(1 / p.alpha - 1 - 1e-9)
            ax.plot([], [], " ", label=f"no tau: needs {need}+ {p.calibration_name} images")
        ax.set_xlabel(f"distance to nearest training image ({p.name})")
        ax.set_ylabel("share of images per bin")
        ax.set_title(f"{p.name}\n{p.subtitle}", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("dcr: synthetic vs real images the generator never saw (left of tau: closer than "
                 "most real images come)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
