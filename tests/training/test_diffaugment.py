from __future__ import annotations


import pytest
import torch

from fundus_cli.errors import FundusError
from fundus_cli.training.diffaugment import diff_augment



def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch() -> torch.Tensor:
    return torch.rand(8, 3, 32, 32, generator=seeded(123)) * 2 - 1


def test_reproducible_with_a_seeded_generator() -> None:
    x = batch()
    a = diff_augment(x, generator=seeded(0))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, diff_augment(x, generator=seeded(0)))
    assert not torch.equal(a, diff_augment(x, generator=seeded(1)))
    # independent per sample: identical inputs come out differently
    same = x[:1].expand(8, -1, -1, -1)
    out = diff_augment(same, generator=seeded(0))
    assert not torch.equal(out[0], out[1])


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
def test_differentiable(policy: str) -> None:
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=seeded(5)).requires_grad_(True)
    # the same draws on every call make the augmentation a fixed piecewise-linear map of x
    assert torch.autograd.gradcheck(lambda t: diff_augment(t, policy, seeded(7)), (x,))


def test_translation_pads_with_black() -> None:
    x = torch.full((16, 3, 32, 32), 0.5)
    out = diff_augment(x, "translation", seeded(0))
    values = set(out.unique().tolist())
    assert values == {0.5, -1.0}  # black surround, never the reference's grey 0
    # shifts stay within 1/8 of the side (4 px here)
    assert torch.all(out[:, :, 4:-4, 4:-4] == 0.5)
    # shifted content is the image itself, not a resampled version
    ramp = torch.arange(32.0).expand(1, 3, 32, 32) / 32
    moved = diff_augment(ramp.expand(16, -1, -1, -1), "translation", seeded(0))
    inside = moved != -1.0
    assert torch.isin(moved[inside], ramp).all()


def test_cutout_erases_a_patch_to_zero() -> None:
    x = torch.full((4, 3, 32, 32), 0.5)
    out = diff_augment(x, "cutout", seeded(0))
    erased = (out == 0).float().mean(dim=(1, 2, 3))
    assert (erased > 0).all() and (erased <= 0.25).all()


def test_empty_and_unknown_policies() -> None:
    x = batch()
    assert torch.equal(diff_augment(x, ""), x)
    with pytest.raises(FundusError, match="'?rotation'?.*color, translation, cutout"):
        diff_augment(x, "color,rotation")


def test_keeps_channels_last() -> None:
    x = batch().contiguous(memory_format=torch.channels_last)
    out = diff_augment(x, generator=seeded(0))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, diff_augment(batch(), generator=seeded(0)), atol=1e-6)
