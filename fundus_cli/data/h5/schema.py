"""The schema's names, what one image row holds, and the dataset fingerprint (see the package
docstring for the layout)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

FORMAT = "fundus-cli dataset"
SCHEMA_VERSION = 1

IMAGES = "images"
FOV_MASK = "fov_mask"
FOV_CIRCLE = "fov_circle"
LABELS = "labels"
SOURCE = "source"
PATIENT = "patient"
DUP_GROUP = "dup_group"
PHASH = "phash"
QUALITY_GROUP = "quality"
QUALITY_COLUMNS = ("brightness", "contrast", "sharpness", "fov_fraction")

SPLITS = ("train", "holdout", "synthetic", "staging")
KINDS = ("real", "synthetic")

STR = h5py.string_dtype(encoding="utf-8")
GZIP_LEVEL = 4  # level 4 costs ~1 ms per 256 px image and saves most of what level 9 saves


@dataclass
class Record:
    """One image with everything the schema stores about it."""

    image: np.ndarray  # uint8 (S, S, 3)
    mask: np.ndarray  # bool or uint8 (S, S)
    circle: tuple[float, float, float]  # cx, cy, r in pixels of `image`
    source: str
    patient: str
    label: int = -1
    phash: int = 0
    dup_group: int = -1
    quality: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetInfo:
    """The validated attributes of a dataset file."""

    path: Path
    schema_version: int
    fundus_cli_version: str
    created: str
    split: str
    kind: str
    count: int
    image_size: int
    class_names: tuple[str, ...]
    fingerprint: str
    options: dict[str, Any]
    provenance: dict[str, Any]
    pseudonymized: bool


def fingerprint_update(h: Any, images: np.ndarray) -> None:
    h.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())


def fingerprint_finish(h: Any, labels: np.ndarray, image_size: int) -> str:
    # Labels are part of the fingerprint: a conditional model trained on other labels is
    # a model of other data. The size guards against equal bytes in another shape.
    h.update(np.asarray(labels, dtype="<i2").tobytes())
    h.update(f"size={image_size}".encode())
    return h.hexdigest()
