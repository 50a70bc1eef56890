"""Precision, recall, density and coverage (Naeem et al. 2020), k = 5.

Around every real feature vector lies a ball reaching its k-th nearest real neighbour
(itself excluded); likewise for the fakes.

    precision = share of fakes inside at least one real ball        (fidelity)
    recall    = share of reals inside at least one fake ball        (diversity)
    density   = mean number of real balls around a fake, / k        (fidelity, robust to outliers)
    coverage  = share of real balls holding at least one fake       (diversity, robust to outliers)

Same definitions and strict "<" comparisons as the authors' code (clovaai/generative-evaluation-prdc),
which builds three all-pairs distance matrices: N^2 floats, 800 MB for 10,000 images. Here
every quantity is reduced block by block as the distances are produced, so memory is
bounded by `block_bytes` whatever N is, and the answer is the same.

Squared distances come from |x|^2 + |y|^2 - 2 x.y in float64 on features centred on the
real mean (rounding error grows with the norms, and a common shift changes no distance).
Comparing squared distances is the same as comparing distances, without square roots.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from fundus_cli.errors import FundusError
from fundus_cli.metrics.registry import register_metric

NEAREST_K = 5

# Distance block budget: one (rows x N) float64 block; peak memory is about this plus an
# eighth of it per boolean temporary, beside the inputs. Each block re-reads the whole of
# the other set, so far smaller blocks would make the products memory-bound.
_BLOCK_BYTES = 32 << 20


def prdc(real: np.ndarray, fake: np.ndarray, *, k: int = NEAREST_K,
         block_bytes: int = _BLOCK_BYTES) -> dict[str, float]:
    """{"precision", "recall", "density", "coverage"} of fake (M, D) against real (N, D)."""
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise FundusError(f"PRDC needs two (images, dims) feature arrays of one dimension, got shapes "
                          f"{real.shape} and {fake.shape}; extract both with the same feature network")
    if min(len(real), len(fake)) <= k:
        raise FundusError(f"PRDC with k = {k} needs more than {k} images on each side, got {len(real)} real "
                          f"and {len(fake)} synthetic")
    if not (np.isfinite(real).all() and np.isfinite(fake).all()):
        raise FundusError("PRDC features contain NaN or infinity; recompute them")
    centre = real.mean(0)
    real = real - centre
    fake = fake - centre
    r_sq = np.einsum("ij,ij->i", real, real)
    f_sq = np.einsum("ij,ij->i", fake, fake)

    real_radius = _kth_neighbour_sq(real, r_sq, k=k, block_bytes=block_bytes)
    fake_radius = _kth_neighbour_sq(fake, f_sq, k=k, block_bytes=block_bytes)

    # One pass over real-fake distances, reals in blocks of rows, gathers all four.
    balls_around_fake = np.zeros(len(fake), np.int64)  # density; precision is "> 0"
    real_in_fake_ball = np.zeros(len(real), bool)  # recall
    nearest_fake = np.empty(len(real))  # coverage
    for rows, d2 in _sq_dist_blocks(real, r_sq, fake, f_sq, block_bytes=block_bytes):
        inside_real = d2 < real_radius[rows, None]
        balls_around_fake += inside_real.sum(0)
        real_in_fake_ball[rows] = (d2 < fake_radius[None, :]).any(1)
        nearest_fake[rows] = d2.min(1)

    return {
        "precision": float(np.mean(balls_around_fake > 0)),
        "recall": float(np.mean(real_in_fake_ball)),
        "density": float((1.0 / k) * balls_around_fake.mean()),  # the authors' rounding, to the bit
        "coverage": float(np.mean(nearest_fake < real_radius)),
    }


def _kth_neighbour_sq(x: np.ndarray, x_sq: np.ndarray, *, k: int, block_bytes: int) -> np.ndarray:
    """Squared distance from each row to its k-th nearest other row."""
    out = np.empty(len(x))
    for rows, d2 in _sq_dist_blocks(x, x_sq, x, x_sq, block_bytes=block_bytes):
        # Set each row's distance to itself to exactly 0 (the expanded form leaves a
        # rounding residue of either sign), so that it is always the first of the k + 1.
        d2[np.arange(d2.shape[0]), np.arange(rows.start, rows.stop)] = 0.0
        d2.partition(k, axis=1)  # in place: the block is ours, and a copy would double the memory
        out[rows] = d2[:, k]
    return out


def _sq_dist_blocks(a: np.ndarray, a_sq: np.ndarray, b: np.ndarray, b_sq: np.ndarray, *,
                    block_bytes: int) -> Iterator[tuple[slice, np.ndarray]]:
    """(rows of a, squared distances of those rows to all of b), block by block."""
    step = max(1, block_bytes // (8 * len(b)))
    for start in range(0, len(a), step):
        rows = slice(start, min(start + step, len(a)))
        d2 = a[rows] @ b.T
        d2 *= -2.0
        d2 += a_sq[rows, None]
        d2 += b_sq[None, :]
        np.maximum(d2, 0.0, out=d2)
        yield rows, d2


@register_metric("prdc")
def prdc_metric(real: np.ndarray, fake: np.ndarray, *, seed: int = 0) -> dict[str, float]:
    """Registry entry: exact k-NN, so the seed is unused."""
    return prdc(real, fake)
