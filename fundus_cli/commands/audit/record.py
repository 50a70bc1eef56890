"""What the audit writes besides the figures: report.json (canonical: sorted keys, rounded floats,
no times) and flagged.csv."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fundus_cli.commands.audit.config import FLAGGED_COLUMNS, SIGNIFICANT, Audit
from fundus_cli.commands.audit.embed import VIEW_DIMS, VIEW_K
from fundus_cli.data import h5
from fundus_cli.data.quality import DUP_CORRELATION
from fundus_cli.fsio import write_csv_atomic
from fundus_cli.privacy import per_class
from fundus_cli.privacy import preprocess as pp
from fundus_cli.privacy import views as vw
from fundus_cli.privacy import stats as st
from fundus_cli.privacy.decision import Decision
from fundus_cli.privacy.learned import LearnedEncoder
from fundus_cli.schemas.audit_report import AUDIT_REPORT


def input_record(reader: h5.DatasetReader, path: Path | None) -> dict[str, Any]:
    i = reader.info
    return {"path": str(path), "fingerprint": i.fingerprint, "count": i.count, "image_size": i.image_size,
            "kind": i.kind, "split": i.split}


def excluded_holdout(overlap: st.HoldoutOverlap, h_sources: list[str], h_patients: list[str],
                      t_sources: list[str]) -> list[dict[str, Any]]:
    rows = []
    for i in np.nonzero(~overlap.keep)[0]:
        dup = int(overlap.duplicate_of[i])
        mirrored = dup >= 0 and overlap.duplicate_flipped is not None and bool(overlap.duplicate_flipped[i])
        why = ([f"duplicate of a training image{' (mirrored)' if mirrored else ''}"] if dup >= 0 else []) + \
              (["patient also in training"] if overlap.shared_patient[i] else [])
        rows.append({"holdout_index": int(i), "source": h_sources[i], "patient": h_patients[i],
                     "reason": "; ".join(why),
                     "train_index": dup if dup >= 0 else None, "train_source": t_sources[dup] if dup >= 0 else None,
                     "phash_bits": int(overlap.duplicate_bits[i]) if dup >= 0 else None,
                     "mirrored": mirrored if dup >= 0 else None})
    return rows


def _fmt(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    if isinstance(x, (float, np.floating)):
        f = _round(float(x))
        return "" if f is None else repr(f)
    return str(x)


def write_flagged(path: Path, decision: Decision, s_sources: list[str], t_sources: list[str],
                   t_patients: list[str]) -> None:
    rows: list[list[str]] = [list(FLAGGED_COLUMNS)]
    for f in decision.flags:
        row = f.row() | {"synthetic_source": s_sources[f.synthetic], "train_source": t_sources[f.train_index],
                         "train_patient": t_patients[f.train_index]}
        rows.append([_fmt(row[c]) for c in FLAGGED_COLUMNS])
    write_csv_atomic(path, rows)  # neutralises spreadsheet formulas in names and patient ids


def _round(x: float) -> float | None:
    if not math.isfinite(x):
        return None
    return float(f"{x:.{SIGNIFICANT}g}") + 0.0  # + 0.0 turns -0.0 into 0.0


def canonical(x: Any) -> Any:
    """JSON-able, with every float rounded the same way (NaN and infinities become null)."""
    if isinstance(x, dict):
        return {str(k): canonical(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [canonical(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return _round(float(x))
    if x is None or isinstance(x, str):
        return x
    raise TypeError(f"cannot put {type(x).__name__} into the report")


def dumps_report(report: dict[str, Any]) -> str:
    """The canonical text of a report: sorted keys, rounded floats, no NaN."""
    return json.dumps(canonical(report), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


@dataclass(frozen=True)
class ReportInputs:
    """What report.json states besides the results: the run's settings, files and working choices."""

    audit: Audit  # the run's settings, device and open files
    h_used: int  # holdout images used for the calibration
    excluded: list[dict[str, Any]]  # holdout images left out, with why
    mask: np.ndarray
    max_shift: int
    views: bool  # the registered distance searched shifted views
    encoder: LearnedEncoder | None

    @property
    def calibrated_on(self) -> str:
        return "holdout" if self.audit.hold is not None else "leave-one-out"


def report_body(r: ReportInputs, *, decision: Decision, summary: str, checkpoint: dict[str, Any],
                embeddings: dict[str, Any], classes: list[per_class.ClassTest], class_names: tuple[str, ...] | None,
                phash_bits: np.ndarray, notes: list[str], artefacts: list[str]) -> dict[str, Any]:
    """report.json's content (stamped with its format; `dumps_report` gives its canonical text)."""
    cfg, hold, encoder = r.audit.cfg, r.audit.hold, r.encoder
    return AUDIT_REPORT.stamp({
        "decision": {"status": decision.status, "exit_code": decision.exit_code, "summary": summary,
                     "reasons": list(decision.reasons), "warnings": list(decision.warnings),
                     "inconclusive": list(decision.inconclusive), "tests_run": list(decision.tests_run),
                     "min_holdout": decision.min_holdout, "min_synthetic": decision.min_synthetic,
                     "n_flagged": len(decision.flags), "confirmed_copies": list(decision.confirmed)},
        "checkpoint": checkpoint,
        "inputs": {
            "train": input_record(r.audit.train, cfg.train),
            "holdout": None if hold is None else input_record(hold, cfg.holdout) | {
                "used": int(r.h_used), "excluded": len(r.excluded)},
            "synthetic": input_record(r.audit.synth, cfg.synthetic),
        },
        "calibration": r.calibrated_on,
        "holdout_excluded": r.excluded,
        "settings": _settings_record(r),
        "thresholds": r.audit.thresholds.to_dict(),
        "learned_encoder": None if encoder is None else {
            "weights_sha256": encoder.weights_sha256, "feature_dim": encoder.model.feature_dim,
            "steps": len(encoder.losses), "loss_first": encoder.losses[0] if encoder.losses else None,
            "loss_last": encoder.losses[-1] if encoder.losses else None},
        "embeddings": embeddings,
        "per_class": None if class_names is None else canonical({
            "classes": list(class_names),
            "multiplicity": f"Holm over {len(decision.class_adjusted)} per-class tests",
            "not_tested": list(decision.classes_not_tested),
            "tests": per_class.summary(classes, decision.class_adjusted)}),
        "perceptual_hash": {"min_bits": int(phash_bits.min()),
                            "n_within_threshold": int((phash_bits <= cfg.phash_bits).sum())},
        "notes": notes,
        "artefacts": artefacts,
    })


def _settings_record(r: ReportInputs) -> dict[str, Any]:
    cfg = r.audit.cfg
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()
                   if k not in ("out", "force", "device")},
        "device": str(r.audit.device.type),
        "embeddings": list(r.audit.names),
        "working_size": cfg.size,
        "mask": {"pixels": int(r.mask.sum()), "coverage": pp.DEFAULT_COVERAGE, "shrink": pp.DEFAULT_SHRINK},
        "statistics": r.audit.settings.__dict__,
        "registration": None if "registered" not in r.audit.names else {
            "max_shift": r.max_shift, "candidates_per_source": cfg.register_k,
            "view_shifts": [list(v) for v in vw.view_offsets(r.max_shift)] if r.views else [],
            "view_candidates": VIEW_K if r.views else 0, "view_dims": VIEW_DIMS,
            "confirm_detail_correlation": DUP_CORRELATION},
        "encoder": None if r.encoder is None else r.encoder.config.to_dict(),
    }
