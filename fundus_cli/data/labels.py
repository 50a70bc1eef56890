"""Labels and patient ids from a CSV file, class subfolders or file names.

CSV files come from clinics and public datasets in many shapes; they are read as
untrusted text: size-limited, every value a string, nothing evaluated.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from fundus_cli.errors import FundusError

# Column names of common public fundus datasets: APTOS (id_code, diagnosis),
# EyePACS/Kaggle DR (image, level), our phantoms (image, label, patient), and generic ones.
ID_COLUMNS = ("image", "id_code", "image_id", "id", "filename", "file", "file_name", "path", "name")
LABEL_COLUMNS = ("label", "diagnosis", "level", "class", "grade", "dr_grade", "target")
PATIENT_COLUMNS = ("patient", "patient_id", "subject", "subject_id")

MAX_CSV_BYTES = 200 * 1024 * 1024


@dataclass
class CsvLabels:
    path: Path
    id_column: str
    label_column: str | None
    patient_column: str | None
    labels: dict[str, str] = field(default_factory=dict)  # key -> raw label text
    patients: dict[str, str] = field(default_factory=dict)  # key -> patient id


def _pick(header: list[str], given: str | None, candidates: tuple[str, ...], what: str, path: Path,
          option: str) -> str | None:
    lower = {h.strip().lower(): h for h in header}
    if given is not None:
        if given in header:
            return given
        if given.lower() in lower:
            return lower[given.lower()]
        raise FundusError(f"{path}: no column named {given!r} for the {what}; the columns are "
                          f"{', '.join(header)}. Fix {option}.")
    for c in candidates:
        if c in lower:
            return lower[c]
    return None


def read_labels_csv(path: Path, *, id_column: str | None = None, label_column: str | None = None,
                    patient_column: str | None = None) -> CsvLabels:
    path = Path(path)
    if not path.is_file():
        raise FundusError(f"{path}: labels file not found. Give an existing CSV with --labels.")
    if path.stat().st_size > MAX_CSV_BYTES:
        raise FundusError(f"{path}: labels file is larger than {MAX_CSV_BYTES >> 20} MB; is it really a label table?")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise FundusError(f"{path}: labels file is not UTF-8 text. Save it as UTF-8 CSV.") from None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise FundusError(f"{path}: labels file is empty. It needs a header row such as 'image,label'.") from None
    except csv.Error as e:
        raise FundusError(f"{path}: cannot parse the CSV header: {e}") from None
    idc = _pick(header, id_column, ID_COLUMNS, "image id", path, "--id-column")
    if idc is None:
        raise FundusError(f"{path}: cannot tell which column names the images (columns: {', '.join(header)}). "
                          "Name it with --id-column.")
    lc = _pick(header, label_column, LABEL_COLUMNS, "label", path, "--label-column")
    pc = _pick(header, patient_column, PATIENT_COLUMNS, "patient id", path, "--patient-column")
    if lc is None and pc is None:
        raise FundusError(f"{path}: found no label column (columns: {', '.join(header)}). "
                          "Name it with --label-column.")
    out = CsvLabels(path=path, id_column=idc, label_column=lc, patient_column=pc)
    idx = {h: i for i, h in enumerate(header)}
    try:
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < len(header):
                row = row + [""] * (len(header) - len(row))
            key = row[idx[idc]].strip()
            if not key:
                raise FundusError(f"{path}, line {lineno}: empty image id in column {idc!r}.")
            if key in out.labels or key in out.patients:
                raise FundusError(f"{path}, line {lineno}: image id {key!r} appears twice. Each image needs one row.")
            if lc is not None:
                value = row[idx[lc]].strip()
                if value:
                    out.labels[key] = value
            if pc is not None:
                value = row[idx[pc]].strip()
                if value:
                    out.patients[key] = value
    except csv.Error as e:
        raise FundusError(f"{path}: cannot parse the CSV: {e}") from None
    return out


def lookup_keys(rel: str) -> list[str]:
    """Keys under which a CSV may name the image at relative path `rel`, most specific first."""
    p = Path(rel)
    keys = [rel, rel.replace("\\", "/"), p.name, p.stem]
    if "." in p.stem:  # e.g. name.orig.jpg listed as name.orig
        keys.append(p.name.split(".")[0])
    seen: set[str] = set()
    return [k for k in keys if not (k in seen or seen.add(k))]


def class_names_from(values: list[str]) -> tuple[str, ...]:
    """Sorted class names; integer grades sort numerically so that grade k gets index k."""
    uniq = sorted(set(values))
    if uniq and all(re.fullmatch(r"-?\d+", v) for v in uniq):
        return tuple(str(i) for i in sorted({int(v) for v in uniq}))
    return tuple(uniq)


def compile_patient_regex(pattern: str) -> re.Pattern[str]:
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise FundusError(f"--patient-regex {pattern!r} is not a valid regular expression: {e}") from None
    return rx


def patient_from_name(rx: re.Pattern[str], name: str) -> str | None:
    """The patient id in a file name: the group named 'patient', else group 1, else the match."""
    m = rx.search(name)
    if m is None:
        return None
    if "patient" in rx.groupindex:
        return m.group("patient")
    if rx.groups >= 1:
        return m.group(1)
    return m.group(0)
