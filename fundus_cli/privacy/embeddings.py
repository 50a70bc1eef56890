"""Embeddings for the privacy audit, all computed offline.

An embedding turns a set of images into ``Vectors``: one or more *parts* (arrays with a
row per image) and, for queries, the same for the mirrored images. The distance between
two images is the smallest over parts (and, for a query, over flips) of

    scale_j * ||a_j - b_j||

- E1 ``pixel``: the standardised pixels inside the common disc (``preprocess.prepare``),
  one part, scale 1 / sqrt(dim): the RMS distance, which is sqrt(2 - 2 r) for Pearson
  correlation r. 0 for a copy (or a copy with other brightness and contrast), about 1.4
  for unrelated images.
- E1 ``tiled``: the working square cut into a 4 x 4 grid; each tile, restricted to the
  disc, is standardised on its own and is one part. The distance between s and t is the
  SMALLEST over tiles of the RMS distance between the same tile of s and t (and of flip(s)
  and t). A quarter of a training image pasted into another image at its place makes the
  four tiles it covers identical up to brightness and contrast, so the tiled distance is
  about 0, while the whole-image distance stays large because three quarters differ.
  (AUDIT.md's "max over tiles" read as a similarity: the best-matching tile decides.) A
  tile that is flat in both images says nothing, so two flat tiles are never compared.
- E2 ``learned`` (``learned.py``): a small residual CNN trained from scratch on the training images only
  with a SimCLR contrastive loss (NT-Xent) and mild augmentations (flips, shifts of up to
  1/8 of the side, rotations up to 5 degrees, zoom up to 12 %, gamma 0.8-1.2, channel
  gains 0.9-1.1, noise, blur), so that transformed copies stay near their source; its pooled feature map,
  L2-normalised, with L2 distance. Seeded; the SHA-256 of its weights goes into the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fundus_cli.errors import FundusError
from fundus_cli.privacy.preprocess import flip, tile_layout


@dataclass(frozen=True)
class Vectors:
    """One set of images in one embedding (see the module docstring for the distance)."""

    parts: tuple[np.ndarray, ...]  # float32 (N, D_j) per part
    flipped: tuple[np.ndarray, ...] | None = None  # the mirrored images, same shapes; needed for queries
    scales: tuple[float, ...] = ()  # distance factor per part; empty = 1.0 each
    blank: tuple[np.ndarray | None, ...] = ()  # per part: bool (N,) rows with nothing to compare; empty = none
    names: tuple[str, ...] = field(default=(), compare=False)  # per part, for reports ("tile 1,2")

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("Vectors need at least one part")
        n = self.parts[0].shape[0]
        for j, p in enumerate(self.parts):
            if p.ndim != 2 or p.shape[0] != n:
                raise ValueError(f"part {j} has shape {p.shape}; every part needs ({n}, dim)")
        if self.flipped is not None and [f.shape for f in self.flipped] != [p.shape for p in self.parts]:
            raise ValueError("flipped parts must have the shapes of the parts")
        if not self.scales:
            object.__setattr__(self, "scales", tuple(1.0 for _ in self.parts))
        if not self.blank:
            object.__setattr__(self, "blank", tuple(None for _ in self.parts))
        if len(self.scales) != len(self.parts) or len(self.blank) != len(self.parts):
            raise ValueError("give one scale and one blank entry per part")

    def __len__(self) -> int:
        return int(self.parts[0].shape[0])

    def take(self, rows: np.ndarray) -> Vectors:
        """The rows ``rows`` (indices or a boolean mask) of every part."""
        return Vectors(parts=tuple(p[rows] for p in self.parts),
                       flipped=None if self.flipped is None else tuple(f[rows] for f in self.flipped),
                       scales=self.scales, blank=tuple(None if b is None else b[rows] for b in self.blank),
                       names=self.names)

    @staticmethod
    def concat(items: list[Vectors]) -> Vectors:
        """Rows of several chunks of the same embedding, in order."""
        first = items[0]
        flips = None if any(v.flipped is None for v in items) else tuple(
            np.concatenate([v.flipped[j] for v in items]) for j in range(len(first.parts)))
        blank = tuple(None if all(v.blank[j] is None for v in items) else np.concatenate(
            [np.zeros(len(v), bool) if v.blank[j] is None else v.blank[j] for v in items])
            for j in range(len(first.parts)))
        return Vectors(parts=tuple(np.concatenate([v.parts[j] for v in items]) for j in range(len(first.parts))),
                       flipped=flips, scales=first.scales, blank=blank, names=first.names)


# --------------------------------------------------------------------------- E1: pixels


def pixel_embedding(prepared: np.ndarray, mask: np.ndarray, *, flips: bool = True) -> Vectors:
    """E1: ``preprocess.prepare`` output (N, s, s, 3) -> the pixels inside ``mask``, RMS distance."""
    _check_prepared(prepared, mask)
    vec = np.ascontiguousarray(prepared[:, mask].reshape(len(prepared), -1), dtype=np.float32)
    flipped = None
    if flips:
        flipped = (np.ascontiguousarray(flip(prepared)[:, mask].reshape(len(prepared), -1), dtype=np.float32),)
    return Vectors(parts=(vec,), flipped=flipped, scales=(1.0 / math.sqrt(vec.shape[1]),), names=("image",))


def tiled_embedding(prepared: np.ndarray, mask: np.ndarray, *, grid: int = 4, min_coverage: float = 0.25,
                    min_std: float = 0.05, flips: bool = True) -> Vectors:
    """E1 tiled: one part per tile of ``preprocess.tile_layout``, each tile standardised on its own.

    min_std: a tile whose standard deviation is below this (in units of the whole image's,
        which ``prepare`` made 1) is flat: its row is zeros and marked blank, so two flat
        tiles never count as a match (their standardised difference would be noise).
    """
    _check_prepared(prepared, mask)
    tiles = tile_layout(mask, grid=grid, min_coverage=min_coverage)
    sides = [prepared] + ([flip(prepared)] if flips else [])
    parts: list[list[np.ndarray]] = [[], []]
    blank: list[np.ndarray] = []
    for tile in tiles:
        for k, x in enumerate(sides):
            vals = x[:, tile.rows, tile.cols][:, tile.mask].reshape(len(x), -1).astype(np.float64)
            mean = vals.mean(1, keepdims=True)
            std = vals.std(1, keepdims=True)
            flat = std[:, 0] < min_std
            z = np.where(flat[:, None], 0.0, (vals - mean) / np.maximum(std, min_std))
            parts[k].append(z.astype(np.float32))
            if k == 0:
                # A tile flat in the image is flat in its mirror too (same values), so one
                # flag serves both sides.
                blank.append(flat)
    return Vectors(parts=tuple(parts[0]), flipped=tuple(parts[1]) if flips else None,
                   scales=tuple(1.0 / math.sqrt(p.shape[1]) for p in parts[0]), blank=tuple(blank),
                   names=tuple(f"tile {t.row},{t.col}" for t in tiles))


def _check_prepared(prepared: np.ndarray, mask: np.ndarray) -> None:
    if prepared.ndim != 4 or prepared.shape[1:] != (*mask.shape, 3):
        raise FundusError(f"prepared images must be (count, {mask.shape[0]}, {mask.shape[1]}, 3) "
                          f"to match the common mask, got {prepared.shape}")
