"""`fundus ingest`: a folder of photographs -> train.h5, holdout.h5 and ingest-report.json.

Two passes. Pass 1 decodes, finds the field of view, crops, measures and hashes every
photograph on all cores and stages the results in small shard files under
`<out>/.ingest-staging/`; each shard is committed atomically, so an interrupted ingest
picks up where it stopped. Pass 2 applies labels, patients, quality limits and duplicate
groups, splits by patient and streams the images into the two final files.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import secrets
import shutil
import stat
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fundus_cli import __version__
from fundus_cli.data import h5
from fundus_cli.data.decode import IMAGE_SUFFIXES, DecodeError, decode_image
from fundus_cli.data.fov import crop_to_fov, detect_fov
from fundus_cli.data.labels import (class_names_from, compile_patient_regex, lookup_keys, patient_from_name,
                                    read_labels_csv)
from fundus_cli.data.quality import (DUP_CORRELATION, detail_signature, duplicate_groups, parse_min_quality, phash,
                                     quality_failures, quality_measures)
from fundus_cli.data.split import split_holdout, split_units
from fundus_cli.errors import FundusError
from fundus_cli.fsio import folder_lock, write_csv_atomic, write_json_atomic
from fundus_cli.schemas.ingest_report import INGEST_REPORT, RejectedFile
from fundus_cli.progress import track

STAGING_DIR = ".ingest-staging"
SHARD_SIZE = 128  # images per staging shard: what an interruption can lose at most
DETECT_MAX_SIDE = 1024  # field-of-view detection needs no more pixels than this
MIN_SIDE = 32
LABELS_FROM_FOLDERS = "folders"


@dataclass(frozen=True)
class IngestConfig:
    raw: Path  # folder of photographs, searched recursively
    out: Path = Path("data")  # where train.h5, holdout.h5 and ingest-report.json go
    size: int = 256  # side of the stored square images, pixels
    labels: str | None = None  # CSV path, "folders" (class subfolders), or None: raw/labels.csv if present
    id_column: str | None = None  # CSV column naming the image (default: recognised names)
    label_column: str | None = None  # CSV column with the class (default: recognised names)
    patient_column: str | None = None  # CSV column with the patient id
    patient_regex: str | None = None  # regex on the file name; group 'patient' or group 1 is the id
    holdout_fraction: float = 0.2  # share of images (by patient) held out, never trained on
    seed: int = 0  # seed of the train/holdout split
    workers: int = 0  # decoding processes; 0 = all cores
    pseudonymize: bool = False  # store salted hashes instead of file names and patient ids
    salt: str | None = None  # salt for --pseudonymize (default: random, saved in the mapping file)
    pseudonym_map: Path | None = None  # where the pseudonym mapping goes (default: <out>/pseudonym-map.csv)
    min_quality: str | None = None  # e.g. "brightness=0.08,sharpness=20"
    dup_threshold: int = 4  # perceptual-hash bits that may differ between near duplicates
    duplicates: str = "keep"  # keep | first | drop-conflicts: what to do with copies of one photograph
    force: bool = False  # overwrite existing outputs
    reduced_decode: bool = True  # decode JPEGs at reduced scale when the target is small


@dataclass
class IngestResult:
    train: Path
    holdout: Path
    report: Path
    n_train: int
    n_holdout: int
    n_found: int
    n_rejected: int
    n_duplicate_groups: int
    class_names: tuple[str, ...]
    counts: dict[str, dict[str, int]]  # split -> class name -> images
    notes: list[str] = field(default_factory=list)
    pseudonym_map: Path | None = None
    seconds: float = 0.0
    resumed_images: int = 0
    n_label_conflicts: int = 0  # duplicate groups whose copies carry different labels
    n_patient_conflicts: int = 0  # duplicate groups whose copies carry different patient ids
    n_dropped_duplicates: int = 0  # copies left out by --duplicates first / drop-conflicts


# ---------------------------------------------------------------------------------------
# Pass 1: per-file work (runs in worker processes)


def _worker_init() -> None:
    # Each process is one decoder; OpenCV's own thread pool would only oversubscribe cores.
    cv2.setNumThreads(1)


def process_file(task: tuple[str, str, int, bool]) -> dict[str, Any]:
    """Decode, detect, crop, measure one file. Never raises for a bad file: returns the reason."""
    abs_path, rel, size, reduced = task
    stat_key = _stat_key(Path(abs_path))
    try:
        decoded = decode_image(Path(abs_path), target=size, reduced=reduced)
        img = decoded.image
        h, w = img.shape[:2]
        if min(h, w) * 1.0 / decoded.scale < MIN_SIDE:
            raise DecodeError(f"image too small ({decoded.original_size[0]}x{decoded.original_size[1]} px); "
                              f"fundus-cli needs at least {MIN_SIDE} px")
        factor = min(1.0, DETECT_MAX_SIDE / max(h, w))
        small = img if factor >= 1.0 else cv2.resize(img, (round(w * factor), round(h * factor)),
                                                     interpolation=cv2.INTER_AREA)
        circle = detect_fov(small)
        if circle is None:
            raise DecodeError("no fundus field of view found (no round bright disc on a darker border)")
        if factor < 1.0:
            circle = circle.scaled(1.0 / factor)
        diameter_px = 2 * circle.r / decoded.scale
        if 2 * circle.r < size / 4:
            raise DecodeError(f"field of view only {diameter_px:.0f} px across, too small for --size {size}; "
                              "use a smaller --size")
        notes = list(decoded.notes)
        if 2 * circle.r < size:
            notes.append(f"upscaled: field of view {2 * circle.r:.0f} px across, stored at {size} px")
        crop, mask, out_circle = crop_to_fov(img, circle, size=size)
        full_disc = np.pi * (size / 2) ** 2
        quality = quality_measures(crop, mask, fov_fraction=min(1.0, float(mask.sum()) / full_disc))
        return {
            "rel": rel, "ok": True, "stat": stat_key, "notes": notes,
            "image": crop, "mask": mask.astype(np.uint8),
            "circle": (float(out_circle.cx), float(out_circle.cy), float(out_circle.r)),
            "quality": quality, "phash": phash(crop), "sha256": decoded.sha256,
        }
    except DecodeError as e:
        return {"rel": rel, "ok": False, "stat": stat_key, "reason": str(e)}
    except Exception as e:  # a decoder crash on one odd file must not stop ten thousand others
        return {"rel": rel, "ok": False, "stat": stat_key, "reason": f"unreadable ({type(e).__name__}: {e})"}


def _stat_key(path: Path) -> list[int]:
    try:
        st = path.stat()
        return [int(st.st_size), int(st.st_mtime_ns)]
    except OSError:
        return [-1, -1]


# ---------------------------------------------------------------------------------------
# Discovery


def find_files(raw: Path) -> tuple[list[str], list[str], list[dict[str, str]]]:
    """(image paths, ignored non-image files, problems) relative to raw, sorted; hidden entries skipped.

    Problems are entries that look like photographs but cannot be ingested, with the reason,
    for the report: a name that is not valid UTF-8 (HDF5 stores text as UTF-8, and one such
    name must not block a whole folder), a named pipe or device called *.jpg (reading it would
    wait forever), a subfolder that cannot be listed (its photographs would vanish silently).
    """
    images: list[str] = []
    ignored: list[str] = []
    problems: list[dict[str, str]] = []

    def unreadable(e: OSError) -> None:
        rel = display_name(Path(e.filename).relative_to(raw).as_posix()) if e.filename else "?"
        problems.append({"source": rel + "/", "reason": f"folder could not be read ({e.strerror or e}): the "
                                                        "photographs in it are not in the dataset; fix its permissions"})

    for dirpath, dirnames, filenames in os.walk(raw, onerror=unreadable, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            rel = Path(dirpath, name).relative_to(raw).as_posix()
            if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                ignored.append(display_name(rel))
                continue
            if display_name(rel) != rel:
                problems.append({"source": display_name(rel), "reason": "file name is not valid UTF-8 (undecodable "
                                 "bytes shown as \\xNN): rename the file"})
                continue
            try:
                mode = os.stat(Path(dirpath, name)).st_mode
            except OSError as e:
                problems.append({"source": rel, "reason": f"cannot read file: {e.strerror or e}"})
                continue
            if not stat.S_ISREG(mode):
                kind = "a named pipe" if stat.S_ISFIFO(mode) else "a device or socket"
                problems.append({"source": rel, "reason": f"not a regular file ({kind}): not a photograph"})
                continue
            images.append(rel)
    return sorted(images), sorted(ignored), sorted(problems, key=lambda p: p["source"])


def display_name(rel: str) -> str:
    """`rel` as valid text: bytes that are not UTF-8 (kept by Python as surrogates) become \\xNN."""
    try:
        rel.encode("utf-8")
        return rel
    except UnicodeEncodeError:
        return os.fsencode(rel).decode("utf-8", errors="backslashreplace")


# ---------------------------------------------------------------------------------------
# Staging: shards that make an interrupted ingest resumable


def _staging_key(cfg: IngestConfig) -> dict[str, Any]:
    return {"size": cfg.size, "reduced_decode": cfg.reduced_decode, "schema": h5.SCHEMA_VERSION,
            "fundus_cli": __version__, "raw": str(cfg.raw.resolve())}


def _load_staging(staging: Path, key: dict[str, Any]) -> tuple[list[Path], dict[str, dict[str, Any]]]:
    """Completed shards and what each processed file became, if the staging matches `key`.

    A shard whose JSON and HDF5 parts do not describe each other (e.g. written by two ingests
    that ran at once before the folder lock existed, or an HDF5 part replaced by hand) is
    deleted, so its files are processed again instead of being attached to the wrong image.
    """
    manifest = staging / "manifest.json"
    if not manifest.exists():
        return [], {}
    try:
        saved = json.loads(manifest.read_text())
    except (OSError, ValueError):
        saved = None
    if saved != key:
        shutil.rmtree(staging, ignore_errors=True)
        return [], {}
    shards: list[Path] = []
    done: dict[str, dict[str, Any]] = {}
    for meta_path in sorted(staging.glob("shard-*.json")):
        h5_path = meta_path.with_suffix(".h5")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = None
        if not _shard_verifies(meta, h5_path):
            meta_path.unlink(missing_ok=True)
            h5_path.unlink(missing_ok=True)
            continue
        shards.append(meta_path)
        for entry in meta["files"]:
            done[entry["rel"]] = entry
    return shards, done


def _shard_verifies(meta: Any, h5_path: Path) -> bool:
    """Do a shard's JSON and HDF5 parts come from the same writer and list the same files?"""
    try:
        files, accepted = meta["files"], int(meta["accepted"])
        if not isinstance(files, list) or not all(isinstance(e, dict) and isinstance(e.get("rel"), str)
                                                  and isinstance(e.get("ok"), bool) for e in files):
            return False
        rows = [(e["row"], e["rel"]) for e in files if e["ok"]]
        if sorted(r for r, _ in rows) != list(range(accepted)):
            return False
        if accepted == 0:
            return True
        if not h5_path.is_file():
            return False
        with h5.open_dataset(h5_path) as r:
            if r.info.count != accepted or r.info.fingerprint != meta.get("fingerprint"):
                return False
            sources = r.sources()
        return all(sources[row] == rel for row, rel in rows)
    except (FundusError, KeyError, TypeError, ValueError, IndexError, OSError):
        return False


class _ShardWriter:
    """Appends pass-1 results to numbered shards; each shard is committed when full."""

    def __init__(self, staging: Path, start_index: int, size: int) -> None:
        self.staging = staging
        self.index = start_index
        self.size = size
        self.writer: h5.DatasetWriter | None = None
        self.files: list[dict[str, Any]] = []
        self.accepted = 0

    def add(self, result: dict[str, Any]) -> None:
        entry = {"rel": result["rel"], "stat": result["stat"], "ok": result["ok"]}
        if result["ok"]:
            if self.writer is None:
                self.writer = h5.DatasetWriter(self._path(".h5"), image_size=self.size, split="staging")
                self.writer.__enter__()
            self.writer.append(h5.Record(
                image=result["image"], mask=result["mask"], circle=result["circle"], source=result["rel"],
                patient="", phash=result["phash"], quality=result["quality"]))
            entry.update(row=self.accepted, notes=result["notes"], sha256=result["sha256"])
            self.accepted += 1
        else:
            entry["reason"] = result["reason"]
        self.files.append(entry)
        if len(self.files) >= SHARD_SIZE:
            self.commit()

    def _path(self, suffix: str) -> Path:
        return self.staging / f"shard-{self.index:06d}{suffix}"

    def commit(self) -> None:
        if not self.files:
            return
        fingerprint = None
        if self.writer is not None:
            self.writer.__exit__(None, None, None)
            fingerprint = self.writer.fingerprint
            self.writer = None
        # The JSON is written last: it is the mark that the shard is complete. The HDF5 part's
        # fingerprint in it ties the two parts together (checked on resume).
        write_json_atomic(self._path(".json"), {"accepted": self.accepted, "fingerprint": fingerprint,
                                                "files": self.files})
        self.index += 1
        self.files = []
        self.accepted = 0

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None)
            self.writer = None


def _run_pass1(cfg: IngestConfig, todo: list[str], shard_writer: _ShardWriter) -> None:
    tasks = [(str(cfg.raw / rel), rel, cfg.size, cfg.reduced_decode) for rel in todo]
    workers = cfg.workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(tasks)))
    try:
        with track("decoding", len(tasks)) as advance:
            if workers == 1:
                for t in tasks:
                    shard_writer.add(process_file(t))
                    advance()
            else:
                # spawn, not fork: forking a process that holds OpenCV or rich threads can hang.
                ctx = multiprocessing.get_context("spawn")
                with ctx.Pool(workers, initializer=_worker_init) as pool:
                    for result in pool.imap_unordered(process_file, tasks, chunksize=2):
                        shard_writer.add(result)
                        advance()
        shard_writer.commit()
    except BaseException:
        shard_writer.abort()
        raise


# ---------------------------------------------------------------------------------------
# Pass 2


@dataclass
class _Item:
    rel: str
    shard: Path
    row: int
    sha256: str
    phash: int
    quality: dict[str, float]
    notes: list[str]
    label: int = -1
    patient: str = ""
    patient_known: bool = False  # from the CSV or --patient-regex, not the one-image-one-patient fallback


def _pseudonym(salt: str, kind: str, value: str) -> str:
    digest = hashlib.sha256(f"{salt}\x00{kind}\x00{value}".encode()).hexdigest()
    return f"{kind[0]}-{digest[:16]}"


def _resolve_labels(cfg: IngestConfig, rels: list[str], notes: list[str]) -> tuple[
        tuple[str, ...], dict[str, str], dict[str, str], dict[str, Any]]:
    """class names, rel -> class name, rel -> patient (from CSV), and a description for the report."""
    source = cfg.labels
    if source is None and (cfg.raw / "labels.csv").is_file():
        source = str(cfg.raw / "labels.csv")
        notes.append(f"labels: using {source} (found in the input folder; --labels overrides)")
    if source is None:
        if cfg.patient_column:
            raise FundusError("--patient-column needs a CSV: give it with --labels FILE")
        return (), {}, {}, {"source": None}
    if source == LABELS_FROM_FOLDERS:
        by_rel = {rel: rel.split("/")[0] for rel in rels if "/" in rel}
        loose = [rel for rel in rels if "/" not in rel]
        if loose:
            notes.append(f"labels: {len(loose)} images lie directly in {cfg.raw}, not in a class folder: label unknown")
        names = class_names_from(list(by_rel.values()))
        return names, by_rel, {}, {"source": "folders"}
    table = read_labels_csv(Path(source), id_column=cfg.id_column, label_column=cfg.label_column,
                            patient_column=cfg.patient_column)
    by_rel: dict[str, str] = {}
    patients: dict[str, str] = {}
    used: set[str] = set()
    for rel in rels:
        for key in lookup_keys(rel):
            if key in table.labels or key in table.patients:
                if key in table.labels:
                    by_rel[rel] = table.labels[key]
                if key in table.patients:
                    patients[rel] = table.patients[key]
                used.add(key)
                break
    unmatched_rows = len((set(table.labels) | set(table.patients)) - used)
    missing = [rel for rel in rels if rel not in by_rel]
    if table.label_column and rels and not by_rel:
        raise FundusError(f"{table.path}: none of its ids ({table.id_column!r} column, e.g. "
                          f"{next(iter(table.labels), '?')!r}) matches an image file name in {cfg.raw} "
                          f"(e.g. {rels[0]!r}). Fix --id-column or the CSV.")
    if missing and table.label_column:
        notes.append(f"labels: {len(missing)} images have no row in {table.path}: label unknown (-1)")
    if unmatched_rows:
        notes.append(f"labels: {unmatched_rows} rows of {table.path} name no image found in {cfg.raw}")
    names = class_names_from(list(by_rel.values()))
    desc = {"source": str(table.path), "id_column": table.id_column, "label_column": table.label_column,
            "patient_column": table.patient_column, "rows_without_image": unmatched_rows,
            "images_without_row": len(missing) if table.label_column else None}
    return names, by_rel, patients, desc


def ingest(cfg: IngestConfig) -> IngestResult:
    t0 = time.perf_counter()
    raw, out = Path(cfg.raw), Path(cfg.out)
    _check_config(cfg)
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
    staging = out / STAGING_DIR
    key = _staging_key(cfg)
    shard_metas, done = _load_staging(staging, key)
    staging.mkdir(parents=True, exist_ok=True)
    write_json_atomic(staging / "manifest.json", key)
    # A file that changed since it was staged is processed again.
    todo = [rel for rel in rels if rel not in done or done[rel]["stat"] != _stat_key(raw / rel)]
    resumed = len(rels) - len(todo)
    next_shard = max((int(p.stem.split("-")[1]) for p in shard_metas), default=-1) + 1
    shard_writer = _ShardWriter(staging, start_index=next_shard, size=cfg.size)
    if todo:
        _run_pass1(cfg, todo, shard_writer)
    shard_metas, _ = _load_staging(staging, key)

    notes: list[str] = []
    if resumed:
        notes.append(f"resumed: {resumed} images were already processed by an interrupted ingest")
    rejected: list[dict[str, str]] = list(problems)
    items: list[_Item] = []
    conversions: Counter[str] = Counter()
    # Re-read each file's newest entry (a re-processed file appears in two shards).
    latest: dict[str, tuple[Path, dict[str, Any]]] = {}
    for meta_path in shard_metas:
        for entry in json.loads(meta_path.read_text())["files"]:
            latest[entry["rel"]] = (meta_path.with_suffix(".h5"), entry)
    staged_quality: dict[Path, dict[str, np.ndarray]] = {}
    staged_phash: dict[Path, np.ndarray] = {}
    for rel in rels:
        shard, entry = latest[rel]
        if not entry["ok"]:
            rejected.append({"source": rel, "reason": entry["reason"]})
            continue
        if shard not in staged_quality:
            with h5.open_dataset(shard) as r:
                staged_quality[shard] = r.quality()
                staged_phash[shard] = r.phashes()
        row = entry["row"]
        quality = {q: float(v[row]) for q, v in staged_quality[shard].items()}
        failed = quality_failures(quality, thresholds)
        if failed:
            rejected.append({"source": rel, "reason": "below --min-quality: " + "; ".join(failed)})
            continue
        for n in entry.get("notes", []):
            conversions[n.split(":")[0]] += 1
        items.append(_Item(rel=rel, shard=shard, row=row, sha256=entry["sha256"],
                           phash=int(staged_phash[shard][row]), quality=quality, notes=entry.get("notes", [])))

    if not items:
        report = _report(cfg, raw, rels, ignored, rejected, [], (), {}, {}, notes, conversions, [], {}, t0,
                         resumed, None, None)
        INGEST_REPORT.write(report_path, report)
        reasons = Counter(r["reason"].split(" (")[0].split(":")[0] for r in rejected).most_common(3)
        raise FundusError(f"{raw}: none of the {len(rels)} images is usable ({'; '.join(f'{c}x {r}' for r, c in reasons)}). "
                          f"Every reason is listed in {report_path}.")

    names, label_by_rel, csv_patients, label_desc = _resolve_labels(cfg, [it.rel for it in items], notes)
    index_of = {n: i for i, n in enumerate(names)}
    unmatched_regex = 0
    for it in items:
        it.label = index_of.get(label_by_rel.get(it.rel, ""), -1)
        patient = csv_patients.get(it.rel)
        if patient is None and rx is not None:
            patient = patient_from_name(rx, Path(it.rel).name)
            if patient is None:
                unmatched_regex += 1
        it.patient = patient if patient is not None else f"image:{it.rel}"
        it.patient_known = patient is not None
    if rx is not None and unmatched_regex == len(items):
        raise FundusError(f"--patient-regex {cfg.patient_regex!r} matches none of the file names "
                          f"(e.g. {Path(items[0].rel).name!r}). Fix the pattern.")
    if unmatched_regex:
        notes.append(f"patients: --patient-regex matched no patient in {unmatched_regex} file names; "
                     "each of those images counts as its own patient")
    if rx is None and not csv_patients:
        notes.append("patients: unknown, so each image counts as its own patient; give --patient-column or "
                     "--patient-regex (e.g. '(\\d+)_(left|right)') so that both eyes of a patient stay on one side")

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
    except BaseException:
        for r in readers.values():
            r.close()
        raise
    conflicts = _duplicate_conflicts(items, groups, names)
    keep = _apply_duplicate_policy(cfg.duplicates, items, groups, conflicts, rejected)
    n_dropped = int((~keep).sum())
    if n_dropped == len(items):
        raise FundusError(f"--duplicates {cfg.duplicates} left no image: every one was a conflicting copy. Use "
                          "--duplicates keep and fix the labels (see the duplicates in the ingest report).")
    if n_dropped:
        items = [it for it, k in zip(items, keep) if k]
        groups = groups[keep]
        for r in readers.values():
            r.close()
        readers.clear()
        signature.cache_clear()
    if conflicts["label"] or conflicts["patient"]:
        notes.append(_conflict_note(conflicts, cfg.duplicates, n_dropped))
    units = split_units([it.patient for it in items], groups)
    labels = np.array([it.label for it in items])
    is_holdout = split_holdout(units, labels, holdout_fraction=cfg.holdout_fraction, seed=cfg.seed)
    dup_members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        dup_members[int(g)].append(i)
    dup_list = [[items[i].rel for i in m] for m in dup_members.values() if len(m) > 1]
    side_of = {it.rel: bool(is_holdout[i]) for i, it in enumerate(items)}

    salt = cfg.salt or (secrets.token_hex(16) if cfg.pseudonymize else "")
    mapping: list[tuple[str, str, str]] = []

    def public(kind: str, value: str) -> str:
        if not cfg.pseudonymize:
            return value
        p = _pseudonym(salt, kind, value)
        mapping.append((kind, p, value))
        return p

    split_id = uuid.uuid4().hex
    options = _options_for_file(cfg)
    counts: dict[str, dict[str, int]] = {}
    fingerprints: dict[str, str] = {}
    with track("writing", len(items)) as advance:
        try:
            for split, path, want in (("train", train_path, False), ("holdout", holdout_path, True)):
                chosen = [i for i in range(len(items)) if bool(is_holdout[i]) == want]
                provenance = {"split_id": split_id, "holdout_fraction": cfg.holdout_fraction, "seed": cfg.seed,
                              "source_folder": "(pseudonymized)" if cfg.pseudonymize else str(raw),
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

    if cfg.pseudonymize:
        _write_mapping(map_path, salt, mapping)
    report = _report(cfg, raw, rels, ignored, rejected, items, names, counts, label_desc, notes, conversions,
                     dup_list, fingerprints, t0, resumed, is_holdout, map_path if cfg.pseudonymize else None,
                     conflicts=conflicts, dropped=n_dropped,
                     public=public)
    INGEST_REPORT.write(report_path, report)
    shutil.rmtree(staging, ignore_errors=True)
    return IngestResult(
        train=train_path, holdout=holdout_path, report=report_path,
        n_train=int((~is_holdout).sum()), n_holdout=int(is_holdout.sum()), n_found=len(rels),
        n_rejected=len(rejected), n_duplicate_groups=len(dup_list), class_names=names, counts=counts,
        n_label_conflicts=len(conflicts["label"]), n_patient_conflicts=len(conflicts["patient"]),
        n_dropped_duplicates=n_dropped,
        notes=notes, pseudonym_map=map_path if cfg.pseudonymize else None,
        seconds=time.perf_counter() - t0, resumed_images=resumed,
    )


DUPLICATE_POLICIES = ("keep", "first", "drop-conflicts")


def _duplicate_conflicts(items: list[_Item], groups: np.ndarray,
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


def _apply_duplicate_policy(policy: str, items: list[_Item], groups: np.ndarray,
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


def _check_config(cfg: IngestConfig) -> None:
    raw = Path(cfg.raw)
    if not raw.exists():
        raise FundusError(f"{raw}: folder not found. Give the folder that holds the photographs.")
    if not raw.is_dir():
        raise FundusError(f"{raw} is a file, not a folder. Give the folder that holds the photographs.")
    if not 32 <= cfg.size <= 4096:
        raise FundusError(f"--size {cfg.size}: choose a side between 32 and 4096 pixels (default 256).")
    if not 0.0 <= cfg.holdout_fraction < 1.0:
        raise FundusError(f"--holdout-fraction {cfg.holdout_fraction}: choose a value in [0, 1) (default 0.2).")
    if cfg.workers < 0:
        raise FundusError(f"--workers {cfg.workers}: give 0 (all cores) or a positive number.")
    if cfg.duplicates not in DUPLICATE_POLICIES:
        raise FundusError(f"--duplicates {cfg.duplicates}: choose one of {', '.join(DUPLICATE_POLICIES)}.")
    if not 0 <= cfg.dup_threshold <= 32:
        raise FundusError(f"--dup-threshold {cfg.dup_threshold}: choose 0..32 bits (default 4).")
    if cfg.labels not in (None, LABELS_FROM_FOLDERS) and not Path(cfg.labels).is_file():
        raise FundusError(f"{cfg.labels}: labels file not found. Give a CSV file, or --labels folders "
                          "to take classes from subfolder names.")


def _options_for_file(cfg: IngestConfig) -> dict[str, Any]:
    opts = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    opts["salt"] = None  # the salt would let anyone test guesses of patient names
    if cfg.pseudonymize:
        for k in ("raw", "labels", "pseudonym_map"):
            opts[k] = "(pseudonymized)" if opts[k] else None
    return opts


def _count_by_label(labels: list[int], names: tuple[str, ...]) -> dict[str, int]:
    c = Counter(labels)
    out = {name: c.get(i, 0) for i, name in enumerate(names)}
    if c.get(-1):
        out["unknown"] = c[-1]
    return out


def _write_mapping(path: Path, salt: str, mapping: list[tuple[str, str, str]]) -> None:
    rows = [("kind", "pseudonym", "original"), *sorted(set(mapping))]
    write_csv_atomic(path, rows, preamble=f"# salt={salt}\n# keep this file with the data owner: it turns "
                                          "pseudonyms back into names\n")
    os.chmod(path, 0o600)


def _report(cfg: IngestConfig, raw: Path, rels: list[str], ignored: list[str], rejected: list[dict[str, str]],
            items: list[_Item], names: tuple[str, ...], counts: dict[str, dict[str, int]],
            label_desc: dict[str, Any], notes: list[str], conversions: Counter[str], dup_list: list[list[str]],
            fingerprints: dict[str, str], t0: float, resumed: int, is_holdout: np.ndarray | None,
            map_path: Path | None, public: Any = None, conflicts: dict[str, list[Any]] | None = None,
            dropped: int = 0) -> dict[str, Any]:
    def name(rel: str) -> str:
        return public("source", rel) if public is not None else (rel if not cfg.pseudonymize else "(pseudonymized)")

    # With --pseudonymize nothing identifying may leave: folder and labels-file paths (which may
    # carry a patient's name) are replaced in every free-text field, and a rejected file's own
    # name in its reason by its pseudonym.
    hidden: list[tuple[str, str]] = []
    if cfg.pseudonymize:
        for path, placeholder in ((raw, "<input folder>"),
                                  *(((Path(cfg.labels), "<labels file>"),) if cfg.labels not in
                                    (None, LABELS_FROM_FOLDERS) else ())):
            for form in {str(path), path.as_posix(), str(path.resolve()), os.path.abspath(path)}:
                hidden.append((form, placeholder))
        hidden.sort(key=lambda h: -len(h[0]))  # longest first: a resolved path contains the short one

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
        "options": _options_for_file(cfg),
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
