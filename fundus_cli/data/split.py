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
    fills the holdout towards fraction x images in the stratum, then a last pass over all
    units tops it up towards fraction x all images. Deterministic for a seed and input order.
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
    sizes = {u: len(idx) for u, idx in members.items()}

    def fill(unit_ids: list[int], want: float, taken: int) -> int:
        # A unit is taken only if it brings the holdout closer to its target, so one big
        # patient cannot swallow the holdout of a small stratum.
        for k in rng.permutation(len(unit_ids)):
            u = unit_ids[k]
            if not holdout[members[u][0]] and abs(taken + sizes[u] - want) < abs(taken - want):
                holdout[members[u]] = True
                taken += sizes[u]
        return taken

    for label in sorted(strata):
        unit_ids = strata[label]
        fill(unit_ids, holdout_fraction * sum(sizes[u] for u in unit_ids), 0)
    # Strata too small to hold out a whole unit each still add up to a holdout overall.
    fill(sorted(members), holdout_fraction * n, int(holdout.sum()))
    if holdout.all():  # a single unit: keep something to train on
        holdout[:] = False
    return holdout
