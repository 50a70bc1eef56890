from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from fundus_cli.data import h5
from fundus_cli.commands.ingest import stage as ingest_mod
from fundus_cli.data.fov import Circle, fov_mask
from fundus_cli.commands.ingest import IngestConfig, ingest
from fundus_cli.data.phantoms import CLASS_NAMES
from fundus_cli.errors import FundusError


def _cfg(raw: Path, out: Path, **kw: object) -> IngestConfig:
    base = {"size": 64, "workers": 1}
    base.update(kw)
    return IngestConfig(raw=raw, out=out, **base)  # type: ignore[arg-type]


def _read_all(path: Path) -> dict:
    with h5.open_dataset(path) as r:
        return {"images": r.images(), "labels": r.labels(), "sources": r.sources(), "patients": r.patients(),
                "groups": r.dup_groups(), "info": r.info, "masks": r.fov_masks(), "circles": r.circles(),
                "quality": r.quality()}


def test_phantoms_ingest_split_by_patient_with_labels(raw_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    res = ingest(_cfg(raw_copy, out, holdout_fraction=0.34))
    train, hold = _read_all(res.train), _read_all(res.holdout)
    assert res.n_train + res.n_holdout == 12 and res.n_rejected == 0
    assert len(train["images"]) == res.n_train and len(hold["images"]) == res.n_holdout
    assert res.n_holdout >= 2
    # labels.csv of the phantoms was found on its own, with its patient column
    assert train["info"].class_names == tuple(sorted(CLASS_NAMES))
    assert not set(train["patients"]) & set(hold["patients"])
    rows = {r["image"]: r for r in csv.DictReader(open(raw_copy / "labels.csv"))}
    for d in (train, hold):
        for src, lab, pat in zip(d["sources"], d["labels"], d["patients"]):
            assert d["info"].class_names[lab] == rows[src]["label"]
            assert pat == rows[src]["patient"]
    # images are cropped to the disc: corners black, centre bright
    imgs = train["images"]
    assert imgs.shape[1:] == (64, 64, 3)
    assert imgs[:, :3, :3].max() == 0
    assert imgs[:, 28:36, 28:36].mean() > 60
    assert (imgs[~train["masks"]] == 0).all()
    # the stored fingerprint is the content's
    with h5.open_dataset(res.train) as r:
        assert r.compute_fingerprint() == r.info.fingerprint
    report = json.loads(res.report.read_text())
    assert report["counts"]["train"] == res.n_train and report["counts"]["rejected"] == 0
    assert not (out / ingest_mod.STAGING_DIR).exists()


def test_stored_fov_matches_true_circle(raw_copy: Path, tmp_path: Path) -> None:
    """The phantoms know their true disc: the stored mask must match it after the crop."""
    res = ingest(_cfg(raw_copy, tmp_path / "d", holdout_fraction=0.0, size=128))
    rows = {r["image"]: r for r in csv.DictReader(open(raw_copy / "labels.csv"))}
    d = _read_all(res.train)
    for src, mask in zip(d["sources"], d["masks"]):
        row = rows[src]
        img = cv2.imread(str(raw_copy / src))
        h, w = img.shape[:2]
        r = float(row["fov_r"])
        # the true circle maps onto the centred circle of the stored 128 px square, cut by
        # the rows that the photograph actually covers
        s = 128 / (2 * r)
        truth = fov_mask((128, 128), Circle(cx=63.5, cy=63.5, r=64.0))
        top = (0 - (float(row["fov_cy"]) - r)) * s
        bottom = (h - (float(row["fov_cy"]) - r)) * s
        rows_inside = (np.arange(128) + 0.5 > top) & (np.arange(128) + 0.5 < bottom)
        truth &= rows_inside[:, None]
        inter = (truth & mask).sum()
        union = (truth | mask).sum()
        assert inter / union >= 0.97, (src, inter / union)


def _write_bad_files(raw: Path) -> dict[str, str]:
    """Bad inputs of every kind, with the word their rejection reason must contain."""
    good = sorted((raw / "images").glob("*.jpg"))[0]
    data = good.read_bytes()
    bad = raw / "bad"
    bad.mkdir()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (bad / "notes.jpg").write_text("this is not an image")
    (bad / "empty.png").write_bytes(b"")
    cv2.imwrite(str(bad / "tiny.png"), np.full((16, 16, 3), 120, np.uint8))
    cv2.imwrite(str(bad / "grey.png"), np.full((300, 400, 3), 128, np.uint8))
    return {"bad/truncated.jpg": "truncated", "bad/notes.jpg": "not a decodable image",
            "bad/empty.png": "empty", "bad/tiny.png": "too small", "bad/grey.png": "no fundus field of view"}


def _write_converted_files(raw: Path) -> None:
    good = cv2.imread(str(sorted((raw / "images").glob("*.jpg"))[1]))
    conv = raw / "converted"
    conv.mkdir()
    cv2.imwrite(str(conv / "gray.png"), cv2.cvtColor(good, cv2.COLOR_BGR2GRAY))
    rgba = cv2.cvtColor(good, cv2.COLOR_BGR2BGRA)
    cv2.imwrite(str(conv / "rgba.png"), rgba)
    # 12-bit data in a 16-bit TIFF, as some cameras write it
    cv2.imwrite(str(conv / "deep.tiff"), good.astype(np.uint16) * 16)
    cv2.imwrite(str(conv / "plain.bmp"), good)


def test_bad_inputs_are_skipped_and_reported(raw_copy: Path, tmp_path: Path) -> None:
    expected = _write_bad_files(raw_copy)
    _write_converted_files(raw_copy)
    (raw_copy / "README.txt").write_text("not an image either")
    res = ingest(_cfg(raw_copy, tmp_path / "data", workers=2))
    report = json.loads(res.report.read_text())
    reasons = {r["source"]: r["reason"] for r in report["rejected"]}
    assert set(reasons) == set(expected)
    for src, word in expected.items():
        assert word in reasons[src], (src, reasons[src])
    assert res.n_train + res.n_holdout == 12 + 4
    assert report["input"]["other_files_ignored"] == 2  # README.txt and labels.csv
    assert report["conversions"]["grayscale converted to RGB"] == 1
    assert report["conversions"]["alpha channel dropped"] == 1
    assert report["conversions"]["16-bit image scaled to 8 bits (data fits in 12 bits)"] == 1
    srcs = _read_all(res.train)["sources"] + _read_all(res.holdout)["sources"]
    assert {"converted/gray.png", "converted/rgba.png", "converted/deep.tiff", "converted/plain.bmp"} <= set(srcs)
    # The 12-bit TIFF came out as bright as the 8-bit BMP of the same photograph.
    with h5.open_dataset(res.train) as a, h5.open_dataset(res.holdout) as b:
        by_src = {}
        for r in (a, b):
            for i, s in enumerate(r.sources()):
                by_src[s] = r.images(i, i + 1)[0].astype(float)
    assert abs(by_src["converted/deep.tiff"].mean() - by_src["converted/plain.bmp"].mean()) < 2.0


def test_duplicates_share_a_group_and_a_side(raw_copy: Path, tmp_path: Path) -> None:
    src = sorted((raw_copy / "images").glob("*.jpg"))[0]
    shutil.copy(src, raw_copy / "copy_exact.jpg")
    img = cv2.imread(str(src))
    small = cv2.resize(img, (img.shape[1] * 3 // 4, img.shape[0] * 3 // 4), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(raw_copy / "copy_resized.png"), small)
    res = ingest(_cfg(raw_copy, tmp_path / "d", holdout_fraction=0.5))
    report = json.loads(res.report.read_text())
    rel = src.relative_to(raw_copy).as_posix()
    group = next(g for g in report["duplicates"]["groups"] if rel in g)
    assert set(group) == {rel, "copy_exact.jpg", "copy_resized.png"}
    where = {}
    for split, path in (("train", res.train), ("holdout", res.holdout)):
        d = _read_all(path)
        for s, g in zip(d["sources"], d["groups"]):
            where[s] = (split, int(g))
    assert len({where[s] for s in group}) == 1  # same split, same group id
    assert len({g for _, g in where.values()}) == 12  # the 12 phantoms are all distinct


def test_errors_for_unusable_input(tmp_path: Path) -> None:
    with pytest.raises(FundusError, match="folder not found"):
        ingest(_cfg(tmp_path / "nope", tmp_path / "d"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FundusError, match="no images found"):
        ingest(_cfg(empty, tmp_path / "d"))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_text("nope")
    cv2.imwrite(str(junk / "b.png"), np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(FundusError, match="none of the 2 images is usable") as e:
        ingest(_cfg(junk, tmp_path / "d2"))
    assert "ingest-report.json" in str(e.value)
    assert not (tmp_path / "d2" / "train.h5").exists()
    assert len(json.loads((tmp_path / "d2" / "ingest-report.json").read_text())["rejected"]) == 2


def test_existing_outputs_need_force(raw_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "d"
    first = ingest(_cfg(raw_copy, out))
    before = first.train.read_bytes()
    with pytest.raises(FundusError, match="already exists.*--force"):
        ingest(_cfg(raw_copy, out))
    assert first.train.read_bytes() == before
    again = ingest(_cfg(raw_copy, out, force=True))
    with h5.open_dataset(first.train) as a:
        assert a.info.fingerprint == _read_all(again.train)["info"].fingerprint


def test_interrupted_ingest_leaves_no_output_and_resumes(raw_copy: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    clean = ingest(_cfg(raw_copy, tmp_path / "clean"))
    out = tmp_path / "d"
    monkeypatch.setattr(ingest_mod, "SHARD_SIZE", 4)
    calls = {"n": 0}
    real = ingest_mod.process_file

    def flaky(task):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(ingest_mod, "process_file", flaky)
    with pytest.raises(KeyboardInterrupt):
        ingest(_cfg(raw_copy, out))
    assert not (out / "train.h5").exists() and not (out / "holdout.h5").exists()
    assert not list(out.rglob("*.tmp"))
    monkeypatch.setattr(ingest_mod, "process_file", real)
    res = ingest(_cfg(raw_copy, out))
    assert res.resumed_images == 4  # one committed shard of 4 survived the interrupt
    with h5.open_dataset(clean.train) as a, h5.open_dataset(res.train) as b:
        assert a.info.fingerprint == b.info.fingerprint


def test_interrupt_while_writing_final_files(raw_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "d"
    real_append = h5.DatasetWriter.append

    def boom(self, record):  # type: ignore[no-untyped-def]
        if self.split == "holdout":
            raise KeyboardInterrupt
        return real_append(self, record)

    monkeypatch.setattr(h5.DatasetWriter, "append", boom)
    with pytest.raises(KeyboardInterrupt):
        ingest(_cfg(raw_copy, out))
    assert not (out / "holdout.h5").exists() and not list(out.glob("*.tmp"))
    monkeypatch.setattr(h5.DatasetWriter, "append", real_append)
    res = ingest(_cfg(raw_copy, out, force=True))
    assert res.resumed_images == 12  # nothing was decoded twice


def test_pseudonymize_hides_names_but_keeps_patients_together(raw_copy: Path, tmp_path: Path) -> None:
    res = ingest(_cfg(raw_copy, tmp_path / "d", pseudonymize=True, salt="s3cret", holdout_fraction=0.34))
    d = _read_all(res.train)
    assert d["info"].pseudonymized
    blob = res.train.read_bytes() + res.holdout.read_bytes() + res.report.read_bytes()
    assert b"_left" not in blob and b"images/" not in blob and b"s3cret" not in blob
    mapping = res.pseudonym_map.read_text()
    assert "salt=s3cret" in mapping
    rows = list(csv.reader(line for line in mapping.splitlines() if not line.startswith("#")))[1:]
    back = {p: o for kind, p, o in rows if kind == "source"}
    assert {back[s] for s in d["sources"]} <= {f"images/{p.name}" for p in (raw_copy / "images").iterdir()}
    # both eyes of a patient share a pseudonym and a side
    hold = _read_all(res.holdout)
    assert not set(d["patients"]) & set(hold["patients"])
    assert len(set(d["patients"])) * 2 == len(d["patients"])


def test_csv_layouts_regex_and_folders(raw_copy: Path, tmp_path: Path) -> None:
    # APTOS layout: id_code (file stem), diagnosis (integer grade)
    rows = list(csv.DictReader(open(raw_copy / "labels.csv")))
    (raw_copy / "labels.csv").unlink()
    aptos = tmp_path / "train.csv"
    with open(aptos, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id_code", "diagnosis"])
        for r in rows:
            w.writerow([Path(r["image"]).stem, CLASS_NAMES.index(r["label"])])
    res = ingest(_cfg(raw_copy, tmp_path / "a", labels=str(aptos), patient_regex=r"(\d+)_(left|right)"))
    d = _read_all(res.train)
    truth = {r["image"]: CLASS_NAMES.index(r["label"]) for r in rows}
    assert d["info"].class_names == ("0", "1", "2")[: len(d["info"].class_names)]
    assert all(int(d["info"].class_names[lab]) == truth[s] for s, lab in zip(d["sources"], d["labels"]))
    assert all(p == Path(s).name.split("_")[0] for s, p in zip(d["sources"], d["patients"]))
    # a regex that matches nothing is a clear error
    with pytest.raises(FundusError, match="matches none"):
        ingest(_cfg(raw_copy, tmp_path / "b", patient_regex=r"^patient-(\d+)"))
    # a wrong column name lists the real ones
    with pytest.raises(FundusError, match="id_code, diagnosis"):
        ingest(_cfg(raw_copy, tmp_path / "c", labels=str(aptos), label_column="grade_x"))
    # class subfolders
    by_class = tmp_path / "byclass"
    for r in rows:
        (by_class / r["label"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(raw_copy / r["image"], by_class / r["label"] / Path(r["image"]).name)
    res = ingest(_cfg(by_class, tmp_path / "f", labels="folders", holdout_fraction=0.0))
    d = _read_all(res.train)
    assert all(d["info"].class_names[lab] == s.split("/")[0] for s, lab in zip(d["sources"], d["labels"]))
    # no labels at all
    res = ingest(_cfg(raw_copy, tmp_path / "u", holdout_fraction=0.0))
    d = _read_all(res.train)
    assert d["info"].class_names == () and (d["labels"] == -1).all()


def test_min_quality_rejects_dark_images(raw_copy: Path, tmp_path: Path) -> None:
    src = sorted((raw_copy / "images").glob("*.jpg"))[0]
    img = cv2.imread(str(src)).astype(np.float32)
    cv2.imwrite(str(raw_copy / "dark.png"), (img * 0.25).astype(np.uint8))
    res = ingest(_cfg(raw_copy, tmp_path / "d", min_quality="brightness=0.1"))
    report = json.loads(res.report.read_text())
    reasons = {r["source"]: r["reason"] for r in report["rejected"]}
    assert "dark.png" in reasons and "brightness" in reasons["dark.png"]
    with pytest.raises(FundusError, match="--min-quality"):
        ingest(_cfg(raw_copy, tmp_path / "e", min_quality="shininess=3"))


def test_reduced_decode_matches_full_decode(raw_copy: Path, tmp_path: Path) -> None:
    fast = ingest(_cfg(raw_copy, tmp_path / "fast", holdout_fraction=0.0))
    slow = ingest(_cfg(raw_copy, tmp_path / "slow", holdout_fraction=0.0, reduced_decode=False))
    a, b = _read_all(fast.train)["images"].astype(float), _read_all(slow.train)["images"].astype(float)
    assert a.shape == b.shape
    assert np.abs(a - b).mean() < 3.0  # same crops, within resampling differences
