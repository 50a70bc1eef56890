"""What ingest writes: train.h5 and holdout.h5, the pseudonym mapping, and ingest-report.json's content."""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fundus_cli.commands.ingest.config import IngestConfig, LABELS_FROM_FOLDERS, options_for_file
from fundus_cli.commands.ingest.stage import Item
from fundus_cli.data import h5
from fundus_cli.fsio import write_csv_atomic
from fundus_cli.progress import track
from fundus_cli.schemas.ingest_report import RejectedFile


def write_splits(cfg: IngestConfig, items: list[Item], groups: np.ndarray, is_holdout: np.ndarray,
                  names: tuple[str, ...], conflicts: dict[str, list[Any]],
                  public: Callable[[str, str], str]) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """train.h5 and holdout.h5 from the staged images; returns the counts per split and class and
    each file's fingerprint."""
    out = Path(cfg.out)
    side_of = {it.rel: bool(is_holdout[i]) for i, it in enumerate(items)}
    split_id = uuid.uuid4().hex
    options = options_for_file(cfg)
    counts: dict[str, dict[str, int]] = {}
    fingerprints: dict[str, str] = {}
    readers: dict[Path, h5.DatasetReader] = {}
    with track("writing", len(items)) as advance:
        try:
            for split, path, want in (("train", out / "train.h5", False), ("holdout", out / "holdout.h5", True)):
                chosen = [i for i in range(len(items)) if bool(is_holdout[i]) == want]
                provenance = {"split_id": split_id, "holdout_fraction": cfg.holdout_fraction, "seed": cfg.seed,
                              "source_folder": "(pseudonymized)" if cfg.pseudonymize else str(cfg.raw),
                              # conflicts whose copies are (still) in this file, for `fundus info`
                              "duplicates": {"policy": cfg.duplicates, **{
                                  f"{kind}_conflicts": sum(1 for g in conflicts[kind]
                                                           if any(side_of.get(rel) is want for rel, _, _ in g))
                                  for kind in ("label", "patient")}}}
                with h5.DatasetWriter(path, image_size=cfg.size, split=split, class_names=names, options=options,
                                      provenance=provenance, pseudonymized=cfg.pseudonymize) as w:
                    for i in chosen:
                        it = items[i]
                        if it.shard not in readers:
                            readers[it.shard] = h5.open_dataset(it.shard)
                        rec = readers[it.shard].record(it.row)
                        rec.source = public("source", it.rel)
                        rec.patient = public("patient", it.patient)
                        rec.label = it.label
                        rec.dup_group = int(groups[i])
                        w.append(rec)
                        advance()
                fingerprints[split] = w.fingerprint or ""
                counts[split] = _count_by_label([items[i].label for i in chosen], names)
        finally:
            for r in readers.values():
                r.close()
    return counts, fingerprints


def _count_by_label(labels: list[int], names: tuple[str, ...]) -> dict[str, int]:
    c = Counter(labels)
    out = {name: c.get(i, 0) for i, name in enumerate(names)}
    if c.get(-1):
        out["unknown"] = c[-1]
    return out


def write_mapping(path: Path, salt: str, mapping: list[tuple[str, str, str]]) -> None:
    rows = [("kind", "pseudonym", "original"), *sorted(set(mapping))]
    write_csv_atomic(path, rows, preamble=f"# salt={salt}\n# keep this file with the data owner: it turns "
                                          "pseudonyms back into names\n")
    os.chmod(path, 0o600)


def _hidden_paths(cfg: IngestConfig, raw: Path) -> list[tuple[str, str]]:
    """(text, placeholder) pairs to replace in the report's free text under --pseudonymize.

    With --pseudonymize nothing identifying may leave: folder and labels-file paths (which may
    carry a patient's name) are replaced in every free-text field, and a rejected file's own
    name in its reason by its pseudonym."""
    hidden: list[tuple[str, str]] = []
    if cfg.pseudonymize:
        for path, placeholder in ((raw, "<input folder>"),
                                  *(((Path(cfg.labels), "<labels file>"),) if cfg.labels not in
                                    (None, LABELS_FROM_FOLDERS) else ())):
            for form in {str(path), path.as_posix(), str(path.resolve()), os.path.abspath(path)}:
                hidden.append((form, placeholder))
        hidden.sort(key=lambda h: -len(h[0]))  # longest first: a resolved path contains the short one
    return hidden


def report_body(cfg: IngestConfig, raw: Path, rels: list[str], ignored: list[str], rejected: list[dict[str, str]],
            items: list[Item], names: tuple[str, ...], counts: dict[str, dict[str, int]],
            label_desc: dict[str, Any], notes: list[str], conversions: Counter[str], dup_list: list[list[str]],
            fingerprints: dict[str, str], t0: float, resumed: int, is_holdout: np.ndarray | None,
            map_path: Path | None, public: Any = None, conflicts: dict[str, list[Any]] | None = None,
            dropped: int = 0) -> dict[str, Any]:
    def name(rel: str) -> str:
        return public("source", rel) if public is not None else (rel if not cfg.pseudonymize else "(pseudonymized)")

    hidden = _hidden_paths(cfg, raw)

    def scrub(text: str, rel: str | None = None) -> str:
        if not cfg.pseudonymize:
            return text
        if rel:
            text = text.replace(rel, name(rel))
        for value, placeholder in hidden:
            text = text.replace(value, placeholder)
        return text

    if cfg.pseudonymize and label_desc.get("source") not in (None, "folders"):
        label_desc = {**label_desc, "source": "(pseudonymized)"}

    seconds = time.perf_counter() - t0
    processed = len(rels) - resumed
    quality_summary: dict[str, dict[str, float]] = {}
    if items:
        for q in h5.QUALITY_COLUMNS:
            v = np.array([it.quality[q] for it in items])
            quality_summary[q] = {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())}
    return {
        "options": options_for_file(cfg),
        "input": {"folder": "(pseudonymized)" if cfg.pseudonymize else str(raw), "images_found": len(rels),
                  "other_files_ignored": len(ignored)},
        "outputs": {"train": str(Path(cfg.out) / "train.h5"), "holdout": str(Path(cfg.out) / "holdout.h5"),
                    "pseudonym_map": str(map_path) if map_path else None},
        "fingerprints": fingerprints,
        "class_names": list(names),
        "labels": label_desc,
        "counts": {"accepted": len(items), "rejected": len(rejected),
                   "train": int((~is_holdout).sum()) if is_holdout is not None else 0,
                   "holdout": int(is_holdout.sum()) if is_holdout is not None else 0,
                   "per_split_and_class": counts,
                   "patients": len({it.patient for it in items})},
        "rejected": [RejectedFile(source=name(r["source"]), reason=scrub(r["reason"], r["source"])).to_json()
                     for r in rejected],
        "conversions": dict(conversions),
        "duplicates": {"threshold_bits": cfg.dup_threshold, "groups": [[name(s) for s in g] for g in dup_list],
                       "policy": cfg.duplicates, "dropped": dropped,
                       **{f"{kind}_conflicts": [
                           {"files": [name(rel) for rel, _, _ in g], "labels": [lab for _, lab, _ in g],
                            "patients": [public("patient", pat) if public is not None else pat for _, _, pat in g]}
                           for g in (conflicts or {}).get(kind, [])] for kind in ("label", "patient")},
                       "images_in_groups": sum(len(g) for g in dup_list)},
        "quality": quality_summary,
        "notes": [scrub(n) for n in notes],
        "timing": {"seconds": round(seconds, 3), "images_processed": processed, "resumed": resumed,
                   "images_per_second": round(processed / seconds, 2) if seconds > 0 else None},
    }
