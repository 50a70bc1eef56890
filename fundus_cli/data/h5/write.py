"""Writing a dataset file: streamed, atomic, and refusing to fill the disk."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from fundus_cli import __version__
from fundus_cli.data.h5.schema import (DUP_GROUP, FORMAT, FOV_CIRCLE, FOV_MASK, GZIP_LEVEL, IMAGES, KINDS, LABELS,
                                       PATIENT, PHASH, QUALITY_COLUMNS, QUALITY_GROUP, SCHEMA_VERSION, SOURCE, SPLITS,
                                       STR, Record, fingerprint_finish, fingerprint_update)
from fundus_cli.fsio import commit_tmp, tmp_path_for


class DatasetWriter:
    """Stream records into a new dataset file, written atomically.

    The file is built as `<name>.tmp` and renamed over `<name>` only when the `with` block
    ends without an error; any exception (Ctrl-C included) removes the temporary file.
    Rows are buffered `chunk_rows` at a time, so memory stays flat for any number of images.
    """

    def __init__(
        self,
        path: Path,
        *,
        image_size: int,
        split: str,
        kind: str = "real",
        class_names: tuple[str, ...] | list[str] = (),
        options: dict[str, Any] | None = None,
        provenance: dict[str, Any] | None = None,
        pseudonymized: bool = False,
        chunk_rows: int = 32,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        self.path = Path(path)
        self.tmp = tmp_path_for(self.path)
        self.image_size = int(image_size)
        self.split = split
        self.kind = kind
        self.class_names = tuple(str(c) for c in class_names)
        self.options = options or {}
        self.provenance = provenance or {}
        self.pseudonymized = pseudonymized
        self.chunk_rows = chunk_rows
        self.count = 0
        self._buffer: list[Record] = []
        self._hash = hashlib.sha256()
        self._file: h5py.File | None = None
        self.fingerprint: str | None = None

    def __enter__(self) -> DatasetWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp.unlink(missing_ok=True)
        f = h5py.File(self.tmp, "w")
        self._file = f
        s = self.image_size
        f.create_dataset(IMAGES, shape=(0, s, s, 3), maxshape=(None, s, s, 3), dtype=np.uint8,
                         chunks=(1, s, s, 3), compression="gzip", compression_opts=GZIP_LEVEL)
        f.create_dataset(FOV_MASK, shape=(0, s, s), maxshape=(None, s, s), dtype=np.uint8,
                         chunks=(1, s, s), compression="gzip", compression_opts=GZIP_LEVEL)
        f.create_dataset(FOV_CIRCLE, shape=(0, 3), maxshape=(None, 3), dtype=np.float32, chunks=(1024, 3))
        f.create_dataset(LABELS, shape=(0,), maxshape=(None,), dtype=np.int16, chunks=(4096,))
        f.create_dataset(SOURCE, shape=(0,), maxshape=(None,), dtype=STR, chunks=(1024,))
        f.create_dataset(PATIENT, shape=(0,), maxshape=(None,), dtype=STR, chunks=(1024,))
        f.create_dataset(DUP_GROUP, shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
        f.create_dataset(PHASH, shape=(0,), maxshape=(None,), dtype=np.uint64, chunks=(4096,))
        q = f.create_group(QUALITY_GROUP)
        for name in QUALITY_COLUMNS:
            q.create_dataset(name, shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(4096,))
        # Handles held for the writer's life: a handle released after a failed write (full disk)
        # makes HDF5 fail again on release, print a traceback per object and can crash.
        self._datasets = {name: f[name] for name in (IMAGES, FOV_MASK, FOV_CIRCLE, LABELS, SOURCE, PATIENT,
                                                     DUP_GROUP, PHASH)}
        self._datasets.update({f"{QUALITY_GROUP}/{n}": f[f"{QUALITY_GROUP}/{n}"] for n in QUALITY_COLUMNS})
        return self

    def append(self, record: Record) -> None:
        s = self.image_size
        if record.image.shape != (s, s, 3) or record.image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 ({s}, {s}, 3), got {record.image.dtype} {record.image.shape}")
        if record.mask.shape != (s, s):
            raise ValueError(f"mask must be ({s}, {s}), got {record.mask.shape}")
        if record.label >= len(self.class_names) or record.label < -1:
            raise ValueError(f"label {record.label} outside -1..{len(self.class_names) - 1}")
        self._buffer.append(record)
        if len(self._buffer) >= self.chunk_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        f = self._file
        assert f is not None, "DatasetWriter used outside its with-block"
        rows = self._buffer
        _check_space(self.tmp, sum(r.image.nbytes + r.mask.size for r in rows))
        n0, n1 = self.count, self.count + len(rows)
        images = np.stack([r.image for r in rows])
        fingerprint_update(self._hash, images)
        columns: dict[str, np.ndarray] = {
            IMAGES: images,
            FOV_MASK: np.stack([np.asarray(r.mask, dtype=np.uint8) for r in rows]),
            FOV_CIRCLE: np.array([r.circle for r in rows], dtype=np.float32),
            LABELS: np.array([r.label for r in rows], dtype=np.int16),
            SOURCE: np.array([r.source for r in rows], dtype=object),
            PATIENT: np.array([r.patient for r in rows], dtype=object),
            DUP_GROUP: np.array([r.dup_group for r in rows], dtype=np.int64),
            PHASH: np.array([r.phash for r in rows], dtype=np.uint64),
        }
        for name in QUALITY_COLUMNS:
            columns[f"{QUALITY_GROUP}/{name}"] = np.array(
                [r.quality.get(name, np.nan) for r in rows], dtype=np.float32
            )
        for name, values in columns.items():
            ds = self._datasets[name]
            ds.resize(n1, axis=0)
            ds[n0:n1] = values
        self.count = n1
        self._buffer = []

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        f = self._file
        self._file = None
        if f is None:
            return
        if exc_type is not None:
            self._discard(f, exc)
            return
        try:
            # A second handle would be needed to undo _flush's partial writes on error,
            # so failures here also discard the whole temporary file.
            self._file = f
            self._flush()
            self._file = None
            labels = f[LABELS][:]
            self.fingerprint = fingerprint_finish(self._hash, labels, self.image_size)
            attrs = {
                "format": FORMAT,
                "schema_version": SCHEMA_VERSION,
                "fundus_cli_version": __version__,
                "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
                "split": self.split,
                "kind": self.kind,
                "count": self.count,
                "image_size": self.image_size,
                "class_names": json.dumps(list(self.class_names)),
                "options": json.dumps(self.options, sort_keys=True, default=str),
                "provenance": json.dumps(self.provenance, sort_keys=True, default=str),
                "pseudonymized": bool(self.pseudonymized),
                "fingerprint": self.fingerprint,
            }
            for key, value in attrs.items():
                f.attrs[key] = value
            # Flushing while the file is open turns a failed write into one exception here
            # instead of one per object inside close().
            f.flush()
            f.close()
        except BaseException as e:
            self._discard(f, e)
            raise
        commit_tmp(self.tmp, self.path)

    def _discard(self, f: h5py.File, exc: BaseException | None) -> None:
        """Delete the half-written file; close it unless HDF5 itself failed to write it.

        After a failed write (a full disk) HDF5's close fails again on every open object and
        can crash the interpreter, so such a file is left open (and marked, see
        `library_damaged`); its space comes back when the process exits, and its name is gone.
        """
        global _damaged
        try:
            os.truncate(self.tmp, 0)
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)
        if exc is not None and _is_io_failure(exc):
            _damaged = True
            _kept_open.append((f, self._datasets))
            return
        try:
            f.close()
        except Exception:
            _damaged = True


_damaged = False
_kept_open: list[Any] = []
SPACE_MARGIN = 16 << 20  # bytes kept free beyond each write: HDF5's caches and metadata flush


def library_damaged() -> bool:
    """True once a file could not be closed after a failed write: the process should exit without
    HDF5's own clean-up (os._exit), which would crash on that file."""
    return _damaged


class SpaceRefused(OSError):
    """A write refused by `_check_space` before HDF5 tried it: the file is still healthy."""


def _is_io_failure(exc: BaseException) -> bool:
    """Did HDF5 itself fail to write (its messages carry the C errno)?"""
    import re

    if isinstance(exc, SpaceRefused):
        return False
    return isinstance(exc, (OSError, RuntimeError)) and re.search(r"errno = \d+", str(exc)) is not None


def _check_space(tmp: Path, nbytes: int) -> None:
    """Refuse a write that would fill the disk, before HDF5 sees the failure (see `_discard`)."""
    import errno
    import shutil

    try:
        free = shutil.disk_usage(tmp.parent).free
    except OSError:
        return
    if free < nbytes + SPACE_MARGIN:
        raise SpaceRefused(errno.ENOSPC, f"No space left on device ({free / 2**20:.1f} MB free; fundus-cli keeps "
                      f"{SPACE_MARGIN >> 20} MB spare while writing)", str(tmp))
