"""Resampling intervals: width against the true spread, centring on the full-sample value, overlap."""

from __future__ import annotations

import numpy as np
import pytest

from fundus_cli.errors import FundusError
from fundus_cli.metrics.bootstrap import bootstrap_ci, bootstrap_cis, cis_overlap
from fundus_cli.metrics.fid import frechet_distance
from fundus_cli.metrics.prdc import prdc


def mean_gap(real: np.ndarray, fake: np.ndarray) -> float:
    return float(fake[:, 0].mean() - real[:, 0].mean())


@pytest.mark.parametrize("resample", ["half", "replace"])
def test_width_matches_normal_theory_for_a_mean_difference(resample: str) -> None:
    rng = np.random.default_rng(0)
    real, fake = rng.standard_normal((200, 1)), rng.standard_normal((100, 1)) * 2 + 1
    low, high = bootstrap_ci(mean_gap, real, fake, n_boot=400, seed=1, resample=resample)
    se = np.sqrt(real.var() / 200 + fake.var() / 100)
    point = mean_gap(real, fake)
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert low < point < high
    assert low == pytest.approx(point - 1.96 * se, abs=0.3 * se)


def test_half_sampling_measures_the_spread_of_coverage() -> None:
    """PRDC coverage: the with-replacement bootstrap's interval is about twice too wide
    (repeated rows shrink the k-NN balls), half-sampling's is about right."""
    rng = np.random.default_rng(5)

    def draw() -> tuple[np.ndarray, np.ndarray]:
        return rng.standard_normal((100, 16)), rng.standard_normal((100, 16)) + 0.1

    true_sd = np.std([prdc(*draw())["coverage"] for _ in range(100)])
    widths: dict[str, list[float]] = {"half": [], "replace": []}
    for trial in range(4):
        real, fake = draw()
        for resample, w in widths.items():
            lo, hi = bootstrap_cis(lambda r, f, *, seed: prdc(r, f), real, fake, n_boot=40, seed=trial,
                                   resample=resample)["coverage"]
            w.append((hi - lo) / 3.92)
    assert 0.6 * true_sd < np.mean(widths["half"]) < 1.5 * true_sd
    assert np.mean(widths["replace"]) > 1.6 * true_sd


def test_reproducible_and_seeded() -> None:
    rng = np.random.default_rng(2)
    real, fake = rng.standard_normal((50, 1)), rng.standard_normal((50, 1))
    a = bootstrap_ci(mean_gap, real, fake, n_boot=50, seed=7)
    assert a == bootstrap_ci(mean_gap, real, fake, n_boot=50, seed=7)
    assert a != bootstrap_ci(mean_gap, real, fake, n_boot=50, seed=8)


@pytest.mark.parametrize("resample", ["half", "replace"])
def test_interval_is_centred_on_the_full_sample_value(resample: str) -> None:
    # FID of a smaller sample is larger; the plain percentile interval of the replicates
    # lies wholly above the full-sample value.
    rng = np.random.default_rng(3)
    real, fake = rng.standard_normal((30, 20)), rng.standard_normal((30, 20)) + 0.2
    point = frechet_distance(real, fake)
    low, high = bootstrap_ci(frechet_distance, real, fake, n_boot=100, seed=0, resample=resample)
    assert low < point < high
    r = np.random.default_rng(0)

    def rows() -> np.ndarray:
        return r.integers(0, 30, 30) if resample == "replace" else np.sort(r.permutation(30)[:15])

    reps = [frechet_distance(real[rows()], fake[rows()]) for _ in range(100)]
    assert np.quantile(reps, 0.025) > point  # what a plain percentile interval would report
    assert high - low == pytest.approx(np.diff(np.quantile(reps, [0.025, 0.975]))[0], rel=1e-9)


def test_dict_metrics_get_one_interval_per_value_and_fresh_seeds() -> None:
    seen: list[int] = []

    def metric(real: np.ndarray, fake: np.ndarray, *, seed: int) -> dict[str, float]:
        seen.append(seed)
        return {"a": float(real.mean()), "b": float(fake.mean())}

    rng = np.random.default_rng(4)
    cis = bootstrap_cis(metric, rng.standard_normal((40, 2)), rng.standard_normal((40, 2)), n_boot=10, seed=5)
    assert set(cis) == {"a", "b"} and all(lo < hi for lo, hi in cis.values())
    assert seen == list(range(5, 16))  # the full sample, then one seed per replicate


def test_overlap() -> None:
    assert cis_overlap((0.0, 1.0), (0.5, 2.0))
    assert cis_overlap((0.5, 2.0), (0.0, 1.0))
    assert cis_overlap((0.0, 3.0), (1.0, 2.0))
    assert not cis_overlap((0.0, 1.0), (1.5, 2.0))
    assert not cis_overlap((1.5, 2.0), (0.0, 1.0))


def test_rejects_bad_settings() -> None:
    x = np.zeros((5, 1))
    with pytest.raises(FundusError, match="replicates"):
        bootstrap_ci(mean_gap, x, x, n_boot=1)
    with pytest.raises(FundusError, match="alpha"):
        bootstrap_ci(mean_gap, x, x, alpha=1.5)
