"""Training images from a dataset file: held in memory when they fit, streamed when they do not.

Images stay uint8 until they reach the device (4x less memory and host-to-device traffic
than float32); the training loop converts them there.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from fundus_cli.data import h5
from fundus_cli.errors import FundusError

CACHE_CHOICES = ("auto", "memory", "stream")


def _available_memory() -> int:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2 << 30


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    """Area-resample a uint8 (B, S, S, 3) batch to (B, size, size, 3)."""
    if images.shape[1] == size:
        return images
    out = np.empty((images.shape[0], size, size, 3), np.uint8)
    for i, im in enumerate(images):
        out[i] = cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA)
    return out


class ImageSource:
    """Images of one dataset file at the training resolution.

    `cache="auto"` keeps them in memory when they take less than a quarter of the available
    memory, else every batch is read from the file (one compressed chunk per image).
    """

    def __init__(self, path: Path, *, size: int, cache: str = "auto", chunk: int = 256) -> None:
        if cache not in CACHE_CHOICES:
            raise FundusError(f"--cache {cache!r}: choose one of {', '.join(CACHE_CHOICES)}.")
        self.path = Path(path)
        self._reader = h5.open_dataset(self.path)
        info = self._reader.info
        self.info = info
        if size > info.image_size:
            self._reader.close()
            raise FundusError(f"{path}: images are stored at {info.image_size} px, so training cannot use "
                              f"--size {size}. Use --size {info.image_size} or less, or ingest again with a larger --size.")
        self.size = size
        self.n = info.count
        self.labels = self._reader.labels()
        self.class_names = info.class_names
        need = self.n * size * size * 3
        self.in_memory = cache == "memory" or (cache == "auto" and need < _available_memory() // 4)
        self._images: np.ndarray | None = None
        masks = np.zeros((size, size), np.float64)
        if self.in_memory:
            self._images = np.empty((self.n, size, size, 3), np.uint8)
        for start in range(0, self.n, chunk):
            stop = min(self.n, start + chunk)
            m = self._reader.fov_masks(start, stop).astype(np.float32)
            masks += sum(cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA) for x in m)
            if self._images is not None:
                self._images[start:stop] = resize_batch(self._reader.images(start, stop), size)
        # The share of images in which each pixel lies inside the field of view.
        self.fov_frequency = (masks / max(self.n, 1)).astype(np.float32)
        if self.in_memory:
            self._reader.close()

    def batch(self, indices: np.ndarray) -> np.ndarray:
        if self._images is not None:
            return self._images[indices]
        return resize_batch(self._reader.take_images(indices), self.size)

    def close(self) -> None:
        if not self.in_memory:
            self._reader.close()


def prefetch(source: ImageSource, index_batches: Iterator[np.ndarray], *, depth: int = 3) -> Iterator[np.ndarray]:
    """Yield source.batch(i) for each index batch, read `depth` batches ahead in a thread.

    For streamed data this overlaps HDF5 reads and decompression with training compute
    (which releases the GIL); for in-memory data it is a plain loop.
    """
    if source.in_memory:
        for idx in index_batches:
            yield source.batch(idx)
        return
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for idx in index_batches:
                if stop.is_set():
                    return
                q.put(source.batch(idx))
            q.put(done)
        except BaseException as e:  # surfaced in the consumer
            q.put(e)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
