"""Images -> comparable arrays for the privacy audit: one common disc, standardised pixels, flips, tiles.

Every image of the audit (training, holdout, synthetic) goes through the same steps, so
that distances compare picture content and not cameras or exposure:

1. ``to_unit``: resize the cropped photograph to the working size (default 64) as float
   0..1; pixels outside the image's own field of view are filled with its mean colour
   inside it, so a disc cut off by the frame does not carry a black cap into the
   comparison.
2. ``common_mask``: one disc shared by all images, slightly inside the rim and
   mirror-symmetric (so that a horizontal flip maps the mask onto itself); everything
   outside it is zero. Black borders therefore never count.
3. ``standardise``: zero mean and unit variance per image over its RGB values inside the
   mask. The RMS distance between two standardised images is then sqrt(2 - 2 r) with r
   their Pearson correlation: brightness and contrast changes do not hide a copy.

Each step works image by image, so callers may process a large file chunk by chunk with
the same mask and get the same rows as in one go.

Flips (``flip``): the mirrored image, for d(s, t) = min(d(s, t), d(flip(s), t)).
Tiles (``tile_layout``, used by the tiled embedding): a grid of squares over the working
square, each restricted to the mask.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from fundus_cli.data.quality import hamming_matrix, phash
from fundus_cli.errors import FundusError

DEFAULT_SIZE = 64
# The outermost ring of a resized disc mixes fundus and black border by an amount that
# depends on the exact crop; 6 % of the radius (2 px at 64 px) keeps it out.
DEFAULT_SHRINK = 0.94
# A pixel belongs to the common disc when at least this share of the images show fundus
# there. 1.0 would be the strict intersection, which a single photograph with a cut-off
# disc would shrink for everybody; the few images that lack such a pixel use their fill.
DEFAULT_COVERAGE = 0.9
# Below this standard deviation (0..1 scale) an image is treated as flat: standardising
# it would only amplify quantisation noise, so it becomes all zeros.
_FLAT_STD = 1e-4


def disc(size: int, *, shrink: float = 1.0) -> np.ndarray:
    """Boolean (size, size) disc inscribed in the square (centre (size-1)/2), radius shrink * size / 2."""
    if size < 4:
        raise FundusError(f"working size {size} px is too small for the audit; use 32 px or more")
    c = (size - 1) / 2.0
    r = shrink * size / 2.0
    y, x = np.mgrid[:size, :size]
    return (x - c) ** 2 + (y - c) ** 2 <= r * r


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """Boolean (N, size, size): a working-size pixel is inside when at least half of it was."""
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2]:
        raise FundusError(f"field-of-view masks must be (count, size, size), got shape {masks.shape}")
    if masks.shape[1] == size:
        return masks.astype(bool)
    interp = cv2.INTER_AREA if masks.shape[1] > size else cv2.INTER_LINEAR
    out = np.empty((len(masks), size, size), dtype=bool)
    for i, m in enumerate(masks):
        out[i] = cv2.resize(m.astype(np.float32), (size, size), interpolation=interp) >= 0.5
    return out


def common_mask(masks: np.ndarray | Iterable[np.ndarray] | None, *, size: int = DEFAULT_SIZE,
                coverage: float = DEFAULT_COVERAGE, shrink: float = DEFAULT_SHRINK) -> np.ndarray:
    """The disc that every image of the audit is compared inside: boolean (size, size).

    masks: the images' own field-of-view masks (N, S, S) at their stored size, or an
        iterable of such chunks (read one slice of a file at a time), or None for the
        plain inscribed disc. Pass the training set's masks and reuse the result for the
        holdout and synthetic images: all sets must share one mask.
    coverage: share of the images that must show fundus at a pixel for it to count.
    shrink: radius of the disc relative to the inscribed one.

    The result is symmetric under a horizontal flip, which flip invariance requires.
    """
    if not 0.0 < coverage <= 1.0:
        raise FundusError(f"mask coverage must be in (0, 1], got {coverage}")
    if not 0.0 < shrink <= 1.0:
        raise FundusError(f"mask shrink must be in (0, 1], got {shrink}")
    mask = disc(size, shrink=shrink)
    if masks is not None:
        chunks = [masks] if isinstance(masks, np.ndarray) else masks
        counts = np.zeros((size, size), dtype=np.int64)
        n = 0
        for chunk in chunks:
            small = resize_masks(chunk, size)
            counts += small.sum(0)
            n += len(small)
        if n:
            mask &= counts >= coverage * n
    mask &= mask[:, ::-1]
    if mask.sum() < 16:
        raise FundusError(f"the images share only {int(mask.sum())} field-of-view pixels at {size} px; "
                          "check the fov_mask column of the dataset files (it should be 1 inside the disc)")
    return mask


def to_unit(images: np.ndarray, masks: np.ndarray | None, *, size: int) -> np.ndarray:
    """uint8 (N, S, S, 3) cropped photographs -> float32 (N, size, size, 3) in 0..1.

    Outside each image's own field of view (``masks``, (N, S, S); None means the inscribed
    disc) the pixels take the image's mean colour inside it, so a cut-off or notched disc
    looks like an ordinary one within the common mask.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise FundusError(f"images must be square RGB arrays (count, size, size, 3), got shape {images.shape}")
    if images.dtype != np.uint8:
        raise FundusError(f"images must be uint8 as stored in the dataset files, got {images.dtype}")
    n, s = images.shape[0], images.shape[1]
    if masks is None:
        own = np.broadcast_to(disc(size), (n, size, size))
    else:
        if np.shape(masks) != images.shape[:3]:
            raise FundusError(f"masks have shape {np.shape(masks)} but the images {images.shape}; "
                              "give one (size, size) mask per image")
        own = resize_masks(masks, size)
    interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
    out = np.empty((n, size, size, 3), dtype=np.float32)
    for i in range(n):
        img = images[i].astype(np.float32) * np.float32(1.0 / 255.0)
        small = img if s == size else cv2.resize(img, (size, size), interpolation=interp)
        inside = own[i]
        if inside.any():
            fill = small[inside].mean(0)
        else:  # nothing to go by; an all-black image is flat and standardises to zeros
            fill = np.zeros(3, np.float32)
        out[i] = np.where(inside[:, :, None], small, fill)
    return out


def standardise(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float (N, S, S, 3) -> float32, zero mean and unit variance per image over RGB inside
    ``mask``, zero outside. Flat images (no contrast at all) become all zeros."""
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1:3] != mask.shape:
        raise FundusError(f"images of shape {x.shape} do not match the {mask.shape} mask")
    vals = x[:, mask].astype(np.float64)  # (N, M, 3)
    mean = vals.mean(axis=(1, 2), keepdims=True)
    std = vals.std(axis=(1, 2), keepdims=True)
    z = np.where(std > _FLAT_STD, (vals - mean) / np.maximum(std, _FLAT_STD), 0.0)
    out = np.zeros(x.shape, dtype=np.float32)
    out[:, mask] = z
    return out


def prepare(images: np.ndarray, masks: np.ndarray | None, *, mask: np.ndarray) -> np.ndarray:
    """The audit's pixel representation: float32 (N, s, s, 3), s = mask.shape[0]; resized,
    own field of view filled, standardised inside the common ``mask``, zero outside."""
    return standardise(to_unit(images, masks, size=mask.shape[0]), mask)


def flip(x: np.ndarray) -> np.ndarray:
    """Horizontal mirror of (N, S, S, ...) images: a left eye's picture as a right eye's."""
    return np.ascontiguousarray(x[:, :, ::-1])


@dataclass(frozen=True)
class Tile:
    """One square of the tiled embedding's grid, with the common mask inside it."""

    row: int  # grid position, 0-based
    col: int
    rows: slice  # pixels of the working square
    cols: slice
    mask: np.ndarray  # boolean (h, w): the common mask inside the square


def tile_layout(mask: np.ndarray, *, grid: int = 4, min_coverage: float = 0.25) -> list[Tile]:
    """The grid x grid squares of the working square that the common mask covers enough.

    Squares where less than ``min_coverage`` of the area is fundus (the corners of a 4 x 4
    grid, about 20 %) are left out: a few dozen rim pixels say little about the image.
    """
    size = mask.shape[0]
    if grid < 1 or size < 2 * grid:
        raise FundusError(f"a {grid} x {grid} tile grid does not fit a {size} px working size")
    edges = np.linspace(0, size, grid + 1).round().astype(int)
    tiles = []
    for a in range(grid):
        for b in range(grid):
            rows, cols = slice(edges[a], edges[a + 1]), slice(edges[b], edges[b + 1])
            inside = mask[rows, cols]
            if inside.mean() >= min_coverage and inside.sum() >= 4:
                tiles.append(Tile(row=a, col=b, rows=rows, cols=cols, mask=inside.copy()))
    if not tiles:
        raise FundusError(f"no tile of the {grid} x {grid} grid is at least {min_coverage:.0%} fundus")
    return tiles


# --------------------------------------------------------------------------- perceptual hashes


def flipped_phashes(images: np.ndarray) -> np.ndarray:
    """uint64 perceptual hashes (``fundus_cli.data.quality.phash``) of the mirrored images.

    The stored ``phash`` column hashes the image as it is; a mirrored copy of a training
    image has an unrelated hash, so the audit compares both against the training hashes.
    """
    images = np.asarray(images)
    return np.array([phash(np.ascontiguousarray(img[:, ::-1])) for img in images], dtype=np.uint64)


def phash_nearest(queries: np.ndarray, train: np.ndarray, *, flipped: np.ndarray | None = None,
                  block: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest training hash of every query hash: (bits (Q,) int64, train index (Q,) int64,
    flipped (Q,) bool). ``flipped`` are the queries' mirrored hashes (``flipped_phashes``);
    with them, a query matches at the smaller of its two distances. Memory is block^2."""
    q = np.asarray(queries, dtype=np.uint64)
    t = np.asarray(train, dtype=np.uint64)
    if flipped is not None and np.shape(flipped) != q.shape:
        raise FundusError(f"{np.shape(flipped)} flipped hashes for {q.shape} queries; give one per query")
    bits = np.full(len(q), 65, dtype=np.int64)  # more than any real distance
    index = np.full(len(q), -1, dtype=np.int64)
    mirrored = np.zeros(len(q), dtype=bool)
    if len(t) == 0:
        return bits, index, mirrored
    sides = [(q, False)] + ([(np.asarray(flipped, dtype=np.uint64), True)] if flipped is not None else [])
    for side, is_flip in sides:
        for s in range(0, len(q), block):
            best = np.full(min(block, len(q) - s), 65, dtype=np.int64)
            arg = np.zeros_like(best)
            for u in range(0, len(t), block):
                d = hamming_matrix(side[s:s + block], t[u:u + block]).astype(np.int64)
                j = d.argmin(1)
                dj = d[np.arange(len(d)), j]
                better = dj < best  # strict: the earliest training index wins ties
                best[better], arg[better] = dj[better], j[better] + u
            sl = slice(s, s + len(best))
            better = best < bits[sl]
            bits[sl] = np.where(better, best, bits[sl])
            index[sl] = np.where(better, arg, index[sl])
            mirrored[sl] = np.where(better, is_flip, mirrored[sl])
    return bits, index, mirrored
