"""Copies of one photograph: grouped by hash and confirmed on fine detail, and --duplicates applied
(keep, first, drop-conflicts)."""

from __future__ import annotations

import functools
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from fundus_cli.commands.ingest.config import IngestConfig
from fundus_cli.commands.ingest.stage import Item
from fundus_cli.data import h5
from fundus_cli.data.quality import DUP_CORRELATION, detail_signature, duplicate_groups
from fundus_cli.errors import FundusError


def deduplicate(cfg: IngestConfig, items: list[Item], names: tuple[str, ...], rejected: list[dict[str, str]],
                 notes: list[str]) -> tuple[list[Item], np.ndarray, dict[str, list[Any]], int]:
    """Group copies of one photograph (hash, then fine detail) and apply --duplicates: the items
    kept, their duplicate groups, the label and patient conflicts, and how many were left out."""
    readers: dict[Path, h5.DatasetReader] = {}

    # Bounded, so that memory stays flat however many hash matches a large dataset has.
    @functools.lru_cache(maxsize=4096)
    def signature(i: int) -> np.ndarray:
        it = items[i]
        if it.shard not in readers:
            readers[it.shard] = h5.open_dataset(it.shard)
        return detail_signature(readers[it.shard].images(it.row, it.row + 1)[0])

    def same_photograph(i: int, j: int) -> bool:
        return float((signature(i) * signature(j)).mean()) >= DUP_CORRELATION

    try:
        groups = duplicate_groups(np.array([it.phash for it in items], dtype=np.uint64),
                                  max_distance=cfg.dup_threshold, exact_keys=[it.sha256 for it in items],
                                  confirm=same_photograph)
    finally:
        for r in readers.values():
            r.close()
        signature.cache_clear()
    conflicts = _duplicate_conflicts(items, groups, names)
    keep = _apply_duplicate_policy(cfg.duplicates, items, groups, conflicts, rejected)
    n_dropped = int((~keep).sum())
    if n_dropped == len(items):
        raise FundusError(f"--duplicates {cfg.duplicates} left no image: every one was a conflicting copy. Use "
                          "--duplicates keep and fix the labels (see the duplicates in the ingest report).")
    if n_dropped:
        items = [it for it, k in zip(items, keep) if k]
        groups = groups[keep]
    if conflicts["label"] or conflicts["patient"]:
        notes.append(_conflict_note(conflicts, cfg.duplicates, n_dropped))
    return items, groups, conflicts, n_dropped


def _duplicate_conflicts(items: list[Item], groups: np.ndarray,
                         names: tuple[str, ...]) -> dict[str, list[list[tuple[str, str, str]]]]:
    """Duplicate groups whose copies disagree: {"label": [...], "patient": [...]}, each group a list
    of (file, label name, patient id).

    One photograph under two labels is a labelling error that a classifier (and the usefulness
    test) inherits; under two patient ids it is a possible identity error, which also breaks the
    patient split's promise. Unknown labels and the one-image-one-patient fallback are not
    evidence of either.
    """
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[int(g)].append(i)
    out: dict[str, list[list[tuple[str, str, str]]]] = {"label": [], "patient": []}
    for m in members.values():
        if len(m) < 2:
            continue
        desc = [(items[i].rel, names[items[i].label] if items[i].label >= 0 else "unknown", items[i].patient)
                for i in m]
        if len({items[i].label for i in m if items[i].label >= 0}) > 1:
            out["label"].append(desc)
        if len({items[i].patient for i in m if items[i].patient_known}) > 1:
            out["patient"].append(desc)
    return out


def _apply_duplicate_policy(policy: str, items: list[Item], groups: np.ndarray,
                            conflicts: dict[str, list[list[tuple[str, str, str]]]],
                            rejected: list[dict[str, str]]) -> np.ndarray:
    """Which items stay; the ones left out are added to `rejected` with the reason."""
    keep = np.ones(len(items), bool)
    index = {it.rel: i for i, it in enumerate(items)}
    if policy == "first":
        seen: set[int] = set()
        for i, g in enumerate(groups):  # items are in file-name order: the first name wins
            if int(g) in seen:
                keep[i] = False
                rejected.append({"source": items[i].rel, "reason": "duplicate: another copy of this photograph "
                                 "(the first by file name) was kept (--duplicates first)"})
            seen.add(int(g))
    elif policy == "drop-conflicts":
        for group in conflicts["label"]:
            labels = ", ".join(sorted({lab for _, lab, _ in group}))
            for rel, _, _ in group:
                keep[index[rel]] = False
                rejected.append({"source": rel, "reason": f"duplicate with conflicting labels ({labels}): every "
                                 "copy left out (--duplicates drop-conflicts)"})
    return keep


def _conflict_note(conflicts: dict[str, list[Any]], policy: str, dropped: int) -> str:
    n_lab, n_pat = len(conflicts["label"]), len(conflicts["patient"])
    parts = []
    if n_lab:
        parts.append(f"{n_lab} group{'s' if n_lab > 1 else ''} of copies of one photograph carry different labels")
    if n_pat:
        parts.append(f"{n_pat} group{'s' if n_pat > 1 else ''} of copies carry different patient ids "
                     "(possible identity errors)")
    what = "; ".join(parts) + ": listed under 'duplicates' in ingest-report.json"
    if policy == "keep":
        return (f"duplicates: {what}. All copies were kept; --duplicates drop-conflicts leaves out the copies with "
                "conflicting labels, --duplicates first keeps one copy of every photograph")
    return f"duplicates: {what}. --duplicates {policy} left out {dropped} copies"
