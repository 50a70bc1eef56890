from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from fundus_cli.data import h5
from fundus_cli.errors import FundusError
from fundus_cli.fsio import sha256_file
from fundus_cli.commands.sample import SampleConfig, sample


def _images(path: Path) -> np.ndarray:
    with h5.open_dataset(path) as r:
        return r.images()


def test_schema_provenance_and_reproducibility(tiny_runs: dict[str, Path], tiny_data: Path, tmp_path: Path) -> None:
    ck = tiny_runs["gan"]
    r = sample(SampleConfig(checkpoint=ck, n=10, out=tmp_path / "a.h5", batch=4, seed=7))
    with h5.open_dataset(r.out) as d:
        info = d.info
        assert info.kind == "synthetic" and info.split == "synthetic" and len(d) == 10
        assert info.image_size == 32 and info.class_names == ("amd", "diabetic_retinopathy", "healthy")
        p = info.provenance
        assert p["checkpoint_fingerprint"] == sha256_file(ck) and p["arch"] == "gan" and p["step"] == 3
        with h5.open_dataset(tiny_data / "train.h5") as t:
            assert p["dataset_fingerprint"] == t.info.fingerprint
        assert d.sources()[3] == f"{p['checkpoint_fingerprint'][:16]}:seed=7:i=3"
        imgs = d.images()
        assert (imgs[:, ~d.fov_masks()[0]] == 0).all()  # black outside the field of view
        assert imgs.std() > 0
    again = sample(SampleConfig(checkpoint=ck, n=10, out=tmp_path / "b.h5", batch=4, seed=7))
    assert np.array_equal(_images(r.out), _images(again.out))
    other = sample(SampleConfig(checkpoint=ck, n=10, out=tmp_path / "c.h5", batch=4, seed=8))
    assert not np.array_equal(_images(r.out), _images(other.out))


def test_shards_concatenate_to_the_same_set(tiny_runs: dict[str, Path], tmp_path: Path) -> None:
    ck = tiny_runs["vae"]
    whole = _images(sample(SampleConfig(checkpoint=ck, n=11, out=tmp_path / "w.h5", batch=4)).out)
    a = _images(sample(SampleConfig(checkpoint=ck, n=5, out=tmp_path / "s0.h5", batch=4)).out)
    b = _images(sample(SampleConfig(checkpoint=ck, n=6, seed_start=5, out=tmp_path / "s1.h5", batch=4)).out)
    assert np.array_equal(whole, np.concatenate([a, b]))


def test_labels_and_class_balance(tiny_runs: dict[str, Path], tmp_path: Path) -> None:
    ck = tiny_runs["gan"]
    r = sample(SampleConfig(checkpoint=ck, n=6, out=tmp_path / "l.h5", label="healthy", batch=4))
    with h5.open_dataset(r.out) as d:
        assert set(d.labels().tolist()) == {2}
    r = sample(SampleConfig(checkpoint=ck, n=9, out=tmp_path / "u.h5", class_balance="uniform", batch=4))
    assert r.class_counts == {"amd": 3, "diabetic_retinopathy": 3, "healthy": 3}
    with pytest.raises(FundusError, match="valid: 0=amd, 1=diabetic_retinopathy, 2=healthy"):
        sample(SampleConfig(checkpoint=ck, n=2, out=tmp_path / "x.h5", label="glaucoma"))
    with pytest.raises(FundusError, match="without labels"):
        sample(SampleConfig(checkpoint=tiny_runs["vae"], n=2, out=tmp_path / "y.h5", label="healthy"))
    with pytest.raises(FundusError, match="--temperature is for VAE"):
        sample(SampleConfig(checkpoint=ck, n=2, out=tmp_path / "z.h5", temperature=0.5))


def test_defaults_pick_newest_run_and_refuse_overwrite(tiny_runs: dict[str, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for arch in ("gan", "vae"):
        Path("runs", arch).mkdir(parents=True)
        shutil.copy(tiny_runs[arch], Path("runs", arch, "checkpoint.pt"))
    now = time.time()
    os.utime("runs/gan/checkpoint.pt", (now, now))
    os.utime("runs/vae/checkpoint.pt", (now - 100, now - 100))
    r = sample(SampleConfig(n=3, grid=Path("grid.png"), png_dir=Path("pngs")))
    assert r.out == Path("data/synthetic.h5") and r.checkpoint == Path("runs/gan/checkpoint.pt")
    assert Path("grid.png").stat().st_size > 100 and len(list(Path("pngs").glob("*.png"))) == 3
    with pytest.raises(FundusError, match="already exists"):
        sample(SampleConfig(n=3))
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    with pytest.raises(FundusError, match="no checkpoint found"):
        sample(SampleConfig(n=3))


def test_vae_with_a_local_latent_trains_and_samples_its_whole_noise(tiny_data: Path, tmp_path: Path) -> None:
    """The local latent's cells are part of the noise each image is drawn from: training logs
    their KL, the checkpoint records the setting, and sampling draws z and the cells."""
    import json

    from fundus_cli.training.config import TrainConfig
    from fundus_cli.training.loop import train

    r = train(TrainConfig(data=tiny_data / "train.h5", arch="vae", out=tmp_path / "run", size=32, batch=4, width=8,
                          latent_dim=16, steps=2, device="cpu", local_latent=2, log_every=1))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model_config"]["local_latent"] == 2 and config["train_config"]["local_latent"] == 2
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("kl_local" in m for m in lines if "step" in m)
    a = _images(sample(SampleConfig(checkpoint=r.checkpoint, n=4, out=tmp_path / "a.h5", batch=4, seed=1)).out)
    b = _images(sample(SampleConfig(checkpoint=r.checkpoint, n=4, out=tmp_path / "b.h5", batch=4, seed=2)).out)
    assert a.shape == (4, 32, 32, 3) and not np.array_equal(a, b)
