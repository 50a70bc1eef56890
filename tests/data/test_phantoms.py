"""The built-in phantom generator: determinism, geometry ground truth, labels and files."""

from __future__ import annotations

import csv
import dataclasses
import math

import cv2
import numpy as np
import pytest

from fundus_cli.data.phantoms import CLASS_NAMES, plan_phantoms, render_phantom, write_phantoms
from fundus_cli.errors import FundusError


def _radius_grid(spec):
    yy, xx = np.mgrid[: spec.height, : spec.width]
    return np.hypot(xx - spec.fov_cx, yy - spec.fov_cy)


def test_render_is_deterministic_and_seed_dependent():
    a = plan_phantoms(n=2, seed=5)
    b = plan_phantoms(n=2, seed=5)
    c = plan_phantoms(n=2, seed=6)
    assert a == b
    assert a != c
    img = render_phantom(a[0])
    assert img.dtype == np.uint8 and img.shape == (a[0].height, a[0].width, 3)
    assert img.tobytes() == render_phantom(b[0]).tobytes()
    # Same geometry, different noise seed only: still a different picture.
    other = render_phantom(dataclasses.replace(a[0], noise_seed=a[0].noise_seed + 1))
    assert other.tobytes() != img.tobytes()
    assert render_phantom(c[0]).shape != img.shape or render_phantom(c[0]).tobytes() != img.tobytes()


def test_plan_patients_eyes_and_classes():
    specs = plan_phantoms(n=7, seed=1)
    assert len(specs) == 7
    assert [(s.patient, s.eye) for s in specs] == [
        (0, "left"), (0, "right"), (1, "left"), (1, "right"), (2, "left"), (2, "right"), (3, "left"),
    ]
    # A smaller n is a prefix of a larger one: a patient's specs depend only on (seed, patient).
    assert plan_phantoms(n=4, seed=1) == specs[:4]
    for left, right in zip(specs[0::2], specs[1::2]):
        assert left.label == right.label
        assert left.colour == right.colour and left.vessel_seed == right.vessel_seed
        assert left.lesion_seed != right.lesion_seed
        assert (left.width, left.height, left.fov_r) == (right.width, right.height, right.fov_r)

    many = plan_phantoms(n=400, seed=0)
    per_patient = {s.patient: s.label for s in many}
    freq = np.bincount(list(per_patient.values()), minlength=3) / len(per_patient)
    assert abs(freq[0] - 0.5) < 0.12 and abs(freq[1] - 0.3) < 0.1 and abs(freq[2] - 0.2) < 0.1


def test_plan_geometry_varies_like_real_cameras():
    specs = plan_phantoms(n=40, seed=0)
    widths = [s.width for s in specs]
    assert all(600 <= w <= 2000 for w in widths)
    assert max(widths) - min(widths) > 600
    assert all(1.0 <= s.width / s.height <= 1.51 for s in specs)
    cut = [s for s in specs if s.fov_r > s.height / 2]
    assert 0 < len(cut) < len(specs)
    for s in specs:  # the circle always fits left to right
        assert s.fov_cx - s.fov_r >= 0 and s.fov_cx + s.fov_r <= s.width
    assert {s.notch for s in plan_phantoms(n=200, seed=0)} == {"none", "rect", "triangle"}


@pytest.mark.parametrize("index", range(6))
def test_fov_is_dark_outside_and_fundus_coloured_inside(index):
    spec = plan_phantoms(n=6, seed=0)[index]
    img = render_phantom(spec).astype(np.float32)
    d = _radius_grid(spec)
    outside = img[d > spec.fov_r + 4]
    inside = img[d < 0.9 * spec.fov_r]
    if outside.size:
        assert outside.max() < 25
        assert outside.mean() < 10
    assert inside.mean() > (outside.mean() if outside.size else 0) + 25
    r, g, b = inside.mean(axis=0)
    assert r > g > b
    if spec.fov_r > spec.height / 2:  # cut-off circle: the fundus reaches the top and bottom rows
        assert img[0, int(spec.fov_cx)].mean() > 20 and img[-1, int(spec.fov_cx)].mean() > 20


@pytest.mark.parametrize("patient", range(3))
def test_optic_disc_is_brightest_and_mirrored_between_eyes(patient):
    left, right = plan_phantoms(n=6, seed=2)[2 * patient : 2 * patient + 2]
    sides = []
    for spec in (left, right):
        grey = cv2.GaussianBlur(render_phantom(spec).astype(np.float32).mean(axis=2), (0, 0), 0.04 * spec.fov_r)
        y, x = np.unravel_index(np.argmax(grey), grey.shape)
        mirror = 1 if spec.eye == "left" else -1
        disc = (spec.fov_cx + mirror * spec.disc_x * spec.fov_r, spec.fov_cy + spec.disc_y * spec.fov_r)
        assert math.hypot(x - disc[0], y - disc[1]) < 1.2 * spec.disc_r * spec.fov_r
        sides.append(np.sign(x - spec.fov_cx))
    assert sides == [-1, 1]  # left eye: disc on the image's left; right eye: on the right


def test_lesions_change_dr_and_amd_images_only():
    specs = plan_phantoms(n=60, seed=0)
    for label in (1, 2):
        spec = next(s for s in specs if s.label == label and s.severity > 0.5 and s.width < 1300)
        sick = render_phantom(spec).astype(np.int16)
        clean = render_phantom(dataclasses.replace(spec, label=0)).astype(np.int16)
        changed = np.abs(sick - clean).max(axis=2) > 25
        assert changed.sum() > 30, CLASS_NAMES[label]
        ys, xs = np.nonzero(changed)
        assert np.all(np.hypot(xs - spec.fov_cx, ys - spec.fov_cy) < spec.fov_r)
        if label == 2:  # drusen are bright, clustered around the macula
            assert (sick - clean)[changed].mean() > 0
    healthy = next(s for s in specs if s.label == 0)
    assert render_phantom(healthy).tobytes() == render_phantom(dataclasses.replace(healthy, severity=1.0)).tobytes()


def test_write_phantoms_files_match_labels(tmp_path):
    out = tmp_path / "phantoms"
    ticks = []
    result = write_phantoms(out, n=5, seed=3, on_progress=ticks.append)
    assert ticks == [1] * 5
    assert result.n_images == 5 and result.labels_csv == out / "labels.csv"
    with open(result.labels_csv, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    assert header == ["image", "label", "patient", "eye", "fov_cx", "fov_cy", "fov_r"]
    specs = plan_phantoms(n=5, seed=3)
    assert len(rows) == 5
    for row, spec in zip(rows, specs):
        image, label, patient, eye, fx, fy, fr = row
        assert image == f"images/{spec.patient:04d}_{spec.eye}.jpg"
        assert (label, int(patient), eye) == (CLASS_NAMES[spec.label], spec.patient, spec.eye)
        assert (float(fx), float(fy), float(fr)) == (spec.fov_cx, spec.fov_cy, spec.fov_r)
        img = cv2.imread(str(out / image))
        assert img is not None and img.shape == (spec.height, spec.width, 3)
    by_patient: dict[int, dict[str, str]] = {}
    for _, label, patient, eye, *_ in rows:
        by_patient.setdefault(int(patient), {})[eye] = label
    assert [sorted(v) for v in by_patient.values()] == [["left", "right"], ["left", "right"], ["left"]]
    assert all(len(set(v.values())) == 1 for v in by_patient.values())
    assert sum(result.class_counts.values()) == 5
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(r[0].split("/")[1] for r in rows)
    assert not list(out.rglob("*.tmp"))


def test_write_refuses_non_empty_folder_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "notes.txt").write_text("keep me")
    (out / "images" / "0009_left.jpg").write_bytes(b"stale")
    with pytest.raises(FundusError, match="not empty") as err:
        write_phantoms(out, n=1)
    assert str(out) in str(err.value)
    result = write_phantoms(out, n=1, overwrite=True)
    assert result.n_images == 1
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in (out / "images").iterdir()) == ["0000_left.jpg"]


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_bad_n_is_a_user_error(n, tmp_path):
    with pytest.raises(FundusError, match="n must be"):
        plan_phantoms(n=n, seed=0)
    with pytest.raises(FundusError):
        write_phantoms(tmp_path / "x", n=n)
    assert not (tmp_path / "x").exists()
