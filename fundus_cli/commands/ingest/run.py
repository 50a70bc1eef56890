"""`ingest`: the command as named steps: stage, collect, label, deduplicate, split, write."""

from __future__ import annotations

import secrets
import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from fundus_cli.commands.ingest.config import IngestConfig, IngestResult, STAGING_DIR, check_config
from fundus_cli.commands.ingest.duplicates import deduplicate
from fundus_cli.commands.ingest.patients import labels_and_patients, pseudonym
from fundus_cli.commands.ingest.stage import collect, find_files, stage_all
from fundus_cli.commands.ingest.write import report_body, write_mapping, write_splits
from fundus_cli.data.decode import IMAGE_SUFFIXES
from fundus_cli.data.labels import compile_patient_regex
from fundus_cli.data.quality import parse_min_quality
from fundus_cli.data.split import split_holdout, split_units
from fundus_cli.errors import FundusError
from fundus_cli.fsio import folder_lock
from fundus_cli.schemas.ingest_report import INGEST_REPORT


def ingest(cfg: IngestConfig) -> IngestResult:
    t0 = time.perf_counter()
    raw, out = Path(cfg.raw), Path(cfg.out)
    check_config(cfg)
    train_path, holdout_path, report_path = out / "train.h5", out / "holdout.h5", out / "ingest-report.json"
    map_path = Path(cfg.pseudonym_map) if cfg.pseudonym_map else out / "pseudonym-map.csv"
    existing = [p for p in (train_path, holdout_path, report_path) if p.exists()]
    if existing and not cfg.force:
        raise FundusError(f"{existing[0]} already exists. Use --force to overwrite it, or --out to write elsewhere.")
    thresholds = parse_min_quality(cfg.min_quality)
    rx = compile_patient_regex(cfg.patient_regex) if cfg.patient_regex else None

    rels, ignored, problems = find_files(raw)
    if not rels:
        what = f" ({len(ignored)} other files ignored, e.g. {ignored[0]})" if ignored else ""
        if problems:
            what += f" ({len(problems)} entries could not be used, e.g. {problems[0]['source']}: {problems[0]['reason']})"
        raise FundusError(f"{raw}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}){what}. "
                          "Point ingest at the folder that holds the photographs.")

    # One ingest per output folder: two at once would mix each other's staging shards.
    with folder_lock(out, command="fundus ingest"):
        existing = [p for p in (train_path, holdout_path, report_path) if p.exists()]
        if existing and not cfg.force:
            raise FundusError(f"{existing[0]} already exists. Use --force to overwrite it, or --out to write "
                              "elsewhere.")
        return _ingest_locked(cfg, t0=t0, rels=rels, ignored=ignored, problems=problems, thresholds=thresholds,
                              rx=rx, map_path=map_path)


def _ingest_locked(cfg: IngestConfig, *, t0: float, rels: list[str], ignored: list[str],
                   problems: list[dict[str, str]], thresholds: Any, rx: Any, map_path: Path) -> IngestResult:
    raw, out = Path(cfg.raw), Path(cfg.out)
    train_path, holdout_path, report_path = out / "train.h5", out / "holdout.h5", out / "ingest-report.json"
    shard_metas, resumed = stage_all(cfg, rels)
    notes: list[str] = []
    if resumed:
        notes.append(f"resumed: {resumed} images were already processed by an interrupted ingest")
    rejected: list[dict[str, str]] = list(problems)
    items, conversions = collect(rels, shard_metas, thresholds, rejected)
    if not items:
        report = report_body(cfg, raw, rels, ignored, rejected, [], (), {}, {}, notes, conversions, [], {}, t0,
                         resumed, None, None)
        INGEST_REPORT.write(report_path, report)
        reasons = Counter(r["reason"].split(" (")[0].split(":")[0] for r in rejected).most_common(3)
        raise FundusError(f"{raw}: none of the {len(rels)} images is usable ({'; '.join(f'{c}x {r}' for r, c in reasons)}). "
                          f"Every reason is listed in {report_path}.")
    names, label_desc = labels_and_patients(cfg, items, rx, notes)
    items, groups, conflicts, n_dropped = deduplicate(cfg, items, names, rejected, notes)
    units = split_units([it.patient for it in items], groups)
    labels = np.array([it.label for it in items])
    is_holdout = split_holdout(units, labels, holdout_fraction=cfg.holdout_fraction, seed=cfg.seed)
    dup_members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        dup_members[int(g)].append(i)
    dup_list = [[items[i].rel for i in m] for m in dup_members.values() if len(m) > 1]

    salt = cfg.salt or (secrets.token_hex(16) if cfg.pseudonymize else "")
    mapping: list[tuple[str, str, str]] = []

    def public(kind: str, value: str) -> str:
        if not cfg.pseudonymize:
            return value
        p = pseudonym(salt, kind, value)
        mapping.append((kind, p, value))
        return p

    counts, fingerprints = write_splits(cfg, items, groups, is_holdout, names, conflicts, public)
    if cfg.pseudonymize:
        write_mapping(map_path, salt, mapping)
    report = report_body(cfg, raw, rels, ignored, rejected, items, names, counts, label_desc, notes, conversions,
                     dup_list, fingerprints, t0, resumed, is_holdout, map_path if cfg.pseudonymize else None,
                     conflicts=conflicts, dropped=n_dropped,
                     public=public)
    INGEST_REPORT.write(report_path, report)
    shutil.rmtree(out / STAGING_DIR, ignore_errors=True)
    return IngestResult(
        train=train_path, holdout=holdout_path, report=report_path,
        n_train=int((~is_holdout).sum()), n_holdout=int(is_holdout.sum()), n_found=len(rels),
        n_rejected=len(rejected), n_duplicate_groups=len(dup_list), class_names=names, counts=counts,
        n_label_conflicts=len(conflicts["label"]), n_patient_conflicts=len(conflicts["patient"]),
        n_dropped_duplicates=n_dropped,
        notes=notes, pseudonym_map=map_path if cfg.pseudonymize else None,
        seconds=time.perf_counter() - t0, resumed_images=resumed,
    )
