"""Per-class memorization statistics, for labelled sets (issue 11, item 5).

A conditional generator copies where it has few images to learn from: a rare class of 12
training photographs can be reproduced while the whole set, dominated by common classes,
looks fine. So when the training, holdout and synthetic sets share their class names, the
set-level tests are repeated per class: the synthetic images of class c against the holdout
images of class c, both by their distance to the nearest image of the WHOLE training set
(a copy is a copy whatever its label). Under the null, a class's synthetic and holdout
distances are exchangeable, so the same exact memorization test and Z_U apply.

Many classes times several embeddings make many tests: ``holm`` adjusts their p-values
(Holm-Bonferroni, valid under any dependence) before the decision applies its thresholds.
A class with too few holdout images for tau_alpha (or too few images for Z_U to reach
z_fail) is not tested on its own and is listed as such; the set-level tests still cover it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fundus_cli.privacy import copying_tests as ct
from fundus_cli.privacy import stats as st
from fundus_cli.privacy.power import max_rank_z, min_holdout_for_alpha


@dataclass(frozen=True)
class ClassTest:
    """One class in one embedding."""

    name: str  # class name
    embedding: str
    n_synthetic: int
    n_calibration: int
    memorization: ct.MemorizationTest | None  # None: too few calibration images of this class for tau_alpha
    z_u: ct.ZTest | None  # None: too few images for Z_U to reach the failing z
    skipped: str | None  # why a test did not run (None: both ran)


def class_tests(results: Sequence[st.EmbeddingAudit], *, synthetic_labels: np.ndarray,
                calibration_labels: Sequence[np.ndarray | None], class_names: Sequence[str],
                alpha: float, z_fail: float) -> list[ClassTest]:
    """Per class and embedding: the memorization test and Z_U on that class's images.

    calibration_labels: per embedding, the label of each calibration image (holdout, or the
    leave-one-out training images), aligned with ``results[i].calibration_dcr``; None skips
    that embedding."""
    need_h = min_holdout_for_alpha(alpha)
    s_lab = np.asarray(synthetic_labels)
    out = []
    for r, c_lab in zip(results, calibration_labels):
        if c_lab is None or len(c_lab) != len(r.calibration_dcr) or len(s_lab) != len(r.synthetic.dcr):
            continue
        c_lab = np.asarray(c_lab)
        for c, name in enumerate(class_names):
            s = r.synthetic.dcr[s_lab == c]
            h = r.calibration_dcr[c_lab == c]
            if len(s) == 0:
                continue  # the generator made none of this class: nothing of it to copy
            why = []
            mem = ct.memorization_test(s, h, alpha=alpha) if len(h) >= need_h else None
            if mem is None:
                why.append(f"{len(h)} holdout images of this class, {need_h} needed for tau_alpha")
            z = ct.data_copying_z(s, h) if max_rank_z(len(s), len(h)) >= -z_fail else None
            if z is None:
                why.append(f"Z_U cannot reach {z_fail:g} with {len(s)} synthetic and {len(h)} holdout images")
            out.append(ClassTest(name=str(name), embedding=r.name, n_synthetic=int(len(s)),
                                 n_calibration=int(len(h)), memorization=mem, z_u=z,
                                 skipped="; ".join(why) or None))
    return out


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (same order as given), capped at 1."""
    p = np.asarray(p, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


def summary(tests: Sequence[ClassTest], adjusted: dict[tuple[str, str, str], float]) -> dict[str, Any]:
    """report.json's per_class block: class -> embedding -> numbers (adjusted p-values beside raw)."""
    out: dict[str, Any] = {}
    for t in tests:
        mem = t.memorization
        out.setdefault(t.name, {})[t.embedding] = {
            "n_synthetic": t.n_synthetic, "n_calibration": t.n_calibration,
            "memorization": None if mem is None else {
                "rate": mem.rate, "expected": mem.expected, "tau": mem.tau, "p_exact": mem.p_exact,
                "p_binomial": mem.p_binomial, "p_adjusted": adjusted.get((t.name, t.embedding, "memorization"))},
            "z_u": None if t.z_u is None else {"z": t.z_u.z, "p": t.z_u.p,
                                               "p_adjusted": adjusted.get((t.name, t.embedding, "z_u"))},
            "skipped": t.skipped,
        }
    return out
