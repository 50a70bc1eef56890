from __future__ import annotations

import numpy as np

from fundus_cli.data.split import split_holdout, split_units


def test_units_join_patients_and_duplicates() -> None:
    patients = ["a", "a", "b", "c", "d"]
    groups = np.array([0, 1, 2, 2, 4])  # image 2 and 3 are duplicates across patients b and c
    units = split_units(patients, groups)
    assert units[0] == units[1] and units[2] == units[3]
    assert len({units[0], units[2], units[4]}) == 3


def test_split_is_by_unit_stratified_and_seeded() -> None:
    rng = np.random.default_rng(0)
    n_pat = 200
    patients = [f"p{i // 2}" for i in range(2 * n_pat)]
    labels = np.repeat(rng.choice([0, 1, 2], size=n_pat, p=[0.6, 0.3, 0.1]), 2)
    units = split_units(patients, np.arange(2 * n_pat))
    hold = split_holdout(units, labels, holdout_fraction=0.2, seed=1)
    for u in np.unique(units):  # no patient on both sides
        assert len(set(hold[units == u])) == 1
    for lab in (0, 1, 2):  # every class close to 20 % held out
        share = hold[labels == lab].mean()
        assert abs(share - 0.2) < 0.03, (lab, share)
    assert (split_holdout(units, labels, holdout_fraction=0.2, seed=1) == hold).all()
    assert (split_holdout(units, labels, holdout_fraction=0.2, seed=2) != hold).any()


def test_one_big_patient_does_not_swallow_the_holdout() -> None:
    patients = ["big"] * 50 + [f"s{i}" for i in range(50)]
    labels = np.zeros(100, int)
    units = split_units(patients, np.arange(100))
    for seed in range(10):
        hold = split_holdout(units, labels, holdout_fraction=0.2, seed=seed)
        assert 10 <= hold.sum() <= 30
        assert not hold[:50].any() or hold[:50].all()
