"""Train/holdout split by patient, stratified by label, with duplicates kept together."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np


def split_units(patients: list[str], dup_groups: np.ndarray) -> np.ndarray:
    """Unit id per image: images that share a patient or a duplicate group share a unit.

    A unit must go to one side whole; otherwise a patient (or a copy of an image) would be
    both trained on and used to judge the model.
    """
    n = len(patients)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    first_of: dict[tuple[str, object], int] = {}
    for i in range(n):
        for key in (("patient", patients[i]), ("dup", int(dup_groups[i]))):
            if key in first_of:
                union(first_of[key], i)
            else:
                first_of[key] = i
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def split_holdout(units: np.ndarray, labels: np.ndarray, *, holdout_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of holdout images.

    Units are stratified by their most common label; within each stratum a seeded shuffle
    fills the holdout up to round(fraction x images in the stratum). Deterministic for a
    given seed and input order.
    """
    n = len(units)
    holdout = np.zeros(n, dtype=bool)
    if n == 0 or holdout_fraction <= 0:
        return holdout
    members: dict[int, list[int]] = defaultdict(list)
    for i, u in enumerate(units):
        members[int(u)].append(i)
    strata: dict[int, list[int]] = defaultdict(list)
    for u, idx in sorted(members.items()):
        common = Counter(int(labels[i]) for i in idx).most_common()
        # Ties go to the smallest label so that the stratum does not depend on dict order.
        top = max(c for _, c in common)
        strata[min(lbl for lbl, c in common if c == top)].append(u)
    rng = np.random.default_rng(seed)
    for label in sorted(strata):
        unit_ids = strata[label]
        order = rng.permutation(len(unit_ids))
        size = sum(len(members[u]) for u in unit_ids)
        want = round(holdout_fraction * size)
        taken = 0
        for k in order:
            if taken >= want:
                break
            u = unit_ids[k]
            # Skip a unit that would overshoot by more than it helps, so one big patient
            # cannot swallow the whole holdout of a small stratum.
            if taken + len(members[u]) - want > want - taken and taken > 0:
                continue
            holdout[members[u]] = True
            taken += len(members[u])
    if holdout.all():  # a single huge unit: keep something to train on
        holdout[:] = False
    return holdout
