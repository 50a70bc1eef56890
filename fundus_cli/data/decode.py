"""Decoding photographs of any common format into RGB uint8, at reduced scale when that is enough.

A 12-megapixel camera JPEG takes ~150 ms to decode fully but ~15 ms when libjpeg scales
the DCT blocks down by 8 during decoding; for a 256 px dataset the full decode is wasted.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".bmp"})
JPEG_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe"})

_REDUCED_COLOR = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                  8: cv2.IMREAD_REDUCED_COLOR_8}


class DecodeError(Exception):
    """The file is not a usable image; the message is the reason shown in the ingest report."""


@dataclass
class Decoded:
    image: np.ndarray  # RGB uint8 (h, w, 3)
    scale: float  # decoded pixels per original pixel (1/8 .. 1)
    original_size: tuple[int, int]  # (width, height) of the file's full image
    sha256: str = ""  # of the file's bytes: exact duplicates share it
    notes: list[str] = field(default_factory=list)  # conversions applied, for the report


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame marker, without decoding; None if not found."""
    if len(data) < 4 or data[0:2] != b"\xff\xd8":
        return None
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the frame size.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return int(width), int(height)
        i += 2 + length
    return None


def reduction_for(width: int, height: int, target: int) -> int:
    """Largest JPEG DCT reduction (1, 2, 4, 8) that keeps the short side >= 1.25 x target.

    The field of view is usually at least as tall as the short side; the margin leaves
    room for a disc that fills less of the frame, so the final resize still shrinks.
    """
    short = min(width, height)
    for factor in (8, 4, 2):
        if short / factor >= 1.25 * target:
            return factor
    return 1


def _to_uint8(image: np.ndarray, notes: list[str]) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        peak = int(image.max()) if image.size else 0
        # Many 16-bit medical images hold 10- or 12-bit data; dividing those by 257 makes
        # them nearly black, so scale by the smallest bit depth that holds the data.
        bits = 16
        for b in (10, 12, 14):
            if peak < (1 << b):
                bits = b
                break
        notes.append(f"16-bit image scaled to 8 bits (data fits in {bits} bits)")
        return np.clip(image.astype(np.float32) * (255.0 / ((1 << bits) - 1)) + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        notes.append("floating-point image scaled to 8 bits")
        hi = 1.0 if float(np.nanmax(image)) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(image) * (255.0 / hi) + 0.5, 0, 255).astype(np.uint8)
    raise DecodeError(f"unsupported pixel type {image.dtype}")


def _to_rgb(image: np.ndarray, notes: list[str]) -> np.ndarray:
    if image.ndim == 2:
        notes.append("grayscale converted to RGB")
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        notes.append("grayscale converted to RGB")
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 2:
        notes.append("grayscale+alpha converted to RGB (alpha dropped)")
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        notes.append("alpha channel dropped")
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise DecodeError(f"unsupported number of channels ({channels})")


def _read_regular(path: Path) -> bytes:
    """The file's bytes; a named pipe or device (which could block forever) is refused unread."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DecodeError("not a regular file (a named pipe, device or socket): not a photograph")
        return f.read()


def decode_image(path: Path, *, target: int, reduced: bool = True) -> Decoded:
    """Read `path` into RGB uint8, decoding JPEGs at the coarsest scale that still serves `target`.

    `reduced=False` forces a full-resolution decode (used by the benchmark's reference way).
    """
    try:
        data = _read_regular(Path(path))
    except OSError as e:
        raise DecodeError(f"cannot read file: {e.strerror or e}") from None
    if not data:
        raise DecodeError("empty file (0 bytes)")
    buf = np.frombuffer(data, dtype=np.uint8)
    notes: list[str] = []
    digest = hashlib.sha256(data).hexdigest()

    size = jpeg_size(data)
    if size is not None:
        # libjpeg fills a cut-off file with grey and only warns; a half-grey photograph
        # would poison training, so a missing end-of-image marker rejects the file.
        if b"\xff\xd9" not in data[-4096:]:
            raise DecodeError("truncated JPEG (no end-of-image marker): the file was cut off; copy it again")
        factor = reduction_for(*size, target) if reduced else 1
        image = cv2.imdecode(buf, _REDUCED_COLOR[factor])
        if image is None:
            raise DecodeError("corrupt JPEG: OpenCV could not decode it")
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return Decoded(image=rgb, scale=image.shape[1] / size[0], original_size=size, sha256=digest, notes=notes)

    image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DecodeError("not a decodable image (unknown format or corrupt data)")
    if image.ndim == 3 and image.shape[2] > 4:
        raise DecodeError(f"unsupported number of channels ({image.shape[2]})")
    h, w = image.shape[:2]
    rgb = _to_rgb(_to_uint8(image, notes), notes)
    return Decoded(image=rgb, scale=1.0, original_size=(w, h), sha256=digest, notes=notes)
