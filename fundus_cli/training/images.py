"""Pictures a training run writes: sample grids and the loss curve."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch

from fundus_cli.fsio import atomic_path


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def grid_image(images: np.ndarray, *, nrow: int, pad: int = 2) -> np.ndarray:
    """Tile (N, H, W, 3) uint8 images into one picture, nrow per row, on a dark grey gap."""
    n, h, w, _ = images.shape
    rows = (n + nrow - 1) // nrow
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 40, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, nrow)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = im
    return out


def write_png(path: Path, rgb: np.ndarray) -> Path:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("OpenCV could not encode a PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return path


def save_grid(x: torch.Tensor, path: Path, *, nrow: int = 8) -> Path:
    return write_png(path, grid_image(to_uint8(x), nrow=nrow))


def plot_losses(metrics_jsonl: Path, out_png: Path, *, title: str) -> Path | None:
    """Loss curves from metrics.jsonl (one panel per loss), with labelled axes."""
    rows = []
    for line in metrics_jsonl.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("loss", "recon", "kl", "d_loss", "g_loss", "r1", "d_real", "d_fake") if k in rows[-1]]
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
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out_png
