"""Could each test of the audit fail with these numbers of images? The rank-test arithmetic, and
what the audit needs when a test could not (`could_fail`).

Shared by the decision rules (`decision.decide`) and the per-class tests (`per_class`), which
is why it sits in a module of its own rather than in either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as sps

from fundus_cli.privacy.stats import EmbeddingAudit
from fundus_cli.privacy.thresholds import Thresholds


def max_rank_z(m: int, n: int) -> float:
    """The largest |z| a Mann-Whitney comparison of m against n values can reach (complete
    separation): sqrt(3 m n / (m + n + 1))."""
    return float(np.sqrt(3.0 * m * n / (m + n + 1))) if m and n else 0.0


def min_holdout_for_alpha(alpha: float) -> int:
    """Smallest |H| with floor(alpha (|H| + 1)) >= 1: the smallest conformal p-value 1 / (|H| + 1)
    reaches alpha, and tau_alpha exists (the same rounding as copying_tests.memorization_test)."""
    n = 1
    while int(np.floor(alpha * (n + 1) + 1e-9)) < 1:
        n += 1
    return n


MIN_CELL_HOLDOUT = 10  # stats.audit_embedding fits |H| // 10 cells: C_T needs 10 holdout images


@dataclass(frozen=True)
class Power:
    ran: tuple[str, ...]  # tests that ran and could reach their level, in plain words
    missing: tuple[str, ...]  # tests that could not, each with why and what would do
    min_holdout: int | None  # usable holdout images every test needs (None: enough already)
    min_synthetic: int | None  # synthetic images every test needs (None: enough already)


def smallest(ok: Any, start: int = 1, limit: int = 10**7) -> int | None:
    """Smallest n >= start with ok(n), or None below limit (ok is monotone in n)."""
    if not ok(limit):
        return None
    lo, hi = start, limit
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


@dataclass
class _Tally:
    """What the power checks found so far (see Power)."""

    ran: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    need_h: list[int] = field(default_factory=list)
    need_s: list[int] = field(default_factory=list)


def could_fail(results: Sequence[EmbeddingAudit], th: Thresholds, n_s: int, *, accept_leave_one_out: bool,
           min_cell_synthetic: int) -> Power:
    """Which tests could have failed with these numbers of images, and what would let the others."""
    n_h = len(results[0].calibration_dcr)
    alpha = results[0].memorization.alpha
    holdout = all(r.calibration == "holdout" for r in results)
    what = "holdout" if holdout else "leave-one-out calibration"
    t = _Tally()
    ran, missing, need_h, need_s = t.ran, t.missing, t.need_h, t.need_s
    names = ", ".join(r.name for r in results)

    h_alpha = min_holdout_for_alpha(alpha)
    min_p = 1.0 / (n_h + 1)
    if n_h >= h_alpha:
        ran.append(f"copy test per synthetic image ({names}: conformal p-value as small as 1/{n_h + 1} = "
                   f"{min_p:.3g} <= alpha {alpha:g}, with the ratio test)")
        ran.append(f"memorization-rate test (share of synthetic images below tau_alpha, {th.memorization_test} "
                   "test)")
    else:
        missing.append(f"with {n_h} {what} images the smallest possible p-value is 1/{n_h + 1} = {min_p:.3f}, "
                       f"above alpha = {alpha:g}: no synthetic image can be shown closer to a training image than "
                       f"chance, and the memorization-rate test has no tau_alpha (it needs {h_alpha}+ images)")
        need_h.append(h_alpha)
    _zu_power(t, th, n_s=n_s, n_h=n_h, names=names, what=what)
    cells = [r for r in results if r.cells is not None and r.cells.c_t is not None]
    if cells:
        ran.append("cell-wise data-copying test C_T (" + ", ".join(f"{r.name}: {r.cells.cells_used} cells"
                                                                   for r in cells if r.cells) + ")")
    else:
        missing.append(f"the cell-wise data-copying test C_T was skipped in every embedding: it needs at least "
                       f"{MIN_CELL_HOLDOUT} {what} and {min_cell_synthetic} synthetic images, and the pixel or "
                       "learned embedding")
        need_h.append(MIN_CELL_HOLDOUT)
        if n_s < min_cell_synthetic:
            need_s.append(min_cell_synthetic)

    _membership_power(t, results, th, holdout=holdout)
    return Power(ran=tuple(ran), missing=tuple(missing),
                 min_holdout=max(need_h) if need_h and max(need_h) > n_h else None,
                 min_synthetic=max(need_s) if need_s and max(need_s) > n_s else None)


def _zu_power(t: _Tally, th: Thresholds, *, n_s: int, n_h: int, names: str, what: str) -> None:
    """Can Z_U reach its failing level with these numbers of images? Else how many would it take."""
    ran, missing, need_h, need_s = t.ran, t.missing, t.need_h, t.need_s
    zu_needed = -th.z_fail
    m = n_s
    if max_rank_z(m, n_h) >= zu_needed:
        ran.append(f"data-copying test Z_U ({names}; fails at <= {th.z_fail:g})")
    else:
        missing.append(f"Z_U cannot reach {th.z_fail:g} with {m} synthetic and {n_h} {what} images (at most "
                       f"-{max_rank_z(m, n_h):.2f} even if every synthetic image were closer than every {what} "
                       "image)")
        h = smallest(lambda n: max_rank_z(max(m, 1), n) >= zu_needed)
        s = smallest(lambda k: max_rank_z(k, max(n_h, 1)) >= zu_needed)
        if h is not None:
            need_h.append(h)
        elif s is not None:
            need_s.append(s)


def _membership_power(t: _Tally, results: Sequence[EmbeddingAudit], th: Thresholds, *, holdout: bool) -> None:
    """Can the membership-inference test reach the warning level with these numbers of images?"""
    ran, missing, need_h = t.ran, t.missing, t.need_h
    members = [r for r in results if r.membership is not None]
    if members:
        mia = members[0].membership
        assert mia is not None
        if float(sps.norm.sf(max_rank_z(mia.n_members, mia.n_nonmembers))) < th.warn_p:
            ran.append("membership-inference test (AUC of training vs holdout images by distance to the nearest "
                       "synthetic image)")
        else:
            missing.append(f"the membership-inference test cannot reach p < {th.warn_p:g} with {mia.n_members} "
                           f"training and {mia.n_nonmembers} holdout images")
            need_h.append(smallest(lambda n: float(sps.norm.sf(max_rank_z(n, n))) < th.warn_p) or 0)
    elif holdout:
        # Without a holdout it cannot run: that case is INCONCLUSIVE already, unless the user accepted it.
        missing.append("the membership-inference test did not run (it needs a holdout)")
