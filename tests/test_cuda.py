"""The CUDA code paths: training with and without bf16 autocast, resume, torch.compile, and a
run trained on a GPU sampled on a CPU with the GPU's images.

They need a CUDA GPU and are skipped without one (this project's CI has none); they are run on
a lent GPU by `benchmarks/gpu_check.sh`, whose output is quoted in the notes of issue 10. The
CPU-side rules of the same options (--amp refused on a CPU, --device cuda without a GPU) are
tested in tests/training and tests/test_cli.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fundus_cli.training import checkpoint as ckpt_mod
from fundus_cli.training.config import TrainConfig
from fundus_cli.training.loop import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh)")


def _cfg(folder: Path, out: Path, arch: str, **kw: object) -> TrainConfig:
    base = dict(data=folder / "train.h5", arch=arch, out=out, size=32, batch=4, width=8, latent_dim=16, steps=10,
                snapshot_every=5, sample_every=5, log_every=1, device="cuda", seed=1, conditional=True)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _models(path: Path) -> dict[str, torch.Tensor]:
    ck = ckpt_mod.load_checkpoint(path)
    return {f"{g}.{n}.{k}": v for g in ("models", "ema") for n, sd in ck[g].items() for k, v in sd.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point()}


def _images(path: Path) -> np.ndarray:
    from fundus_cli.data.h5 import open_dataset

    with open_dataset(path) as r:
        return r.images().astype(np.int16)


@pytest.mark.parametrize("arch", ["gan", "vae"])
@pytest.mark.parametrize("amp", ["bf16", "off"])
def test_train_on_cuda_resumes_and_samples_on_a_cpu(arch: str, amp: str, tiny_data: Path, tmp_path: Path) -> None:
    from fundus_cli.commands.sample import SampleConfig, sample

    straight = train(_cfg(tiny_data, tmp_path / "straight", arch, amp=amp))
    assert straight.step == 10 and not straight.interrupted
    ck = ckpt_mod.load_checkpoint(straight.checkpoint)
    assert ck["train_config"]["amp"] == amp
    ref = _models(straight.checkpoint)
    assert all(torch.isfinite(v).all() for v in ref.values())

    # resume from the step-5 snapshot. GPU kernels (atomics in cuDNN's and bilinear upsampling's
    # backward passes) are not bitwise deterministic, and Adam turns a rounding-level gradient
    # into a full step, so the yardstick is a second straight run: resuming may differ from the
    # first run by no more than rerunning it does (a lost optimiser or RNG state differs by far more)
    again = _models(train(_cfg(tiny_data, tmp_path / "again", arch, amp=amp)).checkpoint)
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copy(tmp_path / "straight" / ckpt_mod.numbered_name(5), resumed_dir / ckpt_mod.LATEST)
    resumed = train(_cfg(tiny_data, resumed_dir, arch, amp=amp, resume=True))
    got = _models(resumed.checkpoint)
    assert resumed.step == 10 and got.keys() == ref.keys()

    def dist(a: dict[str, torch.Tensor]) -> float:
        return max(float((a[k] - ref[k]).abs().max()) for k in ref)

    print(f"{arch} {amp}: resuming differs from the first run by {dist(got):.3g}, rerunning by {dist(again):.3g}")
    assert dist(got) <= 4 * dist(again) + 1e-6, (dist(got), dist(again))

    # the GPU-trained checkpoint samples on a CPU, and the images match the GPU's
    for dev in ("cpu", "cuda"):
        sample(SampleConfig(checkpoint=straight.checkpoint, n=8, out=tmp_path / f"{dev}.h5", device=dev))
    a, b = (_images(tmp_path / f"{dev}.h5") for dev in ("cpu", "cuda"))
    assert a.shape == b.shape == (8, 32, 32, 3)
    assert np.abs(a - b).mean() < 2.0 and np.abs(a - b).max() <= 40


def test_compiled_gan_trains_with_bf16(tiny_data: Path, tmp_path: Path) -> None:
    r = train(_cfg(tiny_data, tmp_path / "compiled", "gan", amp="bf16", compile=True, steps=4, snapshot_every=4,
                   sample_every=4))
    assert r.step == 4
    ck = ckpt_mod.load_checkpoint(r.checkpoint)
    assert ck["train_config"]["compile"] is True
    # torch.compile wraps modules as OptimizedModule (keys prefixed `_orig_mod.`); the checkpoint
    # must hold the plain modules' keys so that an uncompiled sampler can load it
    assert not any("_orig_mod" in k for sd in ck["models"].values() for k in sd)
    assert all(torch.isfinite(v).all() for v in _models(r.checkpoint).values())

