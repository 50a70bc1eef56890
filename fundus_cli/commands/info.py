"""`fundus info`: what a fundus-cli file holds, as a JSON-able dict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fundus_cli.data import h5
from fundus_cli.errors import FundusError


def describe(path: Path, *, verify: bool = False) -> dict[str, Any]:
    """What a fundus-cli file holds, as a JSON-able dict (`fundus info`)."""
    path = Path(path)
    if not path.exists():
        raise FundusError(f"{path}: no such file.")
    if path.is_file() and h5.is_dataset_file(path):
        return _describe_dataset(path, verify=verify)
    if path.suffix == ".pt" or (path.is_dir() and (path / "checkpoint.pt").exists()):
        return _describe_checkpoint(path)
    if path.suffix == ".json":
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FundusError(f"{path}: not valid JSON ({e}).") from None
        if isinstance(obj, dict) and str(obj.get("format", "")).startswith("fundus-cli"):
            return {"path": str(path), "type": obj["format"], "fundus_cli_version": obj.get("fundus_cli_version"),
                    "summary": {k: v for k, v in obj.items() if k in ("counts", "decision", "fingerprints")}}
    raise FundusError(f"{path}: not a file that fundus-cli knows (an .h5 dataset, a .pt checkpoint or a fundus-cli .json report).")


def _describe_checkpoint(path: Path) -> dict[str, Any]:
    from fundus_cli.fsio import sha256_file
    from fundus_cli.training.checkpoint import LATEST, load_checkpoint

    ck = load_checkpoint(path)
    file = path / LATEST if path.is_dir() else path
    return {"path": str(file), "type": "checkpoint", "arch": ck["arch"], "step": int(ck["step"]),
            "steps": ck["train_config"].get("steps"), "image_size": ck["image_size"],
            "class_names": list(ck["class_names"]), "conditional": bool(ck["model_config"].get("num_classes")),
            "model_config": ck["model_config"], "dataset_fingerprint": ck["dataset_fingerprint"],
            "dataset_path": ck.get("dataset_path"), "fingerprint": sha256_file(file),
            "fundus_cli_version": ck["fundus_cli_version"], "format_version": ck["format_version"],
            "train_config": ck["train_config"]}


def _conflicting_label_groups(groups: np.ndarray, labels: np.ndarray) -> int:
    """Duplicate groups whose copies carry two or more different known labels."""
    known = labels >= 0
    pairs = np.unique(np.stack([groups[known], labels[known]]), axis=1) if known.any() else np.zeros((2, 0))
    _, per_group = np.unique(pairs[0], return_counts=True) if pairs.size else (None, np.array([]))
    return int((per_group > 1).sum())


def _describe_dataset(path: Path, *, verify: bool) -> dict[str, Any]:

    with h5.open_dataset(path) as r:
        info = r.info
        labels = r.labels()
        counts = {name: int((labels == i).sum()) for i, name in enumerate(info.class_names)}
        if (labels == -1).any():
            counts["unknown"] = int((labels == -1).sum())
        patients = r.patients()
        quality = {q: {"median": float(np.nanmedian(v)) if v.size else None}
                   for q, v in r.quality().items()}
        groups = r.dup_groups()
        _, group_sizes = np.unique(groups, return_counts=True) if groups.size else (None, np.array([]))
        out: dict[str, Any] = {
            "path": str(path),
            "type": "dataset",
            "split": info.split,
            "kind": info.kind,
            "images": info.count,
            "image_size": info.image_size,
            "file_bytes": path.stat().st_size,
            "class_names": list(info.class_names),
            "label_counts": counts,
            "patients": len(set(patients)),
            "duplicate_groups": int((group_sizes > 1).sum()),
            "duplicate_groups_with_conflicting_labels": _conflicting_label_groups(groups, labels),
            "duplicate_groups_across_patients": (info.provenance.get("duplicates") or {}).get("patient_conflicts")
            if isinstance(info.provenance.get("duplicates"), dict) else None,
            "pseudonymized": info.pseudonymized,
            "fingerprint": info.fingerprint,
            "schema_version": info.schema_version,
            "created": info.created,
            "fundus_cli_version": info.fundus_cli_version,
            "provenance": info.provenance,
            "options": info.options,
            "quality_medians": {q: v["median"] for q, v in quality.items()},
        }
        if verify:
            actual = r.compute_fingerprint()
            out["fingerprint_verified"] = actual == info.fingerprint
            if actual != info.fingerprint:
                raise FundusError(f"{path}: the images do not match the stored fingerprint (stored "
                                  f"{info.fingerprint[:12]}, computed {actual[:12]}): the file was altered "
                                  "after it was written. Re-create it.")
    return out
