"""PRDC: exact agreement with the authors' all-pairs formulation, blocking, sanity cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from fundus_cli.errors import FundusError
from fundus_cli.metrics.prdc import prdc


def prdc_all_pairs(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """clovaai/generative-evaluation-prdc's compute_prdc, with scipy's direct distances."""
    def kth(d: np.ndarray) -> np.ndarray:
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    real_r, fake_r = kth(cdist(real, real)), kth(cdist(fake, fake))
    d = cdist(real, fake)
    return {
        "precision": float((d < real_r[:, None]).any(axis=0).mean()),
        "recall": float((d < fake_r[None, :]).any(axis=1).mean()),
        "density": float((1 / k) * (d < real_r[:, None]).sum(axis=0).mean()),
        "coverage": float((d.min(axis=1) < real_r).mean()),
    }


@pytest.mark.parametrize("block_bytes", [8 * 7 * 150, 32 << 20])  # 7-row blocks, and one block
def test_matches_all_pairs_reference(block_bytes: int) -> None:
    rng = np.random.default_rng(0)
    real = rng.standard_normal((150, 10))
    # Partly overlapping, partly off to one side: no value at its limit.
    fake = np.concatenate([rng.standard_normal((80, 10)) * 0.7, rng.standard_normal((60, 10)) + 2.5])
    ours = prdc(real, fake, block_bytes=block_bytes)
    ref = prdc_all_pairs(real, fake)
    assert ours == ref  # exactly: the same comparisons, only blocked
    assert 0 < ref["precision"] < 1 and 0 < ref["recall"] < 1 and 0 < ref["coverage"] < 1
    assert ref["density"] > 0


def test_other_k_and_large_offsets() -> None:
    rng = np.random.default_rng(1)
    # A common offset far larger than the spread: centring keeps the expanded form exact.
    real = rng.standard_normal((90, 6)) + 1e4
    fake = rng.standard_normal((70, 6)) * 1.3 + 1e4 + 0.4
    assert prdc(real, fake, k=3, block_bytes=8 * 70 * 11) == prdc_all_pairs(real, fake, k=3)


def test_identical_sets_are_perfect() -> None:
    x = np.random.default_rng(2).standard_normal((100, 8))
    out = prdc(x, x.copy())
    assert out["precision"] == out["recall"] == out["coverage"] == 1.0
    assert out["density"] >= 1.0  # every fake sits in its own ball and its neighbours'


def test_far_apart_sets_score_zero() -> None:
    rng = np.random.default_rng(3)
    out = prdc(rng.standard_normal((60, 8)), rng.standard_normal((60, 8)) + 100)
    assert out == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_mode_collapse_keeps_precision_loses_recall() -> None:
    rng = np.random.default_rng(4)
    real = rng.standard_normal((200, 4))
    collapsed = real[:10] + rng.standard_normal((10, 4)) * 0.01
    out = prdc(real, np.repeat(collapsed, 20, axis=0))
    # Each repeated fake has 19 exact copies, so its ball (radius: 5th neighbour) is empty.
    assert out["precision"] == 1.0 and out["recall"] == 0.0 and out["coverage"] < 0.3


def test_too_few_images() -> None:
    rng = np.random.default_rng(5)
    with pytest.raises(FundusError, match="more than 5"):
        prdc(rng.standard_normal((5, 3)), rng.standard_normal((50, 3)))
    with pytest.raises(FundusError, match="same feature network"):
        prdc(rng.standard_normal((50, 3)), rng.standard_normal((50, 4)))
