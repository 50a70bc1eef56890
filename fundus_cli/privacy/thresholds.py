"""The audit's decision thresholds (AUDIT.md's defaults), shared by the decision rules and the
power arithmetic, and recorded in every report."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fundus_cli.errors import FundusError

MEMORIZATION_TESTS = ("exact", "binomial")


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds, AUDIT.md's defaults (recorded in the report)."""

    ratio: float = 1.0  # ratio test: r below this is "much closer to one training image than to the rest"
    possible_copy_ratio: float = 0.5  # an image flagged in one embedding only warns when r is below this
    confirm_in: int = 2  # embeddings that must flag an image for a confirmed copy (capped at those given)
    phash_bits: int = 4  # perceptual hashes at most this many bits apart are near-identical
    z_fail: float = -3.0  # Z_U or C_T at or below: data copying
    memorization_p_fail: float = 0.001  # memorization test p below this ...
    memorization_excess_fail: float = 0.01  # ... and m - alpha at least this: FAIL
    membership_ci_fail: float = 0.55  # membership AUC lower bound above this: FAIL
    warn_p: float = 0.05  # any test below this: WARN
    memorization_test: str = "exact"  # "exact" (rank-based, valid for any |H|) or "binomial" (AUDIT.md's wording)

    def __post_init__(self) -> None:
        if self.memorization_test not in MEMORIZATION_TESTS:
            raise FundusError(f"unknown memorization test {self.memorization_test!r}; "
                              f"valid: {', '.join(MEMORIZATION_TESTS)}")
        if self.confirm_in < 1:
            raise FundusError(f"confirm_in must be at least 1, got {self.confirm_in}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
