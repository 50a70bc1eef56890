from __future__ import annotations

import cv2
import numpy as np

from fundus_cli.data.quality import DUP_CORRELATION, detail_signature, duplicate_groups, parse_min_quality


def test_hash_matches_need_confirmation_and_chains_join() -> None:
    hashes = np.array([5, 5, 5, 1 << 40], dtype=np.uint64)
    # 0~1 confirmed, 1~2 confirmed (0 and 2 then share a group by the chain), 0~2 rejected
    ok = {(0, 1), (1, 2)}
    groups = duplicate_groups(hashes, max_distance=2, confirm=lambda i, j: (i, j) in ok)
    assert groups.tolist() == [0, 0, 0, 3]
    assert duplicate_groups(hashes, max_distance=2, confirm=lambda i, j: False).tolist() == [0, 1, 2, 3]
    # exact keys join without confirmation
    assert duplicate_groups(hashes, max_distance=0, exact_keys=["a", "b", "c", "a"],
                            confirm=lambda i, j: False).tolist() == [0, 1, 2, 0]


def test_detail_signature_tells_copies_from_lookalikes(phantom_dir) -> None:  # type: ignore[no-untyped-def]
    paths = sorted((phantom_dir / "images").glob("*.jpg"))
    a, b = (cv2.cvtColor(cv2.resize(cv2.imread(str(p)), (256, 256), interpolation=cv2.INTER_AREA),
                         cv2.COLOR_BGR2RGB) for p in paths[:3:2])
    copy = cv2.imdecode(cv2.imencode(".jpg", cv2.resize(cv2.resize(a, (160, 160)), (256, 256)),
                                     [cv2.IMWRITE_JPEG_QUALITY, 75])[1], cv2.IMREAD_COLOR)
    sa = detail_signature(a)
    assert float((sa * detail_signature(copy)).mean()) >= DUP_CORRELATION
    assert float((sa * detail_signature(b)).mean()) < DUP_CORRELATION


def test_min_quality_parsing() -> None:
    assert parse_min_quality("brightness=0.1, sharpness=20") == {"brightness": 0.1, "sharpness": 20.0}
    assert parse_min_quality(None) == {}
