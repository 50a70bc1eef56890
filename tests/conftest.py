from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 phantom photographs (6 patients, both eyes) with labels.csv; treat as read-only."""
    from fundus_cli.data.phantoms import write_phantoms

    out = tmp_path_factory.mktemp("phantoms") / "raw"
    write_phantoms(out, n=12, seed=5)
    return out


@pytest.fixture
def raw_copy(phantom_dir: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the phantom folder."""
    dst = tmp_path / "raw"
    shutil.copytree(phantom_dir, dst)
    return dst


@pytest.fixture
def shared_data():
    """shared_data("idrid", "images") -> the folder, or a clean skip when ../shared is absent."""

    def get(*parts: str) -> Path:
        path = SHARED.joinpath("data", *parts)
        if not path.exists():
            pytest.skip(f"{path} is absent (the real photographs live in ../shared beside the repository)")
        return path

    return get


@pytest.fixture(scope="session")
def tiny_data(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/ folder with train.h5 and holdout.h5 of the 12 phantoms at 32 px; treat as read-only."""
    from fundus_cli.commands.ingest import IngestConfig, ingest

    out = tmp_path_factory.mktemp("tiny") / "data"
    ingest(IngestConfig(raw=phantom_dir, out=out, size=32, workers=1, holdout_fraction=0.25))
    return out


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny test tensors run fastest on one thread; OpenMP's team on a busy 2-core machine
    can make them 10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_runs(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints of a conditional GAN and an unconditional VAE trained for 3 steps at 32 px."""
    import torch

    from fundus_cli.training.config import TrainConfig
    from fundus_cli.training.loop import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for arch, conditional in (("gan", True), ("vae", False)):
        r = train(TrainConfig(data=tiny_data / "train.h5", arch=arch, out=root / arch, size=32, batch=4, width=8,
                              latent_dim=16, steps=3, device="cpu", conditional=conditional))
        out[arch] = r.checkpoint
    return out
