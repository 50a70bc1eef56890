from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from fundus_cli.data import h5
from fundus_cli.errors import FundusError


def _record(i: int, size: int = 32, label: int = 0) -> h5.Record:
    rng = np.random.default_rng(i)
    return h5.Record(image=rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
                     mask=np.ones((size, size), bool), circle=(15.5, 15.5, 16.0), source=f"img{i}.png",
                     patient=f"p{i // 2}", label=label, phash=i * 7919, dup_group=i,
                     quality={"brightness": 0.3, "contrast": 0.1, "sharpness": 5.0, "fov_fraction": 1.0})


def _write(path: Path, n: int = 5, **kw: object) -> h5.DatasetWriter:
    with h5.DatasetWriter(path, image_size=32, split="train", class_names=("a", "b"), chunk_rows=2, **kw) as w:
        for i in range(n):
            w.append(_record(i, label=i % 2))
    return w


def test_roundtrip_streams_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "d.h5"
    w = _write(path, n=5, options={"size": 32})
    with h5.open_dataset(path) as r:
        assert len(r) == 5 and r.info.class_names == ("a", "b") and r.info.split == "train"
        assert r.info.options == {"size": 32}
        assert r.sources() == [f"img{i}.png" for i in range(5)]
        assert r.patients()[:2] == ["p0", "p0"]
        assert list(r.labels()) == [0, 1, 0, 1, 0]
        np.testing.assert_array_equal(r.images(3, 4)[0], _record(3).image)
        np.testing.assert_array_equal(r.take_images([4, 1, 4]), np.stack([_record(i).image for i in (4, 1, 4)]))
        assert r.compute_fingerprint() == r.info.fingerprint == w.fingerprint
        assert r._file[h5.IMAGES].chunks == (1, 32, 32, 3)
        assert r._file[h5.IMAGES].compression == "gzip"
        rec = r.record(2)
        assert rec.phash == 2 * 7919 and rec.quality["sharpness"] == 5.0


def test_fingerprint_depends_on_content_and_labels(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.h5").fingerprint
    assert _write(tmp_path / "b.h5").fingerprint == a
    with h5.DatasetWriter(tmp_path / "c.h5", image_size=32, split="train", class_names=("a", "b")) as w:
        for i in range(5):
            w.append(_record(i, label=(i + 1) % 2))
    assert w.fingerprint != a


def test_error_inside_with_block_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "d.h5"
    with pytest.raises(RuntimeError):
        with h5.DatasetWriter(path, image_size=32, split="train", chunk_rows=2) as w:
            for i in range(5):
                w.append(_record(i, label=-1))
            raise RuntimeError("crash")
    assert not path.exists() and not h5.DatasetWriter(path, image_size=32, split="train").tmp.exists()


def test_writer_rejects_wrong_shapes_and_labels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        with h5.DatasetWriter(tmp_path / "x.h5", image_size=32, split="train") as w:
            w.append(_record(0, size=16, label=-1))
    with pytest.raises(ValueError, match="label"):
        with h5.DatasetWriter(tmp_path / "y.h5", image_size=32, split="train", class_names=("a",)) as w:
            w.append(_record(0, label=3))


def _tamper(path: Path, fn) -> None:  # type: ignore[no-untyped-def]
    with h5py.File(path, "a") as f:
        fn(f)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.attrs.__setitem__("schema_version", 99), "schema version 99"),
        (lambda f: f.attrs.__setitem__("format", "something else"), "no fundus-cli format marker"),
        (lambda f: f.attrs.__setitem__("class_names", "not json ["), "not valid JSON"),
        (lambda f: f.attrs.__setitem__("class_names", json.dumps([1, 2])), "distinct strings"),
        (lambda f: f.attrs.__setitem__("options", json.dumps([1])), "JSON dict"),
        (lambda f: f.attrs.__setitem__("count", 7), "shape"),
        (lambda f: f.__delitem__(h5.PHASH), "'phash' is missing"),
        (lambda f: f[h5.LABELS].__setitem__(0, 9), "labels outside"),
        (lambda f: f.attrs.__setitem__("fingerprint", "abc"), "SHA-256"),
    ],
)
def test_reader_refuses_files_outside_the_schema(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "d.h5"
    _write(path)
    _tamper(path, change)
    with pytest.raises(FundusError, match=message) as e:
        h5.open_dataset(path)
    assert str(path) in str(e.value)


def test_reader_refuses_non_hdf5_and_missing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_text("hello")
    with pytest.raises(FundusError, match="HDF5 could not open"):
        h5.open_dataset(bad)
    with pytest.raises(FundusError, match="no such file"):
        h5.open_dataset(tmp_path / "missing.h5")
    with pytest.raises(FundusError, match="is a folder"):
        h5.open_dataset(tmp_path)


def test_empty_dataset_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "e.h5"
    with h5.DatasetWriter(path, image_size=32, split="holdout"):
        pass
    with h5.open_dataset(path) as r:
        assert len(r) == 0 and r.take_images([]).shape == (0, 32, 32, 3)
