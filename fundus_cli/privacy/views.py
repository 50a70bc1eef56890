"""Candidates for the registered distance: shifted views of a query (a copy moved by a few pixels
is near one of them in the learned embedding) and a cheap projection to search them in."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def view_offsets(max_shift: int) -> list[tuple[int, int]]:
    """Shifts (dy, dx), px at the working size, of the query views searched for candidates:
    a 3 x 3 grid of step ceil(2 max_shift / 3) without its centre (the unshifted query is
    searched anyway). Any shift within +-max_shift is then within about max_shift / 3 of a
    view, which the learned embedding (trained with small shifts) tolerates: on phantoms the
    source of every 8 px shifted copy was among the 3 nearest of some view (64 dimensions)."""
    if max_shift <= 2:
        return []
    g = -(-2 * max_shift // 3)
    return [(a, b) for a in (-g, 0, g) for b in (-g, 0, g) if (a, b) != (0, 0)]


def shift_images(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """uint8 (N, S, S, 3) images moved by (dy, dx) px, black where nothing moved in."""
    out = np.zeros_like(images)
    s = images.shape[1]
    ys, yd = slice(max(-dy, 0), s - max(dy, 0)), slice(max(dy, 0), s - max(-dy, 0))
    xs, xd = slice(max(-dx, 0), s - max(dx, 0)), slice(max(dx, 0), s - max(-dx, 0))
    out[:, yd, xd] = images[:, ys, xs]
    return out


@dataclass(frozen=True)
class Projection:
    """Principal axes of training features, for a cheap candidate search."""

    mean: np.ndarray  # float32 (D,)
    axes: np.ndarray  # float32 (D, dims)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float32) - self.mean) @ self.axes).astype(np.float32)


def fit_projection(x: np.ndarray, *, dims: int) -> Projection:
    """The top ``dims`` principal axes of x (N, D) (an exact SVD in torch, which honours
    torch's thread setting)."""
    x = np.asarray(x, np.float64)
    mean = x.mean(0)
    vt = torch.linalg.svd(torch.from_numpy(x - mean), full_matrices=False).Vh
    dims = max(1, min(dims, vt.shape[0]))
    return Projection(mean=mean.astype(np.float32), axes=np.ascontiguousarray(vt[:dims].T.numpy(), np.float32))
