"""The audit's verdict from its statistics (AUDIT.md, "Decision and exit codes").

FAIL (exit 1) when any of these holds, in any embedding:
  - a confirmed copy: a synthetic image whose conformal p-value is the smallest possible
    and whose ratio r < 1 in at least ``confirm_in`` embeddings, or whose perceptual hash
    is within ``phash_bits`` bits of a training image's (the ingest's duplicate rule), or
    that the registered distance flags and whose fine detail matches its training image's
    at the registered shift (``registered_match``: the same photograph, moved; the caller
    checks the detail, as it does for hash matches);
  - Z_U <= z_fail, or C_T <= z_fail (Meehan et al.; both are z-scores);
  - the memorization test p < memorization_p_fail with m - alpha >= memorization_excess_fail;
  - the membership-inference AUC's lower confidence bound > membership_ci_fail.
WARN (exit 0, said loudly): any of those tests at p < warn_p, or a possible copy: a synthetic
  image flagged in fewer embeddings than a confirmation needs, with r < possible_copy_ratio
  there. (A p-value of 1 / (|H| + 1) alone is expected for about |S| / (|H| + 1) images by
  chance, and the tiled distance, a minimum over tiles, puts r just under 1 for a few per
  cent of unrelated images; a pasted region gives r near 0.) Every flagged image, warning
  or not, is listed in ``Decision.flags`` for flagged.csv.
PASS (exit 0) otherwise.
INCONCLUSIVE (exit 3): calibrated without a holdout (leave-one-out) and not accepted by the
  user; a FAIL still fails, because evidence of copying does not need a holdout to count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fundus_cli.errors import FundusError
from fundus_cli.privacy.stats import EmbeddingAudit

EXIT_CODES = {"PASS": 0, "WARN": 0, "FAIL": 1, "INCONCLUSIVE": 3}
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


@dataclass(frozen=True)
class Flag:
    """One synthetic image that looks like a copy."""

    synthetic: int  # row in the synthetic set
    confirmed: bool
    embeddings: tuple[str, ...]  # where it is flagged (smallest p-value and r < ratio)
    phash_match: bool  # near-identical perceptual hash
    train_index: int  # nearest training image in the deciding embedding (or by hash)
    embedding: str  # the deciding embedding: the flagging one with the smallest ratio, else "phash"
    distance: float | None
    flipped: bool
    ratio: float | None
    p_value: float | None
    phash_bits: int | None
    shift: tuple[int, int] | None = None  # (dy, dx) px at the working size, where the registered distance flags it
    registered_match: bool = False  # fine detail confirms the registered match

    def row(self) -> dict[str, Any]:
        """One flagged.csv row (the caller adds the training image's source id and patient)."""
        return {"synthetic_index": self.synthetic, "train_index": self.train_index, "embedding": self.embedding,
                "distance": self.distance, "flipped": self.flipped, "ratio": self.ratio, "p_value": self.p_value,
                "confirmed": self.confirmed, "flagged_in": "+".join(self.embeddings), "phash_bits": self.phash_bits,
                "shift": None if self.shift is None else f"{self.shift[0]} {self.shift[1]}",
                "registered_match": self.registered_match}


@dataclass(frozen=True)
class Decision:
    status: str  # PASS | WARN | FAIL | INCONCLUSIVE
    exit_code: int
    reasons: tuple[str, ...]  # what made it FAIL (empty otherwise)
    warnings: tuple[str, ...]  # what made it WARN (also listed under FAIL and INCONCLUSIVE)
    flags: tuple[Flag, ...]  # every flagged synthetic image, by index
    thresholds: Thresholds

    @property
    def confirmed(self) -> tuple[int, ...]:
        return tuple(f.synthetic for f in self.flags if f.confirmed)


def decide(results: Sequence[EmbeddingAudit], *, phash_bits: np.ndarray | None = None,
           phash_index: np.ndarray | None = None, phash_flipped: np.ndarray | None = None,
           registered_match: np.ndarray | None = None, accept_leave_one_out: bool = False,
           thresholds: Thresholds = Thresholds()) -> Decision:
    """Apply the decision rules to the embeddings' statistics.

    results: one ``EmbeddingAudit`` per embedding, all on the same synthetic images.
    phash_bits / phash_index / phash_flipped: per synthetic image, from
        ``preprocess.phash_nearest`` against the training hashes (optional).
    registered_match: bool per synthetic image: the fine detail of the image, moved by the
        registered shift, matches its registered nearest training image (optional; counts
        only where the embedding named "registered" flags the image).
    accept_leave_one_out: the user accepts a calibration without holdout (else INCONCLUSIVE).
    """
    th = thresholds
    if not results:
        raise FundusError("the decision needs at least one embedding's statistics")
    n_s = len(results[0].p_values)
    if any(len(r.p_values) != n_s for r in results):
        raise FundusError("all embeddings must describe the same synthetic images")
    fails: list[str] = []
    warns: list[str] = []

    flags = _flags(results, n_s, phash_bits, phash_index, phash_flipped, registered_match, th)
    confirmed = [f for f in flags if f.confirmed]
    if confirmed:
        fails.append(f"{len(confirmed)} confirmed cop{'y' if len(confirmed) == 1 else 'ies'}: "
                     + _list(f"synthetic {f.synthetic} ~ training {f.train_index} ({_why(f)})" for f in confirmed))
    possible = [f for f in flags if not f.confirmed and f.ratio is not None and f.ratio < th.possible_copy_ratio]
    if possible:
        warns.append(f"{len(possible)} possible cop{'y' if len(possible) == 1 else 'ies'} flagged in fewer than "
                     f"{_need(results, th)} embeddings: "
                     + _list(f"synthetic {f.synthetic} ~ training {f.train_index} ({f.embedding})" for f in possible))

    for r in results:
        z = r.data_copying
        if z.z <= th.z_fail:
            fails.append(f"{r.name}: Z_U = {z.z:.2f} <= {th.z_fail:g} (synthetic images closer to the training set "
                         "than holdout images)")
        elif z.p < th.warn_p:
            warns.append(f"{r.name}: Z_U = {z.z:.2f} (p = {z.p:.3g})")
        if r.cells is not None and r.cells.c_t is not None:
            if r.cells.c_t <= th.z_fail:
                fails.append(f"{r.name}: C_T = {r.cells.c_t:.2f} <= {th.z_fail:g} over {r.cells.cells_used} cells")
            elif r.cells.p < th.warn_p:
                warns.append(f"{r.name}: C_T = {r.cells.c_t:.2f} (p = {r.cells.p:.3g})")
        mem = r.memorization
        if mem.tau is not None:
            p = mem.p_exact if th.memorization_test == "exact" else mem.p_binomial
            excess = mem.rate - mem.alpha
            text = (f"{r.name}: memorization rate {mem.rate:.3f} vs alpha {mem.alpha:g} "
                    f"({th.memorization_test} p = {p:.3g})")
            if p < th.memorization_p_fail and excess >= th.memorization_excess_fail:
                fails.append(text)
            elif p < th.warn_p:
                warns.append(text)
        mia = r.membership
        if mia is not None:
            text = (f"{r.name}: membership AUC {mia.auc:.3f} (95% CI {mia.ci_low:.3f}-{mia.ci_high:.3f}, "
                    f"p = {mia.p:.3g})")
            if mia.ci_low > th.membership_ci_fail:
                fails.append(text)
            elif mia.p < th.warn_p:
                warns.append(text)

    loo = any(r.calibration != "holdout" for r in results)
    if fails:
        status = "FAIL"
    elif loo and not accept_leave_one_out:
        status = "INCONCLUSIVE"
        warns.insert(0, "no holdout: calibrated on leave-one-out training distances, which are not exchangeable "
                        "with synthetic ones; give a holdout or accept this calibration explicitly")
    elif warns:
        status = "WARN"
    else:
        status = "PASS"
    return Decision(status=status, exit_code=EXIT_CODES[status], reasons=tuple(fails), warnings=tuple(warns),
                    flags=tuple(flags), thresholds=th)


def _need(results: Sequence[EmbeddingAudit], th: Thresholds) -> int:
    return min(th.confirm_in, len(results))


def _flags(results: Sequence[EmbeddingAudit], n_s: int, phash_bits: np.ndarray | None,
           phash_index: np.ndarray | None, phash_flipped: np.ndarray | None, registered_match: np.ndarray | None,
           th: Thresholds) -> list[Flag]:
    flagged = np.stack([r.flagged(ratio=th.ratio) for r in results])  # (E, S)
    hash_hit = np.zeros(n_s, bool)
    if phash_bits is not None:
        phash_bits = np.asarray(phash_bits)
        if len(phash_bits) != n_s or phash_index is None or len(phash_index) != n_s:
            raise FundusError("give a perceptual-hash distance and training index per synthetic image")
        hash_hit = phash_bits <= th.phash_bits
    names = [r.name for r in results]
    reg = names.index("registered") if "registered" in names else None
    reg_hit = np.zeros(n_s, bool)
    if registered_match is not None and reg is not None:
        if len(registered_match) != n_s:
            raise FundusError("give one registered-match value per synthetic image")
        reg_hit = flagged[reg] & np.asarray(registered_match, dtype=bool)
    need = _need(results, th)
    out = []
    for s in np.nonzero(flagged.any(0) | hash_hit)[0]:
        where = [i for i in range(len(results)) if flagged[i, s]]
        confirmed = len(where) >= need or bool(hash_hit[s]) or bool(reg_hit[s])
        bits = None if phash_bits is None else int(phash_bits[s])
        shift = None
        if reg is not None and flagged[reg, s] and results[reg].synthetic.shift is not None:
            shift = tuple(int(v) for v in results[reg].synthetic.shift[s, 0])
        if where:
            best = min(where, key=lambda i: (results[i].ratio[s], i))
            r = results[best]
            flag = Flag(synthetic=int(s), confirmed=confirmed, embeddings=tuple(results[i].name for i in where),
                        phash_match=bool(hash_hit[s]), train_index=int(r.synthetic.index[s, 0]), embedding=r.name,
                        distance=float(r.synthetic.dcr[s]), flipped=bool(r.synthetic.flipped[s, 0]),
                        ratio=float(r.ratio[s]), p_value=float(r.p_values[s]), phash_bits=bits, shift=shift,
                        registered_match=bool(reg_hit[s]))
        else:
            assert phash_index is not None
            flag = Flag(synthetic=int(s), confirmed=True, embeddings=(), phash_match=True,
                        train_index=int(phash_index[s]), embedding="phash", distance=None,
                        flipped=bool(phash_flipped[s]) if phash_flipped is not None else False,
                        ratio=None, p_value=None, phash_bits=bits)
        out.append(flag)
    return out


def _why(f: Flag) -> str:
    parts = list(f.embeddings)
    if f.phash_match:
        parts.append(f"phash {f.phash_bits} bits")
    if f.registered_match and f.shift is not None:
        parts.append(f"same fine detail moved by {f.shift[0]}, {f.shift[1]} px")
    return ", ".join(parts)


def _list(items: Any, limit: int = 10) -> str:
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more
