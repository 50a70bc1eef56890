"""How far a rank test can go at a given sample size: the arithmetic behind "could this test fail?".

Shared by the decision rules (`decision._power`) and the per-class tests (`per_class`), which
is why it sits in a module of its own rather than in either.
"""

from __future__ import annotations

import numpy as np


def max_rank_z(m: int, n: int) -> float:
    """The largest |z| a Mann-Whitney comparison of m against n values can reach (complete
    separation): sqrt(3 m n / (m + n + 1))."""
    return float(np.sqrt(3.0 * m * n / (m + n + 1))) if m and n else 0.0


def min_holdout_for_alpha(alpha: float) -> int:
    """Smallest |H| with floor(alpha (|H| + 1)) >= 1: the smallest conformal p-value 1 / (|H| + 1)
    reaches alpha, and tau_alpha exists (the same rounding as stats.memorization_test)."""
    n = 1
    while int(np.floor(alpha * (n + 1) + 1e-9)) < 1:
        n += 1
    return n
