"""Per-class memorization tests with a multiplicity correction (issue 11, item 5)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fundus_cli.privacy.decision import decide, explain
from fundus_cli.privacy.per_class import class_tests, holm

from test_decision import Audit, fundus_like  # same folder: pytest puts it on sys.path


def test_holm_by_hand() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005, 3 x 0.01, 2 x 0.03, max(0.06, 1 x 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and len(holm([])) == 0


@pytest.fixture(scope="module")
def labelled():
    imgs, _ = fundus_like(180, seed=3)
    train, holdout, synthetic = imgs[:100], imgs[100:140], imgs[140:180]
    audit = Audit(train)
    decision, results = audit.run(synthetic, holdout)
    s_lab = np.r_[np.zeros(30, int), np.ones(10, int)]  # "rare": 10 synthetic images
    h_lab = np.r_[np.zeros(20, int), np.ones(20, int)]
    return decision, results, s_lab, h_lab


def _tests(results, s_lab, h_lab):
    return class_tests(results, synthetic_labels=s_lab, calibration_labels=[h_lab] * len(results),
                       class_names=["common", "rare"], alpha=0.05, z_fail=-3.0)


def test_honest_classes_do_not_fail_and_the_correction_is_applied(labelled) -> None:
    decision, results, s_lab, h_lab = labelled
    assert decision.status == "PASS"
    tests = _tests(results, s_lab, h_lab)
    assert {(t.name, t.embedding) for t in tests} == {(c, e) for c in ("common", "rare") for e in ("pixel", "tiled")}
    d = decide(results, classes=tests)
    assert d.status in ("PASS", "WARN") and not d.reasons and not d.classes_failed
    assert len(d.class_adjusted) == 8  # 2 classes x 2 embeddings x (memorization, Z_U)
    raw = {(t.name, t.embedding, "z_u"): t.z_u.p for t in tests}
    for key, p in raw.items():
        assert d.class_adjusted[key] >= min(1.0, p) - 1e-12
    assert any(t.startswith("per-class memorization-rate and Z_U tests (2 classes: common, rare; Holm-adjusted over 8")
               for t in d.tests_run)


def test_a_rare_class_pulled_to_the_training_set_fails_where_the_whole_set_does_not(labelled) -> None:
    decision, results, s_lab, h_lab = labelled
    rare = s_lab == 1
    pulled = []
    for r in results:
        dist = r.synthetic.distance.copy()
        # The rare class's 10 synthetic images sit closer to the training set than any of its
        # holdout images: memorised, though no single image is a copy.
        dist[rare, 0] = 0.9 * r.calibration_dcr[h_lab == 1].min()
        pulled.append(dataclasses.replace(r, synthetic=dataclasses.replace(r.synthetic, distance=dist)))
    d = decide(results, classes=_tests(pulled, s_lab, h_lab))
    assert d.status == "FAIL" and d.classes_failed == ("rare",)
    assert d.reasons and all(r.startswith("class 'rare'") and "Holm-adjusted over 8 per-class tests" in r
                             for r in d.reasons)
    text = explain(d, results)
    assert "Within class rare, the synthetic images sit closer to the training photographs" in text
    assert "no individual photograph was copied" in text and "as a whole" not in text


def test_a_class_too_small_to_test_is_listed_not_failed(labelled) -> None:
    decision, results, s_lab, _ = labelled
    h_lab = np.r_[np.zeros(28, int), np.ones(12, int)]  # 12 holdout images of the rare class: no tau_alpha
    tests = _tests(results, s_lab, h_lab)
    rare = [t for t in tests if t.name == "rare"]
    assert all(t.memorization is None and "12 holdout images of this class, 19 needed" in t.skipped for t in rare)
    assert all(t.z_u is not None for t in rare)  # 10 vs 12 can still reach z = -3
    d = decide(results, classes=tests)
    assert d.status == decision.status and any("class 'rare'" in c for c in d.classes_not_tested)
    assert "Too small to be tested on their own" in explain(d, results)
