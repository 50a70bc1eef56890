"""Issue 12 items 9 and 10: no spreadsheet formulas in the CSVs we write; nothing identifying in
the outputs of `ingest --pseudonymize`."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import h5py
import pytest

from fundus_cli.fsio import csv_cell

FORMULA = "=cmd|' /C calc'!A0"


@pytest.mark.parametrize("cell, safe", [(FORMULA, "'" + FORMULA), ("+A1+1", "'+A1+1"), ("-2+cmd|x", "'-2+cmd|x"),
                                        ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"),
                                        ("=1", "'=1"), ("-0.25", "-0.25"), ("-6 8", "-6 8"), ("1e-3", "1e-3"),
                                        ("photo.jpg", "photo.jpg")])
def test_csv_cell_neutralises_formulas_only(cell: str, safe: str) -> None:
    assert csv_cell(cell) == safe


def test_flagged_csv_has_no_formula_cells(cli, tiny_data: Path, tmp_path: Path) -> None:
    train = tmp_path / "train.h5"
    shutil.copy(tiny_data / "train.h5", train)
    with h5py.File(train, "r+") as f:
        for i in range(f["patient"].shape[0]):
            f["patient"][i] = FORMULA
            f["source"][i] = f"@evil-{i}.jpg"
    out = tmp_path / "audit"
    r = cli("audit-privacy", "--train", train, "--holdout", tiny_data / "holdout.h5", "--synthetic", train,
            "--out", out, "--embeddings", "pixel", "--size", "32", "--device", "cpu")
    assert r.code in (0, 1, 3), r.err
    rows = list(csv.reader(open(out / "flagged.csv", newline="")))
    assert len(rows) > 1, "the copies should have been flagged"
    cells = [c for row in rows[1:] for c in row]
    assert "'" + FORMULA in cells
    assert not [c for c in cells if c[:1] in ("=", "+", "@", "\t", "\r")]
    assert not [c for c in cells if c.startswith("-") and not re.fullmatch(r"[-+0-9.eE ]+", c)]


def test_pseudonym_map_neutralises_formulas(cli, raw_copy: Path, tmp_path: Path) -> None:
    name = "=cmd|' -C calc'!A0.jpg"  # a file name is untrusted text too
    first = sorted((raw_copy / "images").glob("*.jpg"))[0]
    shutil.move(first, raw_copy / name)
    out = tmp_path / "data"
    r = cli("ingest", raw_copy, "--out", out, "--size", "32", "--workers", "1", "--pseudonymize", "--labels",
            "folders")
    assert r.code == 0, r.err
    lines = (out / "pseudonym-map.csv").read_text().splitlines()
    cells = [c for row in csv.reader(ln for ln in lines if not ln.startswith("#")) for c in row]
    assert "'" + name in cells
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@")]


def _all_text(path: Path) -> str:
    """Every attribute and string of an HDF5 file, and the bytes of any other file."""
    if path.suffix != ".h5":
        return path.read_text(errors="replace")
    parts: list[str] = []
    with h5py.File(path, "r") as f:
        parts += [str(v) for v in f.attrs.values()]

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "OS":
                parts.extend(v.decode() if isinstance(v, bytes) else str(v) for v in obj[:])

        f.visititems(visit)
    return "\n".join(parts)


def test_pseudonymize_leaks_no_folder_or_labels_path(cli, raw_copy: Path, tmp_path: Path) -> None:
    raw = tmp_path / "Jane Doe scans"
    raw_copy.rename(raw)
    labels_dir = tmp_path / "John Smith"
    labels_dir.mkdir()
    labels = labels_dir / "labels.csv"
    text = (raw / "labels.csv").read_text()
    labels.write_text(text + "not-here.jpg,healthy,p999,left,0\n")  # a row with no image: a note
    (raw / "labels.csv").unlink()
    (raw / "images" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # a rejected file
    out = tmp_path / "data"
    r = cli("ingest", raw, "--out", out, "--size", "32", "--workers", "1", "--pseudonymize", "--labels", labels,
            "--pseudonym-map", tmp_path / "private" / "map.csv")
    assert r.code == 0, r.err
    report = json.loads((out / "ingest-report.json").read_text())
    assert report["notes"] and report["rejected"]
    for path in sorted(out.iterdir()):
        content = _all_text(path)
        for secret in ("Jane Doe", "John Smith", "broken.jpg", "images/"):
            assert secret not in content, (path.name, secret)
