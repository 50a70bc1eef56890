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
PASS (exit 0) otherwise, listing the tests that ran (``Decision.tests_run``).
INCONCLUSIVE (exit 3): calibrated without a holdout (leave-one-out) and not accepted by the
  user, or a test that could not have failed: its statistic cannot reach its level with the
  images given (the smallest conformal p-value 1 / (|H| + 1) above alpha; no tau_alpha; Z_U
  unable to reach z_fail; the membership test unable to reach warn_p), or a decision rule that
  was skipped in every embedding (C_T with too few images). A PASS from tests without the
  power to fail would say "safe" without evidence, so the reasons and the smallest holdout
  that would let every test run are reported (``Decision.inconclusive``, ``min_holdout``).
  This refines AUDIT.md, whose only INCONCLUSIVE cause is a missing holdout. A FAIL still
  fails, because evidence of copying does not need a holdout (or power) to count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as sps

from fundus_cli.errors import FundusError
from fundus_cli.privacy.per_class import ClassTest, holm
from fundus_cli.privacy.power import could_fail
from fundus_cli.privacy.thresholds import Thresholds
from fundus_cli.privacy.stats import EmbeddingAudit

EXIT_CODES = {"PASS": 0, "WARN": 0, "FAIL": 1, "INCONCLUSIVE": 3}
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
                # Two numeric columns: a text cell "-6 8" would be neutralised as a spreadsheet formula.
                "shift_dy": None if self.shift is None else self.shift[0],
                "shift_dx": None if self.shift is None else self.shift[1],
                "registered_match": self.registered_match}


@dataclass(frozen=True)
class Decision:
    status: str  # PASS | WARN | FAIL | INCONCLUSIVE
    exit_code: int
    reasons: tuple[str, ...]  # what made it FAIL (empty otherwise)
    warnings: tuple[str, ...]  # what made it WARN (also listed under FAIL and INCONCLUSIVE)
    flags: tuple[Flag, ...]  # every flagged synthetic image, by index
    thresholds: Thresholds
    tests_run: tuple[str, ...] = ()  # every test that ran with the power to fail, in plain words
    inconclusive: tuple[str, ...] = ()  # why the audit cannot decide (tests that could not fail, no holdout)
    min_holdout: int | None = None  # usable holdout images that would let every test reach its level
    min_synthetic: int | None = None  # synthetic images that would (None: enough already)
    # Per-class tests (labelled sets): Holm-adjusted p-values by (class, embedding, test), and the
    # classes too small to be tested on their own.
    class_adjusted: dict[tuple[str, str, str], float] = field(default_factory=dict)
    classes_not_tested: tuple[str, ...] = ()
    classes_failed: tuple[str, ...] = ()  # classes whose own tests FAIL

    @property
    def confirmed(self) -> tuple[int, ...]:
        return tuple(f.synthetic for f in self.flags if f.confirmed)


def decide(results: Sequence[EmbeddingAudit], *, phash_bits: np.ndarray | None = None,
           phash_index: np.ndarray | None = None, phash_flipped: np.ndarray | None = None,
           registered_match: np.ndarray | None = None, accept_leave_one_out: bool = False,
           thresholds: Thresholds = Thresholds(), min_cell_synthetic: int = 20,
           classes: Sequence[ClassTest] | None = None) -> Decision:
    """Apply the decision rules to the embeddings' statistics.

    results: one ``EmbeddingAudit`` per embedding, all on the same synthetic images.
    phash_bits / phash_index / phash_flipped: per synthetic image, from
        ``preprocess.phash_nearest`` against the training hashes (optional).
    registered_match: bool per synthetic image: the fine detail of the image, moved by the
        registered shift, matches its registered nearest training image (optional; counts
        only where the embedding named "registered" flags the image).
    accept_leave_one_out: the user accepts a calibration without holdout (else INCONCLUSIVE).
    min_cell_synthetic: the statistics' AuditSettings.min_cell_synthetic (what C_T needs per cell).
    classes: per-class tests (``per_class.class_tests``) of labelled sets; their p-values are
        Holm-adjusted together, then judged by the set-level thresholds.
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
        _set_rules(r, th, fails, warns)

    adjusted, not_tested, ran_classes, failed_classes = _class_rules(classes or (), th, fails, warns)

    loo = any(r.calibration != "holdout" for r in results)
    power = could_fail(results, th, n_s, accept_leave_one_out=accept_leave_one_out,
                   min_cell_synthetic=min_cell_synthetic)
    inconclusive = list(power.missing)
    if loo and not accept_leave_one_out:
        inconclusive.insert(0, "no holdout: calibrated on leave-one-out training distances, which are not "
                               "exchangeable with synthetic ones; give a holdout or accept this calibration "
                               "explicitly")
    status = "FAIL" if fails else "INCONCLUSIVE" if inconclusive else "WARN" if warns else "PASS"
    return Decision(status=status, exit_code=EXIT_CODES[status], reasons=tuple(fails), warnings=tuple(warns),
                    flags=tuple(flags), thresholds=th, tests_run=power.ran + ran_classes,
                    inconclusive=tuple(inconclusive), min_holdout=power.min_holdout,
                    min_synthetic=power.min_synthetic, class_adjusted=adjusted, classes_not_tested=not_tested,
                    classes_failed=failed_classes)


def _set_rules(r: EmbeddingAudit, th: Thresholds, fails: list[str], warns: list[str]) -> None:
    """One embedding's set-level tests (Z_U, C_T, memorization, membership) against the thresholds."""
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


def _class_rules(classes: Sequence[ClassTest], th: Thresholds, fails: list[str], warns: list[str]
                 ) -> tuple[dict[tuple[str, str, str], float], tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The set-level memorization and Z_U rules applied per class, on Holm-adjusted p-values (one
    family: every class, embedding and test), so that testing many classes does not by itself
    produce a FAIL. A class too small for a test is listed, not failed: the set-level tests still
    cover its images, and the per-image copy test does not depend on classes."""
    keys: list[tuple[str, str, str]] = []
    raw: list[float] = []
    for t in classes:
        if t.memorization is not None:
            keys.append((t.name, t.embedding, "memorization"))
            raw.append(t.memorization.p_exact if th.memorization_test == "exact" else t.memorization.p_binomial)
        if t.z_u is not None:
            keys.append((t.name, t.embedding, "z_u"))
            raw.append(t.z_u.p)
    adj = dict(zip(keys, (float(v) for v in holm(raw))))
    z_fail_p = float(sps.norm.cdf(th.z_fail))  # the set-level Z_U <= z_fail, as a one-sided p-value
    family = f"Holm-adjusted over {len(keys)} per-class tests"
    failed: list[str] = []
    for t in classes:
        where = f"class {t.name!r} ({t.embedding}, {t.n_synthetic} synthetic vs {t.n_calibration} holdout)"
        if t.memorization is not None:
            p = adj[(t.name, t.embedding, "memorization")]
            mem = t.memorization
            text = f"{where}: memorization rate {mem.rate:.3f} vs alpha {mem.alpha:g} ({family}: p = {p:.3g})"
            if p < th.memorization_p_fail and mem.rate - mem.alpha >= th.memorization_excess_fail:
                fails.append(text)
                failed.append(t.name)
            elif p < th.warn_p:
                warns.append(text)
        if t.z_u is not None:
            p = adj[(t.name, t.embedding, "z_u")]
            text = f"{where}: Z_U = {t.z_u.z:.2f} ({family}: p = {p:.3g})"
            if p <= z_fail_p:
                fails.append(text)
                failed.append(t.name)
            elif p < th.warn_p:
                warns.append(text)
    not_tested = tuple(sorted({f"class {t.name!r}: {t.skipped}" for t in classes if t.skipped}))
    tested = sorted({t.name for t in classes if t.memorization is not None or t.z_u is not None})
    ran = (f"per-class memorization-rate and Z_U tests ({len(tested)} classes: {', '.join(tested)}; "
           f"{family})",) if tested else ()
    return adj, not_tested, ran, tuple(dict.fromkeys(failed))


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


# --------------------------------------------------------------------------- the verdict in plain words

BLUR_SHARE = 0.75  # DCR share at or below: the set is nearly as close to new photographs as to training ones


def explain(decision: Decision, results: Sequence[EmbeddingAudit], *,
            train_names: Sequence[str] | None = None) -> str:
    """One paragraph a non-statistician can act on. Copies of specific photographs and a set that
    as a whole sits close to the training photographs are different findings, worded differently:
    blurred averages sit near every photograph, training or not, and copy nobody."""
    copies = [f for f in decision.flags if f.confirmed]

    def name(i: int) -> str:
        return train_names[i] if train_names is not None and 0 <= i < len(train_names) else f"#{i}"

    parts: list[str] = []
    if copies:
        listed = sorted({name(f.train_index) for f in copies})
        more = f" and {len(listed) - 10} more" if len(listed) > 10 else ""
        parts.append(f"{len(copies)} synthetic image{'s are copies' if len(copies) != 1 else ' is a copy'} of "
                     f"training photograph{'s' if len(listed) != 1 else ''} {', '.join(listed[:10])}{more} "
                     "(possibly mirrored, moved or re-encoded): do not share the synthetic images as they are.")
    in_class = list(decision.classes_failed)
    set_level = [r for r in decision.reasons if "confirmed cop" not in r and not r.startswith("class ")]
    if in_class:
        parts.append(f"Within class{'es' if len(in_class) > 1 else ''} {', '.join(in_class)}, the synthetic images sit "
                     "closer to the training photographs than new photographs of the same class do (after allowing "
                     "for the number of classes tested)"
                     + ("; no individual photograph was copied." if not copies else ", beyond the copies above.")
                     + " A class with few training photographs is where a conditional model memorises first.")
    if set_level:
        shares = [r.dcr_share for r in results if r.dcr_share is not None and np.isfinite(r.dcr_share)]
        share = float(np.median(shares)) if shares else None
        whole = "The synthetic set as a whole sits closer to the training photographs than new photographs do"
        if share is not None and share <= BLUR_SHARE:
            whole += (f", yet compared one to one it is no nearer to training photographs than to new ones "
                      f"(nearer to a training photograph {share:.0%} of the time; 50 % = no preference): typical "
                      "of blurred averages, which sit near every photograph, training or not")
        elif share is not None:
            whole += (f", and nearer to a training photograph than to a new one {share:.0%} of the time "
                      "(50 % = no preference): the model reproduces its training set closely")
        whole += ("; no individual photograph was copied." if not copies
                  else ", beyond the copies above.")
        parts.append(whole + (" Do not share these images as a privacy-safe substitute." if not copies else ""))
    if decision.status == "INCONCLUSIVE":
        need = []
        if decision.min_holdout is not None:
            need.append(f"at least {decision.min_holdout} usable holdout images (photographs the model never saw, of "
                        "patients not in training)")
        if decision.min_synthetic is not None:
            need.append(f"at least {decision.min_synthetic} synthetic images")
        parts.append("The audit cannot decide: " + "; ".join(decision.inconclusive)
                     + (f". Give it {' and '.join(need)}, and run it again." if need else "."))
    elif decision.status == "WARN":
        parts.append("No copy was confirmed, but a test is borderline (" + "; ".join(decision.warnings[:3])
                     + "): look at the closest pairs before sharing.")
    elif decision.status == "PASS":
        parts.append("No synthetic image was found to copy a training photograph, and the set as a whole is no "
                     f"closer to the training photographs than new photographs are ({len(decision.tests_run)} tests "
                     f"ran, each able to fail at its threshold: {'; '.join(decision.tests_run)}).")
    if decision.classes_not_tested:
        parts.append("Too small to be tested on their own (the whole-set tests still include them): "
                     + "; ".join(decision.classes_not_tested) + ".")
    return " ".join(parts)
