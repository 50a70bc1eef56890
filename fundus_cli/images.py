"""Image grids and PNG files, shared by training, sampling and the reports."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from fundus_cli.fsio import atomic_path

if TYPE_CHECKING:
    import torch


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    import torch

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
