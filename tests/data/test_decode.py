from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fundus_cli.data.decode import DecodeError, decode_image, jpeg_size, reduction_for


def _jpeg(path: Path, w: int, h: int) -> Path:
    img = np.zeros((h, w, 3), np.uint8)
    cv2.circle(img, (w // 2, h // 2), min(w, h) // 2 - 2, (40, 90, 200), -1)
    cv2.imwrite(str(path), img)
    return path


def test_jpeg_size_reads_header_without_decoding(tmp_path: Path) -> None:
    p = _jpeg(tmp_path / "a.jpg", 1234, 567)
    assert jpeg_size(p.read_bytes()) == (1234, 567)
    assert jpeg_size(b"\x89PNG....") is None


def test_reduction_keeps_enough_pixels() -> None:
    assert reduction_for(4288, 2848, 256) == 8  # 356 px short side >= 320
    assert reduction_for(4288, 2848, 512) == 4
    assert reduction_for(600, 600, 256) == 1
    assert reduction_for(2000, 1600, 64) == 8


def test_reduced_decode_scales_and_converts_to_rgb(tmp_path: Path) -> None:
    p = _jpeg(tmp_path / "a.jpg", 2400, 1600)
    d = decode_image(p, target=64)
    assert d.image.shape == (200, 300, 3) and d.scale == pytest.approx(1 / 8)
    assert d.original_size == (2400, 1600)
    centre = d.image[100, 150].astype(int)
    assert centre[0] > 150 and centre[2] < 60  # BGR (40, 90, 200) became RGB (200, 90, 40)
    full = decode_image(p, target=64, reduced=False)
    assert full.image.shape == (1600, 2400, 3) and full.scale == 1.0


def test_truncated_and_garbage_files_are_rejected(tmp_path: Path) -> None:
    p = _jpeg(tmp_path / "a.jpg", 400, 400)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(p.read_bytes()[:-200])
    with pytest.raises(DecodeError, match="truncated"):
        decode_image(cut, target=64)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    with pytest.raises(DecodeError, match="not a decodable image"):
        decode_image(junk, target=64)
