"""The HDF5 dataset schema: the only package that imports h5py (schema.py: the names; write.py,
read.py and checks.py: writing and reading them).

Every file that `ingest` and `sample` write, and that `train`, `evaluate` and
`audit-privacy` read, has this layout (N images of S x S pixels):

    images          uint8  (N, S, S, 3)  RGB, cropped to the field of view, black outside it;
                                          one image per chunk, gzip-compressed
    fov_mask        uint8  (N, S, S)     1 inside the visible field of view
    fov_circle      float32 (N, 3)       cx, cy, r of the field-of-view circle in pixels of `images`
    labels          int16  (N,)          index into the `class_names` attribute, -1 = unknown
    source          str    (N,)          path relative to the ingested folder (or a pseudonym)
    patient         str    (N,)          patient id (or a pseudonym); images of a patient share it
    dup_group       int64  (N,)          images with equal ids are exact or near duplicates
    phash           uint64 (N,)          64-bit perceptual hash of the cropped image
    quality/<name>  float32 (N,)         brightness, contrast, sharpness, fov_fraction

Attributes: format, schema_version, fundus_cli_version, created (UTC, ISO 8601), split,
kind (real/synthetic), image_size, count, class_names (JSON list), options (JSON: the
command's resolved options), provenance (JSON), pseudonymized, fingerprint (SHA-256 of
the images and labels, see `DatasetWriter`).

Attributes come from files that may have been made or edited by anyone, so readers parse
them defensively and refuse anything that does not fit the schema.
"""

from __future__ import annotations

from fundus_cli.data.h5.read import DatasetReader, is_dataset_file, open_dataset
from fundus_cli.data.h5.schema import (DUP_GROUP, FORMAT, FOV_CIRCLE, FOV_MASK, IMAGES, KINDS, LABELS, PATIENT, PHASH,
                                       QUALITY_COLUMNS, QUALITY_GROUP, SCHEMA_VERSION, SOURCE, SPLITS, DatasetInfo,
                                       Record)
from fundus_cli.data.h5.write import SPACE_MARGIN, DatasetWriter, SpaceRefused, library_damaged

__all__ = ["DUP_GROUP", "FORMAT", "FOV_CIRCLE", "FOV_MASK", "IMAGES", "KINDS", "LABELS", "PATIENT", "PHASH",
           "QUALITY_COLUMNS", "QUALITY_GROUP", "SCHEMA_VERSION", "SOURCE", "SPACE_MARGIN", "SPLITS", "DatasetInfo",
           "DatasetReader", "DatasetWriter", "Record", "SpaceRefused", "is_dataset_file", "library_damaged",
           "open_dataset"]
