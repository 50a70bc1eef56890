"""`audit_privacy` end to end on phantom photographs: decisions, artefacts, determinism, input errors."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fundus_cli.commands.audit import AuditConfig, audit_privacy
from fundus_cli.data import h5
from fundus_cli.data.quality import phash
from fundus_cli.errors import FundusError
from fundus_cli.testing import quick_fundus
from fundus_cli.privacy.views import shift_images

# Small and quick: a barely trained encoder still gives exact copies distance 0, and the
# calibration is valid for any embedding.
FAST = dict(encoder_steps=8, n_boot=100)
SIZE = 64


def fundus_like(n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cheap fundus-like photographs (`quick_fundus`), not phantoms: a null test needs a split
    whose two sides are exchangeable, and these are cheap enough to make hundreds of."""
    return quick_fundus(n, seed=seed, size=SIZE)


def _record(image: np.ndarray, mask: np.ndarray, *, source: str, patient: str, group: int) -> h5.Record:
    return h5.Record(image=image, mask=mask, circle=((SIZE - 1) / 2, (SIZE - 1) / 2, SIZE / 2), source=source,
                     patient=patient, phash=phash(image), dup_group=group)


def _write(path: Path, records: list[h5.Record], *, split: str, kind: str) -> Path:
    with h5.DatasetWriter(path, image_size=SIZE, split=split, kind=kind) as w:
        for rec in records:
            w.append(rec)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two images per patient, patients split at random: train 80 images, holdout 40 and a
    disjoint real split used as "synthetic" 30; a synthetic set with planted copies; a holdout
    that leaks a training image and a training patient."""
    root = tmp_path_factory.mktemp("audit")
    imgs, masks = fundus_like(160, seed=1)
    recs = [_record(imgs[i], masks[i], source=f"photos/{i:03d}.jpg", patient=f"p{i // 2:03d}", group=i)
            for i in range(len(imgs))]
    order = np.random.default_rng(0).permutation(len(imgs) // 2)
    pick = lambda patients: [recs[i] for p in sorted(patients) for i in (2 * p, 2 * p + 1)]  # noqa: E731
    train, hold, null = pick(order[:40]), pick(order[40:60]), pick(order[60:75])
    for i, rec in enumerate(null):
        null[i] = replace(rec, source=f"synthetic/{i:03d}.png", patient=f"synthetic-{i}", dup_group=i)
    planted = {1: 3, 4: 17, 9: 58, 6: 40}  # synthetic index -> training row; 6 is mirrored (still a copy)
    copies = list(null)
    for s, t in planted.items():
        image, mask = train[t].image, train[t].mask
        if s == 6:
            image, mask = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])
        copies[s] = _record(image, mask, source=f"synthetic/{s:03d}.png", patient=f"synthetic-{s}", group=s)
    # Moved by up to 8 px (the working size is the stored size here), one also mirrored: only
    # the registered distance finds these (synthetic index -> (training row, (dy, dx), mirrored)).
    moved = {2: (5, (8, -3), False), 7: (21, (-6, 8), False), 11: (33, (8, 8), True)}
    shifted = list(null)
    for s, (t, (dy, dx), mirror) in moved.items():
        image = shift_images(train[t].image[None], dy, dx)[0]
        if mirror:
            image = np.ascontiguousarray(image[:, ::-1])
        shifted[s] = _record(image, train[t].mask, source=f"synthetic/{s:03d}.png", patient=f"synthetic-{s}", group=s)
    unused = pick(order[75:76])[0]
    mirrored = np.ascontiguousarray(train[12].image[:, ::-1])
    leaks = [replace(train[10]),  # the very image of a training patient
             replace(unused, patient=train[20].patient),  # another image of a training patient
             # a training image mirrored, under another patient id: only the mirrored hash finds it
             replace(train[12], image=mirrored, mask=np.ascontiguousarray(train[12].mask[:, ::-1]),
                     source="photos/mirrored.jpg", patient="p-unseen", phash=phash(mirrored))]
    return {
        "root": root,
        "train": _write(root / "train.h5", train, split="train", kind="real"),
        "holdout": _write(root / "holdout.h5", hold, split="holdout", kind="real"),
        "null": _write(root / "null.h5", null, split="synthetic", kind="synthetic"),
        "copies": _write(root / "copies.h5", copies, split="synthetic", kind="synthetic"),
        "shifted": _write(root / "shifted.h5", shifted, split="synthetic", kind="synthetic"),
        "moved": {s: (train[t].source, shift, mirror) for s, (t, shift, mirror) in moved.items()},
        "leaky_holdout": _write(root / "leaky.h5", hold + leaks, split="holdout", kind="real"),
        "planted": {s: train[t].source for s, t in planted.items()},
        "leaks": [(len(hold), "duplicate", train[10].source), (len(hold) + 1, "patient", None),
                  (len(hold) + 2, "duplicate of a training image (mirrored)", train[12].source)],
        "n_holdout": len(hold),
    }


def _audit(cfg: AuditConfig):
    """audit_privacy on one torch thread, as conftest's autouse fixture sets for test functions
    (module fixtures run before it): the encoder's weights, and so the report, depend on the
    thread count through the order of floating-point sums."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return audit_privacy(cfg)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def null_run(data: dict):
    cfg = AuditConfig(train=data["train"], holdout=data["holdout"], synthetic=data["null"],
                      out=data["root"] / "reports" / "null", **FAST)
    return cfg, _audit(cfg)


@pytest.fixture(scope="module")
def copies_run(data: dict):
    cfg = AuditConfig(train=data["train"], holdout=data["leaky_holdout"], synthetic=data["copies"],
                      out=data["root"] / "reports" / "copies", **FAST)
    return cfg, _audit(cfg)


def _flagged(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_disjoint_real_split_as_synthetic_does_not_fail(data, null_run):
    cfg, res = null_run
    assert res.decision in ("PASS", "WARN") and res.exit_code == 0
    assert not res.reasons and not res.confirmed
    assert res.calibration == "holdout" and res.n_holdout_used == data["n_holdout"] and res.n_holdout_excluded == 0
    report = json.loads(res.report.read_text())
    assert report["decision"]["status"] == res.decision
    assert set(report["embeddings"]) == {"pixel", "tiled", "learned", "registered"}
    for name, e in report["embeddings"].items():
        assert e["calibration"] == "holdout" and e["n_calibration"] == data["n_holdout"]
        assert abs(e["z_u"]["z"]) < 3 and e["memorization"]["tau"] is not None, name
        if name != "registered":  # re-ranked candidates: no membership test of its own
            assert e["membership"]["ci_low"] <= e["membership"]["auc"] <= e["membership"]["ci_high"]
    assert report["settings"]["registration"]["max_shift"] == 8
    with h5.open_dataset(data["train"]) as t:
        assert report["inputs"]["train"]["fingerprint"] == t.info.fingerprint
        assert report["inputs"]["train"]["count"] == len(t)
    assert len(report["learned_encoder"]["weights_sha256"]) == 64 == len(res.encoder_sha256)
    assert report["thresholds"]["z_fail"] == -3.0 and report["settings"]["statistics"]["alpha"] == 0.05


def test_planted_copies_fail_and_map_to_their_training_sources(data, copies_run):
    cfg, res = copies_run
    assert res.decision == "FAIL" and res.exit_code == 1
    assert set(res.confirmed) == set(data["planted"])
    rows = {int(r["synthetic_index"]): r for r in _flagged(res.flagged_csv)}
    for s, source in data["planted"].items():
        row = rows[s]
        assert row["train_source"] == source and row["confirmed"] == "true", row
        assert float(row["distance"]) == pytest.approx(0.0, abs=1e-4) and float(row["ratio"]) < 0.01
        assert row["flipped"] == ("true" if s == 6 else "false")
        assert row["flagged_in"] == "pixel+tiled+learned+registered" and row["phash_bits"] == "0"
        assert float(row["p_value"]) == pytest.approx(1 / (data["n_holdout"] + 1), rel=1e-5)
    # Holdout images that are training images or come from training patients: excluded and reported.
    report = json.loads(res.report.read_text())
    assert res.n_holdout_excluded == 3 and res.n_holdout_used == data["n_holdout"]
    excluded = report["holdout_excluded"]
    assert [e["holdout_index"] for e in excluded] == [i for i, _, _ in data["leaks"]]
    for e, (_, why, source) in zip(excluded, data["leaks"]):
        assert why in e["reason"] and e["train_source"] == source and e["source"]
    assert any("confirmed cop" in r for r in report["decision"]["reasons"])


def test_copies_moved_by_up_to_8_px_fail_through_the_registered_distance(data):
    cfg = AuditConfig(train=data["train"], holdout=data["holdout"], synthetic=data["shifted"],
                      out=data["root"] / "reports" / "shifted", **FAST)
    res = _audit(cfg)
    assert res.decision == "FAIL" and set(res.confirmed) == set(data["moved"])
    rows = {int(r["synthetic_index"]): r for r in _flagged(res.flagged_csv)}
    for s, (source, (dy, dx), mirror) in data["moved"].items():
        row = rows[s]
        assert row["train_source"] == source and row["confirmed"] == "true", row
        assert row["embedding"] == "registered" and "pixel" not in row["flagged_in"].split("+")
        assert row["registered_match"] == "true" and float(row["distance"]) < 0.01 and float(row["ratio"]) < 0.05
        # The (mirrored) synthetic image at x + shift is the training image at x.
        assert (int(row["shift_dy"]), int(row["shift_dx"])) == (dy, dx), row  # numbers, not neutralised text
        assert row["flipped"] == ("true" if mirror else "false")
    report = json.loads(res.report.read_text())
    assert any("same fine detail moved by" in r for r in report["decision"]["reasons"])


def test_without_holdout_the_audit_is_inconclusive_unless_accepted(data):
    base = AuditConfig(train=data["train"], holdout=data["root"] / "absent.h5", synthetic=data["null"], **FAST)
    res = audit_privacy(replace(base, out=data["root"] / "reports" / "loo"))
    assert res.decision == "INCONCLUSIVE" and res.exit_code == 3
    assert res.calibration == "leave-one-out" and res.n_holdout_used == 0
    assert any("absent.h5" in n for n in res.notes)
    report = json.loads(res.report.read_text())
    assert report["calibration"] == "leave-one-out" and report["inputs"]["holdout"] is None
    assert (data["root"] / "reports" / "loo" / "nearest-pairs.png").stat().st_size > 10_000
    accepted = audit_privacy(replace(base, holdout=None, accept_no_holdout=True, embeddings="pixel",
                                     out=data["root"] / "reports" / "loo-accepted"))
    assert accepted.decision in ("PASS", "WARN") and accepted.exit_code == 0


def test_same_inputs_and_seed_give_a_byte_identical_report(data, null_run):
    cfg, first = null_run
    again = audit_privacy(replace(cfg, out=data["root"] / "reports" / "null-again"))
    assert again.report.read_bytes() == first.report.read_bytes()
    assert again.flagged_csv.read_bytes() == first.flagged_csv.read_bytes()
    assert again.encoder_sha256 == first.encoder_sha256


def test_figures_exist_and_show_something(null_run, copies_run):
    import matplotlib.image as mpimg

    for _, res in (null_run, copies_run):
        names = sorted(p.name for p in res.figures)
        assert names == ["distances.png", "nearest-pairs.png"]
        for p in res.figures:
            assert p.parent == res.out and p.stat().st_size > 20_000
            img = mpimg.imread(p)
            assert img.shape[0] > 300 and img.shape[1] > 800
            assert img[..., :3].std() > 0.05  # not a blank canvas
        assert not list(res.out.glob("*.tmp")) and not list(res.out.glob(".audit-scratch-*"))


def test_missing_or_invalid_inputs_are_user_errors(data, tmp_path):
    good = AuditConfig(train=data["train"], holdout=data["holdout"], synthetic=data["null"], out=tmp_path / "r", **FAST)
    with pytest.raises(FundusError, match="nope.h5"):
        audit_privacy(replace(good, train=tmp_path / "nope.h5"))
    junk = tmp_path / "junk.h5"
    junk.write_text("not a dataset")
    with pytest.raises(FundusError, match="junk.h5"):
        audit_privacy(replace(good, synthetic=junk))
    with pytest.raises(FundusError, match="valid: pixel, tiled, learned, registered"):
        audit_privacy(replace(good, embeddings="pixel,clip"))
    with pytest.raises(FundusError, match="give pixel or learned too"):
        audit_privacy(replace(good, embeddings="registered"))
    with pytest.raises(FundusError, match="--max-shift 40"):
        audit_privacy(replace(good, max_shift=40))
    with pytest.raises(FundusError, match="same content"):
        audit_privacy(replace(good, holdout=data["train"]))
    with pytest.raises(FundusError, match="synthetic images"):
        audit_privacy(replace(good, train=data["null"]))
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "report.json").write_text("{}")
    with pytest.raises(FundusError, match="--force"):
        audit_privacy(good)


def test_twelve_holdout_images_are_inconclusive_and_an_under_trained_checkpoint_is_named(data, tmp_path):
    # Issue 16: honest samples, 12 holdout photographs, from a checkpoint saved at step 25 of 4000.
    from typer.testing import CliRunner

    from fundus_cli.cli import app

    with h5.open_dataset(data["holdout"]) as r:
        hold12 = [r.record(i) for i in range(12)]
    with h5.open_dataset(data["null"]) as r:
        honest = [r.record(i) for i in range(len(r))]
    holdout = _write(tmp_path / "hold12.h5", hold12, split="holdout", kind="real")
    synthetic = tmp_path / "synthetic.h5"
    with h5.DatasetWriter(synthetic, image_size=SIZE, split="synthetic", kind="synthetic",
                          provenance={"arch": "vae", "step": 25, "planned_steps": 4000}) as w:
        for rec in honest:
            w.append(rec)
    out = tmp_path / "audit"
    res = CliRunner().invoke(app, ["audit-privacy", "--train", str(data["train"]), "--holdout", str(holdout),
                                   "--synthetic", str(synthetic), "--out", str(out), "--embeddings", "pixel,tiled",
                                   "--json"])
    assert res.exit_code == 3, res.output
    summary = json.loads(res.stdout)
    assert summary["decision"] == "INCONCLUSIVE" and summary["min_holdout"] == 19
    assert "1/13 = 0.077" in res.stderr and "INCONCLUSIVE" in res.stderr and "Traceback" not in res.stderr
    assert "under-trained checkpoint: step 25 of 4000 planned" in res.stderr
    report = json.loads((out / "report.json").read_text())
    d = report["decision"]
    assert d["status"] == "INCONCLUSIVE" and d["exit_code"] == 3 and d["min_holdout"] == 19
    assert any("1/13 = 0.077" in why for why in d["inconclusive"])
    assert d["summary"].startswith("The audit cannot decide") and "at least 19 usable holdout images" in d["summary"]
    assert report["checkpoint"] == {"step": 25, "planned_steps": 4000, "note": report["checkpoint"]["note"]}
    assert "step 25 of 4000" in report["checkpoint"]["note"]


def test_labelled_sets_get_per_class_tests(data, null_run, tmp_path):
    # Issue 11 item 5: every set labelled with the same classes -> per-class statistics in report.json.
    def labelled(path: Path, split: str, kind: str) -> Path:
        with h5.open_dataset(path) as r:
            recs = [r.record(i) for i in range(len(r))]
        with h5.DatasetWriter(tmp_path / path.name, image_size=SIZE, split=split, kind=kind,
                              class_names=["no_dr", "dr"]) as w:
            for i, rec in enumerate(recs):
                rec.label = i % 2
                w.append(rec)
        return tmp_path / path.name

    cfg = AuditConfig(train=labelled(data["train"], "train", "real"), holdout=labelled(data["holdout"], "holdout", "real"),
                      synthetic=labelled(data["null"], "synthetic", "synthetic"), out=tmp_path / "audit",
                      embeddings="pixel", **FAST)
    res = _audit(cfg)
    report = json.loads(res.report.read_text())
    pc = report["per_class"]
    assert pc["classes"] == ["no_dr", "dr"] and pc["multiplicity"] == "Holm over 4 per-class tests"
    for name in ("no_dr", "dr"):
        t = pc["tests"][name]["pixel"]
        assert t["n_synthetic"] == 15 and t["n_calibration"] == 20 and t["skipped"] is None
        assert t["memorization"]["p_adjusted"] >= t["memorization"]["p_exact"]
        assert t["z_u"]["p_adjusted"] >= t["z_u"]["p"]
    assert res.decision in ("PASS", "WARN") and not any(r.startswith("class ") for r in res.reasons)
    assert any(t.startswith("per-class memorization-rate and Z_U tests (2 classes") for t in res.tests_run)
    # Unlabelled synthetic images (the usual unconditional model): no per-class block.
    assert json.loads(null_run[1].report.read_text())["per_class"] is None
