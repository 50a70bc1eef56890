"""Issue 15: one photograph filed under two labels or two patient ids is found and reported."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

from fundus_cli.cli import app
from fundus_cli.data import h5
from fundus_cli.commands.ingest import IngestConfig, ingest
from fundus_cli.errors import FundusError


def _plant(raw: Path) -> dict[str, str]:
    """Copy two photographs under other names, other labels and another patient: one exactly, one
    re-saved smaller as PNG (a near duplicate); a third copy keeps its label and patient."""
    rows = list(csv.DictReader(open(raw / "labels.csv", newline="")))
    by_label: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    a, b = sorted(by_label)[:2]
    exact_src, near_src = by_label[a][0], by_label[a][1]
    shutil.copy(raw / exact_src["image"], raw / "images" / "9000_left.jpg")
    img = cv2.imread(str(raw / near_src["image"]))
    cv2.imwrite(str(raw / "images" / "9001_right.png"), cv2.resize(img, (img.shape[1] * 3 // 4, img.shape[0] * 3 // 4),
                                                                    interpolation=cv2.INTER_AREA))
    same_src = by_label[b][0]
    shutil.copy(raw / same_src["image"], raw / "images" / "0000_copy.jpg")
    extra = [{**exact_src, "image": "images/9000_left.jpg", "label": b, "patient": "900"},
             {**near_src, "image": "images/9001_right.png", "label": b, "patient": "901"},
             {**same_src, "image": "images/0000_copy.jpg"}]
    with open(raw / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows + extra)
    return {"exact": exact_src["image"], "near": near_src["image"], "same": same_src["image"], "a": a, "b": b}


def _cfg(raw: Path, out: Path, **kw: object) -> IngestConfig:
    return IngestConfig(raw=raw, out=out, **{"size": 64, "workers": 1, **kw})  # type: ignore[arg-type]


def test_conflicting_labels_and_patients_are_listed_and_kept_by_default(raw_copy: Path, tmp_path: Path) -> None:
    p = _plant(raw_copy)
    res = ingest(_cfg(raw_copy, tmp_path / "d"))
    assert res.n_label_conflicts == 2 and res.n_patient_conflicts == 2 and res.n_dropped_duplicates == 0
    assert res.n_train + res.n_holdout == 15  # keep: today's behaviour
    dup = json.loads(res.report.read_text())["duplicates"]
    got = {frozenset(c["files"]): c for c in dup["label_conflicts"]}
    exact = got[frozenset({p["exact"], "images/9000_left.jpg"})]
    near = got[frozenset({p["near"], "images/9001_right.png"})]
    for c in (exact, near):
        assert sorted(c["labels"]) == sorted([p["a"], p["b"]]) and len(set(c["patients"])) == 2
    assert {frozenset(c["files"]) for c in dup["patient_conflicts"]} == set(got)
    assert frozenset({p["same"], "images/0000_copy.jpg"}) not in got  # a plain copy is no conflict
    assert any("different labels" in n and "--duplicates" in n for n in res.notes)


def test_drop_conflicts_leaves_out_every_mislabelled_copy(raw_copy: Path, tmp_path: Path) -> None:
    p = _plant(raw_copy)
    res = ingest(_cfg(raw_copy, tmp_path / "d", duplicates="drop-conflicts"))
    assert res.n_dropped_duplicates == 4 and res.n_train + res.n_holdout == 11
    sources = set()
    for path in (res.train, res.holdout):
        with h5.open_dataset(path) as r:
            sources |= set(r.sources())
    assert not sources & {p["exact"], p["near"], "images/9000_left.jpg", "images/9001_right.png"}
    assert {p["same"], "images/0000_copy.jpg"} <= sources
    rejected = json.loads(res.report.read_text())["rejected"]
    assert sum("conflicting labels" in r["reason"] for r in rejected) == 4


def test_first_keeps_one_copy_of_every_photograph(raw_copy: Path, tmp_path: Path) -> None:
    _plant(raw_copy)
    res = ingest(_cfg(raw_copy, tmp_path / "d", duplicates="first"))
    assert res.n_dropped_duplicates == 3 and res.n_train + res.n_holdout == 12
    for path in (res.train, res.holdout):
        with h5.open_dataset(path) as r:
            groups = list(r.dup_groups())
            assert len(groups) == len(set(groups))


def test_unknown_policy_is_refused(raw_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(FundusError, match="--duplicates"):
        ingest(_cfg(raw_copy, tmp_path / "d", duplicates="maybe"))


def test_cli_summary_and_info_count_the_conflicts(raw_copy: Path, tmp_path: Path) -> None:
    _plant(raw_copy)
    out = tmp_path / "d"
    r = CliRunner().invoke(app, ["ingest", str(raw_copy), "--out", str(out), "--size", "64", "--workers", "1"])
    assert r.exit_code == 0, r.stderr
    assert "2 photographs filed under two labels, 2 under two patient ids" in r.stderr.replace("\n", " ")
    total_labels = total_patients = 0
    for name in ("train.h5", "holdout.h5"):
        r = CliRunner().invoke(app, ["info", str(out / name), "--json"])
        d = json.loads(r.stdout)
        total_labels += d["duplicate_groups_with_conflicting_labels"]
        total_patients += d["duplicate_groups_across_patients"]
    assert total_labels == 2 and total_patients == 2
