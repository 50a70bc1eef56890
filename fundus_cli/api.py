"""The importable API: one function per command, typed configs in, result dataclasses out.

Everything here raises `FundusError` for problems the user can fix and never prints;
`fundus_cli.cli` is a thin layer that parses options and calls these functions.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fundus_cli.errors import FundusError

if TYPE_CHECKING:
    import numpy as np

    from fundus_cli.audit import AuditConfig, AuditResult
    from fundus_cli.data.ingest import IngestConfig, IngestResult
    from fundus_cli.data.phantoms import PhantomResult
    from fundus_cli.demo import DemoConfig, DemoResult
    from fundus_cli.evaluate import EvaluateConfig, EvaluateResult
    from fundus_cli.report_html import ReportResult
    from fundus_cli.sampling import SampleConfig, SampleResult
    from fundus_cli.training.loop import TrainConfig, TrainResult

__all__ = ["AuditConfig", "AuditResult", "audit_privacy", "DemoConfig", "DemoResult", "EvaluateConfig",
           "EvaluateResult", "evaluate", "IngestConfig", "IngestResult", "SampleConfig", "SampleResult", "TrainConfig",
           "TrainResult", "describe", "ingest", "phantoms", "sample", "train", "train_plan", "report", "demo"]

# Config and result classes by the module that defines them. They are reached through this
# module's __getattr__ so that `import fundus_cli.api` (and `fundus --help`) stays free of torch,
# h5py and scipy, which the defining modules import at their top.
_LAZY = {
    "AuditConfig": "fundus_cli.audit", "AuditResult": "fundus_cli.audit",
    "DemoConfig": "fundus_cli.demo", "DemoResult": "fundus_cli.demo",
    "EvaluateConfig": "fundus_cli.evaluate", "EvaluateResult": "fundus_cli.evaluate",
    "IngestConfig": "fundus_cli.data.ingest", "IngestResult": "fundus_cli.data.ingest",
    "SampleConfig": "fundus_cli.sampling", "SampleResult": "fundus_cli.sampling",
    "TrainConfig": "fundus_cli.training.loop", "TrainResult": "fundus_cli.training.loop",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def ingest(config: IngestConfig) -> IngestResult:
    """Read a folder of photographs into `train.h5`, `holdout.h5` and `ingest-report.json`."""
    from fundus_cli.data.ingest import ingest as run

    return run(config)


def train(config: TrainConfig, *, log: Callable[[str], None] = lambda s: None) -> TrainResult:
    """Train a VAE or GAN on a dataset file; checkpoints, metrics and sample grids go to the run folder."""
    from fundus_cli.training.loop import train as run

    return run(config, log=log)


def train_plan(config: TrainConfig) -> dict[str, Any]:
    """The fully resolved configuration that `train` would use (for --dry-run), without training."""
    from fundus_cli.data import h5
    from fundus_cli.training import distributed
    from fundus_cli.training.loop import config_to_json, model_config, resolve

    device = distributed.resolve_device(config.device)
    with h5.open_dataset(config.data) as r:
        info = r.info
    cfg = resolve(config, stored_size=info.image_size, n_images=info.count, n_classes=len(info.class_names),
                  device=device)
    return {"train_config": config_to_json(cfg), "model_config": model_config(cfg, len(info.class_names)),
            "device": str(device), "dataset": {"path": str(config.data), "images": info.count,
                                               "fingerprint": info.fingerprint}}


def sample(config: SampleConfig) -> SampleResult:
    """Generate synthetic images from a checkpoint into a dataset file of the ingest schema."""
    from fundus_cli.sampling import sample as run

    return run(config)


def evaluate(config: EvaluateConfig) -> EvaluateResult:
    """Realism (FID/KID/PRDC with CIs and a real-vs-real baseline, fundus statistics) and usefulness."""
    from fundus_cli.evaluate import evaluate as run

    return run(config)


def audit_privacy(config: AuditConfig) -> AuditResult:
    """Nearest-neighbour memorization audit of synthetic images against the training set (AUDIT.md)."""
    from fundus_cli.audit import audit_privacy as run

    return run(config)


def report(source: Path, *, out: Path | None = None) -> ReportResult:
    """One self-contained HTML page (`report.html`) for a project, demo, run or report folder."""
    from fundus_cli.report_html import write_report

    return write_report(source, out=out)


def demo(config: DemoConfig, *, log: Callable[[str], None] = lambda s: None) -> DemoResult:
    """The whole pipeline on built-in phantoms in one folder, ending in its report.html (`fundus demo`)."""
    from fundus_cli.demo import run_demo

    return run_demo(config, log=log)


def phantoms(out_dir: Path, *, n: int = 200, seed: int = 0, overwrite: bool = False) -> PhantomResult:
    """Write `n` synthetic fundus-like photographs and `labels.csv`: the built-in demo and test data."""
    from fundus_cli.data.phantoms import write_phantoms
    from fundus_cli.progress import track

    if n < 1:
        raise FundusError(f"--n {n}: ask for at least one image.")
    with track("phantoms", n) as advance:
        return write_phantoms(Path(out_dir), n=n, seed=seed, on_progress=advance, overwrite=overwrite)


def describe(path: Path, *, verify: bool = False) -> dict[str, Any]:
    """What a fundus-cli file holds, as a JSON-able dict (`fundus info`)."""
    path = Path(path)
    if not path.exists():
        raise FundusError(f"{path}: no such file.")
    from fundus_cli.data import h5

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
    import numpy as np

    known = labels >= 0
    pairs = np.unique(np.stack([groups[known], labels[known]]), axis=1) if known.any() else np.zeros((2, 0))
    _, per_group = np.unique(pairs[0], return_counts=True) if pairs.size else (None, np.array([]))
    return int((per_group > 1).sum())


def _describe_dataset(path: Path, *, verify: bool) -> dict[str, Any]:
    import numpy as np

    from fundus_cli.data import h5

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
