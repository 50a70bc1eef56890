"""A folder of phantom photographs (JPEG) and labels.csv, written atomically."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from fundus_cli.data.phantoms.plan import CLASS_NAMES, plan_phantoms
from fundus_cli.data.phantoms.render import render_phantom
from fundus_cli.errors import FundusError


_JPEG_QUALITY = 92


_LABEL_HEADER = ("image", "label", "patient", "eye", "fov_cx", "fov_cy", "fov_r")


_IMAGE_NAME = re.compile(r"^\d{4,}_(left|right)\.jpg(\.tmp)?$")


@dataclass(frozen=True)
class PhantomResult:
    out_dir: Path
    n_images: int
    labels_csv: Path
    class_counts: dict[str, int] = field(default_factory=dict)


def write_phantoms(
    out_dir: Path,
    *,
    n: int = 200,
    seed: int = 0,
    overwrite: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> PhantomResult:
    """Write n phantom photographs as out_dir/images/*.jpg plus out_dir/labels.csv.

    labels.csv: image (relative path), label (class name), patient, eye and the true
    field-of-view circle fov_cx, fov_cy, fov_r in pixels.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FundusError(f"{out_dir} is a file, not a folder; choose another output folder for the phantoms")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FundusError(
            f"{out_dir} already exists and is not empty; choose a new folder or pass overwrite=True (--overwrite)"
        )
    specs = plan_phantoms(n=n, seed=seed)
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    if overwrite:  # drop phantoms of an earlier, larger run so the folder matches labels.csv
        for old in images.iterdir():
            if old.is_file() and _IMAGE_NAME.match(old.name):
                old.unlink()

    rows = []
    counts = dict.fromkeys(CLASS_NAMES, 0)
    for spec in specs:
        rgb = render_phantom(spec)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        if not ok:  # pragma: no cover - OpenCV only fails here on a broken build
            raise RuntimeError("OpenCV could not encode a JPEG")
        rel = f"images/{spec.patient:04d}_{spec.eye}.jpg"
        _atomic_write(out_dir / rel, buf.tobytes())
        name = CLASS_NAMES[spec.label]
        counts[name] += 1
        rows.append((rel, name, spec.patient, spec.eye, spec.fov_cx, spec.fov_cy, spec.fov_r))
        if on_progress is not None:
            on_progress(1)

    labels = out_dir / "labels.csv"
    lines = [",".join(_LABEL_HEADER)] + [",".join(str(v) for v in row) for row in rows]
    _atomic_write(labels, ("\n".join(lines) + "\n").encode())
    return PhantomResult(out_dir=out_dir, n_images=len(specs), labels_csv=labels, class_counts=counts)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
