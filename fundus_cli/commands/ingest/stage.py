"""Pass 1: find the photographs, decode each (in worker processes) into staging shards that an
interrupted ingest resumes from, and collect the ones that decoded and pass --min-quality."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fundus_cli.commands.ingest.config import DETECT_MAX_SIDE, IngestConfig, MIN_SIDE, STAGING_DIR, staging_key
from fundus_cli.data import h5
from fundus_cli.data.decode import IMAGE_SUFFIXES, DecodeError, decode_image
from fundus_cli.data.fov import crop_to_fov, detect_fov
from fundus_cli.data.quality import phash, quality_failures, quality_measures
from fundus_cli.errors import FundusError
from fundus_cli.fsio import write_json_atomic
from fundus_cli.progress import track


SHARD_SIZE = 128  # images per staging shard: what an interruption can lose at most


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


@dataclass
class Item:
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


def stage_all(cfg: IngestConfig, rels: list[str]) -> tuple[list[Path], int]:
    """Pass 1: decode every photograph not staged yet (or changed since) into staging shards.
    Returns the shards' metadata files and how many photographs an earlier run had staged."""
    raw, staging = Path(cfg.raw), Path(cfg.out) / STAGING_DIR
    key = staging_key(cfg)
    shard_metas, done = _load_staging(staging, key)
    staging.mkdir(parents=True, exist_ok=True)
    write_json_atomic(staging / "manifest.json", key)
    # A file that changed since it was staged is processed again.
    todo = [rel for rel in rels if rel not in done or done[rel]["stat"] != _stat_key(raw / rel)]
    next_shard = max((int(p.stem.split("-")[1]) for p in shard_metas), default=-1) + 1
    shard_writer = _ShardWriter(staging, start_index=next_shard, size=cfg.size)
    if todo:
        _run_pass1(cfg, todo, shard_writer)
    shard_metas, _ = _load_staging(staging, key)
    return shard_metas, len(rels) - len(todo)


def collect(rels: list[str], shard_metas: list[Path], thresholds: Any,
             rejected: list[dict[str, str]]) -> tuple[list[Item], Counter[str]]:
    """The staged photographs that decoded and pass --min-quality; the others go to `rejected`."""
    items: list[Item] = []
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
        items.append(Item(rel=rel, shard=shard, row=row, sha256=entry["sha256"],
                           phash=int(staged_phash[shard][row]), quality=quality, notes=entry.get("notes", [])))
    return items, conversions
