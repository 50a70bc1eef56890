"""The training dataset: images at the training size from memory or streamed from the file, alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fundus_cli.data import h5
from fundus_cli.data.dataset import ImageSource, prefetch, resize_batch
from fundus_cli.errors import FundusError


def _dataset(path: Path, n: int = 10, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    mask = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) <= (size / 2 - i) ** 2 for i in range(n))
    with h5.DatasetWriter(path, image_size=size, split="train", class_names=["a", "b"], options={},
                          provenance={}) as w:
        for i, m in enumerate(mask):
            w.append(h5.Record(image=images[i], mask=m.astype(np.uint8), circle=(size / 2, size / 2, size / 2),
                               source=f"img{i}.png", patient=f"p{i}", label=i % 2, phash=i, dup_group=i,
                               quality={q: 0.5 for q in h5.QUALITY_COLUMNS}))
    return images


def test_memory_and_stream_give_the_same_batches_at_the_training_size(tmp_path: Path) -> None:
    images = _dataset(tmp_path / "train.h5")
    mem = ImageSource(tmp_path / "train.h5", size=16, cache="memory", chunk=3)
    stream = ImageSource(tmp_path / "train.h5", size=16, cache="stream", chunk=3)
    try:
        assert mem.in_memory and not stream.in_memory
        idx = np.array([7, 0, 3, 3])
        expected = resize_batch(images, 16)[idx]
        assert np.array_equal(mem.batch(idx), expected) and np.array_equal(stream.batch(idx), expected)
        assert mem.batch(idx).shape == (4, 16, 16, 3)
        assert list(mem.labels) == [i % 2 for i in range(10)] and tuple(mem.class_names) == ("a", "b")
        # Share of images whose field of view covers each pixel: 1 at the centre, less towards the edge.
        assert mem.fov_frequency.shape == (16, 16) and np.allclose(mem.fov_frequency, stream.fov_frequency)
        assert mem.fov_frequency[8, 8] == pytest.approx(1.0) and mem.fov_frequency[0, 0] < 0.5
        batches = [np.array([1, 2]), np.array([9]), np.array([0, 5, 6])]
        for got, want in zip(prefetch(stream, iter(batches), depth=2), batches, strict=True):
            assert np.array_equal(got, resize_batch(images, 16)[want])
        assert [b.shape[0] for b in prefetch(mem, iter(batches))] == [2, 1, 3]
    finally:
        mem.close()
        stream.close()


def test_a_read_error_in_the_prefetch_thread_reaches_the_training_loop(tmp_path: Path) -> None:
    _dataset(tmp_path / "train.h5")
    stream = ImageSource(tmp_path / "train.h5", size=16, cache="stream")
    try:
        with pytest.raises(IndexError):
            list(prefetch(stream, iter([np.array([0]), np.array([99])])))
    finally:
        stream.close()


def test_bad_options_are_clear_errors(tmp_path: Path) -> None:
    _dataset(tmp_path / "train.h5")
    with pytest.raises(FundusError, match=r"stored at 32 px.*--size 64"):
        ImageSource(tmp_path / "train.h5", size=64)
    with pytest.raises(FundusError, match="--cache 'disk'"):
        ImageSource(tmp_path / "train.h5", size=16, cache="disk")
