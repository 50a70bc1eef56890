from __future__ import annotations

import cv2
import numpy as np
import torch

from fundus_cli.data.phantoms import plan_phantoms, render_phantom
from fundus_cli.training.orientation import disc_on_left, disc_to_right


def _phantoms(n: int, size: int = 64) -> tuple[torch.Tensor, list[str]]:
    specs = plan_phantoms(n=n, seed=3)
    imgs = []
    for spec in specs:
        img = render_phantom(spec)
        h, w = img.shape[:2]
        side = min(h, w)  # centre square: the disc stays where the eye puts it
        img = img[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
        imgs.append(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, [s.eye for s in specs]


def test_disc_side_matches_the_eye_of_phantoms() -> None:
    x, eyes = _phantoms(12)
    left = disc_on_left(x)
    # phantoms draw a left eye's disc on the left, a right eye's on the right
    assert left.tolist() == [e == "left" for e in eyes]
    assert not disc_on_left(x.flip(3)).eq(left).any()


def test_disc_to_right_mirrors_only_left_discs() -> None:
    x, eyes = _phantoms(6)
    turned = disc_to_right(x)
    assert not disc_on_left(turned).any()
    for i, eye in enumerate(eyes):
        expected = x[i].flip(2) if eye == "left" else x[i]
        assert torch.equal(turned[i], expected)


def test_training_batches_have_every_disc_on_the_right() -> None:
    """The loop finds each image's side once (`disc_sides`) and turns its batches by it."""
    from fundus_cli.training.batches import disc_sides, to_device

    x, eyes = _phantoms(10)
    images = ((x.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()

    class Source:  # the two things disc_sides reads of an ImageSource
        n = len(images)

        def batch(self, idx: np.ndarray) -> np.ndarray:
            return images[idx]

    left = disc_sides(Source(), chunk=3)  # several chunks, the last one short
    assert left.tolist() == [e == "left" for e in eyes]
    idx = np.array([4, 0, 7, 7, 2])
    batch, _ = to_device(images[idx], None, device=torch.device("cpu"), mirror=True,
                          gen=torch.Generator().manual_seed(0), channels_last=False, disc_left=left[idx])
    assert not disc_on_left(batch).any()
