"""What is in the folder being reported on: datasets, runs, reports (read through their schema
modules), and which reports belong to which synthetic file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fundus_cli.commands.report.html import as_dict, get, num, rel
from fundus_cli.errors import FundusError
from fundus_cli.fsio import sha256_file
from fundus_cli.schemas import Artefact, audit_report
from fundus_cli.schemas.audit_report import AUDIT_REPORT
from fundus_cli.schemas.demo_record import DEMO_RECORD
from fundus_cli.schemas.evaluate_report import EVALUATE_REPORT
from fundus_cli.schemas.ingest_report import INGEST_REPORT
from fundus_cli.schemas.training_run import config_problem, read_metrics
from fundus_cli.training_length import shortfall


MAX_JSON_BYTES = 50 << 20


@dataclass
class Dataset:
    path: Path
    info: Any  # h5.DatasetInfo
    label_counts: dict[str, int]


@dataclass
class JsonFile:
    path: Path
    data: dict[str, Any]


@dataclass
class _Run:
    dir: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    checkpoint_sha256: str | None
    step: int | None


@dataclass
class SynthSet:
    """One synthetic dataset file and the reports made on it. A report whose file is not here (or has
    changed since) gets a set of its own, so that its verdict is still shown and counted."""

    key: str  # the file's resolved path, or "fingerprint|recorded path" for a file that is not here
    path: str  # the file's path, or as recorded in the report
    dataset: Dataset | None
    evaluations: list[JsonFile] = field(default_factory=list)
    audits: list[JsonFile] = field(default_factory=list)
    changed: bool = False  # the recorded file is here but its fingerprint differs: the reports describe an older file


@dataclass
class Project:
    root: Path
    datasets: list[Dataset] = field(default_factory=list)
    runs: list[_Run] = field(default_factory=list)
    evaluations: list[JsonFile] = field(default_factory=list)
    audits: list[JsonFile] = field(default_factory=list)
    ingest: JsonFile | None = None
    demo: JsonFile | None = None
    problems: list[str] = field(default_factory=list)  # files that could not be read, and why


def _read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            problems.append(f"{path}: larger than {MAX_JSON_BYTES >> 20} MB, not read")
            return None
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(f"{path}: not readable as JSON ({e})")
        return None
    return obj if isinstance(obj, dict) else None


def _readable(artefact: Artefact, data: dict[str, Any], path: Path, problems: list[str]) -> bool:
    """Whether `data` is a file of this kind that this version reads; a newer one is named in problems."""
    if not artefact.matches(data):
        return False
    why = artefact.problem(data, path)
    if why is not None:
        problems.append(why)
    return why is None


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def discover(root: Path) -> Project:
    """Find the project layout's files in `root`, or `root` itself being one of its folders
    (data/, runs/, a run, reports/, one report folder)."""
    from fundus_cli.data import h5

    proj = Project(root=root)
    for p in sorted({*root.glob("*.h5"), *(root / "data").glob("*.h5")}):
        try:
            with h5.open_dataset(p) as r:
                labels = r.labels()
                counts = {name: int((labels == i).sum()) for i, name in enumerate(r.info.class_names)}
                if (labels < 0).any():
                    counts["unknown"] = int((labels < 0).sum())
                proj.datasets.append(Dataset(p, r.info, counts))
        except FundusError as e:
            proj.problems.append(str(e))

    run_dirs = [root, *_subdirs(root), *_subdirs(root / "runs")]
    seen: set[Path] = set()
    for d in run_dirs:
        if d.resolve() in seen or not ((d / "config.json").is_file() or (d / "checkpoint.pt").is_file()):
            continue
        seen.add(d.resolve())
        proj.runs.append(_read_run(d, proj.problems))

    candidates = [root / "report.json", *(d / "report.json" for d in _subdirs(root)),
                  *(d / "report.json" for d in _subdirs(root / "reports"))]
    seen = set()
    for p in candidates:
        if not p.is_file() or p.resolve() in seen:
            continue
        seen.add(p.resolve())
        data = _read_json(p, proj.problems)
        if data is None:
            continue
        for artefact, found in ((EVALUATE_REPORT, proj.evaluations), (AUDIT_REPORT, proj.audits)):
            if _readable(artefact, data, p, proj.problems):
                found.append(JsonFile(p, data))
    for p in (root / "ingest-report.json", root / "data" / "ingest-report.json"):
        if p.is_file() and (data := _read_json(p, proj.problems)) and _readable(INGEST_REPORT, data, p, proj.problems):
            proj.ingest = JsonFile(p, data)
            break
    if (root / "demo.json").is_file() and (data := _read_json(root / "demo.json", proj.problems)) \
            and _readable(DEMO_RECORD, data, root / "demo.json", proj.problems):
        proj.demo = JsonFile(root / "demo.json", data)
    return proj


def _read_run(d: Path, problems: list[str]) -> _Run:
    config = _read_json(d / "config.json", problems) if (d / "config.json").is_file() else None
    if config is not None and (why := config_problem(config, d / "config.json")) is not None:
        problems.append(why)
        config = None
    metrics: list[dict[str, Any]] = []
    if (d / "metrics.jsonl").is_file():
        try:
            metrics = read_metrics((d / "metrics.jsonl").read_text(encoding="utf-8", errors="replace"),
                                   d / "metrics.jsonl")
        except FundusError as e:
            problems.append(str(e))
    ckpt = d / "checkpoint.pt"
    # The newest numbered checkpoint names the step that checkpoint.pt holds (it is a link to it).
    steps = [int(p.stem.split("-")[1]) for p in d.glob("checkpoint-*.pt") if p.stem.split("-")[1].isdigit()]
    step = max(steps) if steps else (num(metrics[-1].get("step")) if metrics else None)
    return _Run(dir=d, config=config or {}, metrics=metrics,
                checkpoint_sha256=sha256_file(ckpt) if ckpt.is_file() else None,
                step=None if step is None else int(step))


def synthetic_sets(p: Project) -> list[SynthSet]:
    """One set per synthetic dataset file, each with the reports made on that very file.

    Reports are matched by the path they record and checked by fingerprint; the fingerprint alone
    decides only when it names one file here. Two files can share a fingerprint (a copy edited in
    place keeps its attributes), and merging them would let one file's PASS hide the other's FAIL."""
    files: dict[str, SynthSet] = {}
    for d in p.datasets:
        if d.info.kind == "synthetic":
            key = str(d.path.resolve())
            files[key] = SynthSet(key, str(d.path), d)
    others: dict[str, SynthSet] = {}
    for kind, items in (("evaluations", p.evaluations), ("audits", p.audits)):
        for j in items:
            fp = get(j.data, "inputs", "synthetic", "fingerprint")
            path = get(j.data, "inputs", "synthetic", "path")
            target, changed = _match_file(j, fp, path, files, p.root)
            if target is None:
                key = f"{fp}|{path}"
                target = others.setdefault(key, SynthSet(key, path if isinstance(path, str) else "?", None,
                                                          changed=changed))
            getattr(target, kind).append(j)
    return sorted(files.values(), key=lambda s: s.path) + sorted(others.values(), key=lambda s: s.path)


def _match_file(j: JsonFile, fp: Any, path: Any, files: dict[str, SynthSet],
                root: Path) -> tuple[SynthSet | None, bool]:
    """The dataset file a report was made on, and whether the recorded file is here but has changed."""
    by_path = None
    if isinstance(path, str) and path:
        # The recorded path is relative to where the command ran: usually the project folder, which
        # holds reports/<name>/report.json.
        for base in (root, j.path.parent.parent.parent, Path.cwd()):
            try:
                key = str((base / path).resolve())
            except (OSError, ValueError, RuntimeError):
                continue
            if key in files:
                by_path = files[key]
                break
    if by_path is not None:
        assert by_path.dataset is not None
        if not isinstance(fp, str) or by_path.dataset.info.fingerprint == fp:
            return by_path, False
        return None, True
    same = [s for s in files.values() if s.dataset is not None and isinstance(fp, str)
            and s.dataset.info.fingerprint == fp]
    if len(same) > 1 and isinstance(path, str):
        same = [s for s in same if Path(s.path).name == Path(path).name]
    return (same[0] if len(same) == 1 else None), False


def dataset_by_fp(p: Project, fp: Any) -> Dataset | None:
    return next((d for d in p.datasets if isinstance(fp, str) and d.info.fingerprint == fp), None)


def _run_of(s: SynthSet, p: Project) -> _Run | None:
    prov = s.dataset.info.provenance if s.dataset is not None else {}
    fp = prov.get("checkpoint_fingerprint") if isinstance(prov, dict) else None
    return next((r for r in p.runs if r.checkpoint_sha256 and r.checkpoint_sha256 == fp), None)


def checkpoint_note(s: SynthSet, p: Project) -> str | None:
    """The under-trained warning for the checkpoint a synthetic file was sampled from: its step
    against the planned steps that the file records, or else its run's config.json, or else the
    note its audit recorded."""
    prov = as_dict(s.dataset.info.provenance) if s.dataset is not None else {}
    planned = prov.get("planned_steps")
    run = _run_of(s, p)
    if not isinstance(planned, int) and run is not None:
        planned = as_dict(run.config.get("train_config")).get("steps")
    if (note := shortfall(prov.get("step"), planned)) is not None:
        return note
    return next((n for a in s.audits if isinstance(n := get(a.data, "checkpoint", "note"), str) and n), None)


def file_name(s: SynthSet, p: Project) -> str:
    if s.dataset is None:
        return f"{rel(s.path, p.root)} (" + ("changed since it was reported on" if s.changed
                                               else "file not here") + ")"
    return rel(s.path, p.root)


def _model_name(s: SynthSet, p: Project) -> str:
    prov = s.dataset.info.provenance if s.dataset is not None else {}
    arch = prov.get("arch") if isinstance(prov, dict) else None
    run = _run_of(s, p)
    what = f"{str(arch).upper()} model" if isinstance(arch, str) else "synthetic images of unknown origin"
    return what + (f" from {rel(str(run.dir), p.root)}" if run else "")


def set_title(s: SynthSet, p: Project) -> str:
    return f"{_model_name(s, p)}: {file_name(s, p)}"


def audit_verdict(audit: JsonFile | None) -> str | None:
    return audit_report.verdict(audit.data) if audit else None


# FAIL > INCONCLUSIVE > WARN > PASS; a status this version does not know ranks as INCONCLUSIVE:
# the page cannot say it is safe.
_SEVERITY = {"PASS": 0, "WARN": 1, "INCONCLUSIVE": 2, "FAIL": 3}


def most_severe(statuses: Any) -> str | None:
    """The most severe of some verdicts (None: no verdict at all)."""
    found = [v for v in statuses if isinstance(v, str)]
    return max(found, key=lambda v: _SEVERITY.get(v, 2)) if found else None


def set_verdict(s: SynthSet) -> str | None:
    """A file audited more than once (other settings, other folders) shows its most severe verdict."""
    return most_severe(audit_verdict(a) for a in s.audits)


def set_groups(sets: list[SynthSet], p: Project) -> list[tuple[str, list[SynthSet]]]:
    """Synthetic files grouped by the model (checkpoint) they were sampled from, in first-seen order."""
    groups: dict[str, tuple[str, list[SynthSet]]] = {}
    for s in sets:
        prov = s.dataset.info.provenance if s.dataset is not None else {}
        fp = prov.get("checkpoint_fingerprint") if isinstance(prov, dict) else None
        key = fp if isinstance(fp, str) else f"file:{s.key}"
        groups.setdefault(key, (_model_name(s, p), []))[1].append(s)
    return list(groups.values())
