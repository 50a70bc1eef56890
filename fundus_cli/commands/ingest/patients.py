"""Labels and patients of the staged photographs: from a CSV, class folders or --patient-regex, and
their pseudonyms under --pseudonymize."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


from fundus_cli.commands.ingest.config import IngestConfig, LABELS_FROM_FOLDERS
from fundus_cli.commands.ingest.stage import Item
from fundus_cli.data.labels import class_names_from, lookup_keys, patient_from_name, read_labels_csv
from fundus_cli.errors import FundusError


def pseudonym(salt: str, kind: str, value: str) -> str:
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


def labels_and_patients(cfg: IngestConfig, items: list[Item], rx: Any,
                         notes: list[str]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Give every item its label and patient (from the CSV, the folders or --patient-regex); returns
    the class names and the description of where the labels came from."""
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
    return names, label_desc
