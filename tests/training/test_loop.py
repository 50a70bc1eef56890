from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from fundus_cli.errors import FundusError
from fundus_cli.training import checkpoint as ckpt_mod
from fundus_cli.training import trainers
from fundus_cli.training.config import TrainConfig
from fundus_cli.training.batches import batch_indices
from fundus_cli.training.loop import train


def _cfg(folder: Path, out: Path, arch: str, **kw: object) -> TrainConfig:
    base = dict(data=folder / "train.h5", arch=arch, out=out, size=32, batch=4, width=8, latent_dim=16, steps=10,
                snapshot_every=5, sample_every=5, log_every=1, device="cpu", seed=1)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    ck = ckpt_mod.load_checkpoint(path)
    flat = {}
    for group in ("models", "ema", "optimizers"):
        for name, sd in ck[group].items():
            for k, v in (sd.items() if group != "optimizers" else sd["state"].items()):
                if isinstance(v, torch.Tensor):
                    flat[f"{group}.{name}.{k}"] = v
                elif isinstance(v, dict):
                    for kk, vv in v.items():
                        if isinstance(vv, torch.Tensor):
                            flat[f"{group}.{name}.{k}.{kk}"] = vv
    return flat


@pytest.mark.parametrize("arch", ["vae", "gan"])
def test_resume_after_kill_and_after_ctrl_c_is_exact(arch: str, tiny_data: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    straight = train(_cfg(tiny_data, tmp_path / "straight", arch))
    assert straight.step == 10 and not straight.interrupted
    ref = _weights(straight.checkpoint)

    # kill after step 5: only the step-5 snapshot survives, then --resume
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copy(tmp_path / "straight" / ckpt_mod.numbered_name(5), killed / ckpt_mod.LATEST)
    resumed = train(_cfg(tiny_data, killed, arch, resume=True))
    assert resumed.step == 10
    got = _weights(resumed.checkpoint)
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k

    # Ctrl-C during step 6: a checkpoint at step 6, a clean stop, then --resume
    real_step = trainers.TRAINERS[arch].step
    calls = {"n": 0}

    def step_and_interrupt(self, *a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        out = real_step(self, *a, **k)
        if calls["n"] == 6:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(trainers.TRAINERS[arch], "step", step_and_interrupt)
    stopped = train(_cfg(tiny_data, tmp_path / "ctrlc", arch))
    assert stopped.interrupted and stopped.step == 6
    assert ckpt_mod.load_checkpoint(tmp_path / "ctrlc")["step"] == 6
    monkeypatch.setattr(trainers.TRAINERS[arch], "step", real_step)
    done = train(_cfg(tiny_data, tmp_path / "ctrlc", arch, resume=True))
    got = _weights(done.checkpoint)
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    # the log reads like an uninterrupted run's
    steps = [json.loads(line)["step"] for line in (tmp_path / "ctrlc" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))


def test_run_folder_outputs(tiny_data: Path, tmp_path: Path) -> None:
    r = train(_cfg(tiny_data, tmp_path / "run", "gan", steps=6, snapshot_every=2, sample_every=3, keep=2))
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("checkpoint-*.pt")) == ["checkpoint-00000004.pt", "checkpoint-00000006.pt"]
    assert (run / "checkpoint.pt").read_bytes() == (run / "checkpoint-00000006.pt").read_bytes()
    assert {p.name for p in run.glob("samples-*.png")} == {"samples-00000003.png", "samples-00000006.png"}
    assert (run / "loss.png").stat().st_size > 1000
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train_config"]["steps"] == 6 and cfg["dataset"]["fingerprint"]
    ck = ckpt_mod.load_checkpoint(r.checkpoint)
    assert ck["arch"] == "gan" and ck["step"] == 6 and set(ck["models"]) == {"generator", "discriminator"}
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5, 6]
    assert all("d_loss" in x and "g_loss" in x and x["images_per_s"] > 0 for x in lines)
    assert not list(run.glob("*.tmp"))


def test_refusals(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_cfg(tiny_data, run, "vae", steps=2))
    with pytest.raises(FundusError, match="already holds a training run"):
        train(_cfg(tiny_data, run, "vae", steps=2))
    with pytest.raises(FundusError, match="vae checkpoint"):
        train(_cfg(tiny_data, run, "gan", steps=4, resume=True))
    with pytest.raises(FundusError, match="other data"):
        train(_cfg(tiny_data, run, "vae", steps=4, resume=True, batch=2, data=tiny_data / "holdout.h5"))
    with pytest.raises(FundusError, match="fewer than one batch"):
        train(_cfg(tiny_data, tmp_path / "r2", "vae", batch=64))
    with pytest.raises(FundusError, match="does not exist. Train without --resume"):
        train(_cfg(tiny_data, tmp_path / "r3", "vae", resume=True))
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(FundusError, match="lecam .*give a finite weight >= 0"):
            train(_cfg(tiny_data, tmp_path / "r4", "gan", lecam=bad))
    assert not (tmp_path / "r4").exists()
    # a corrupt checkpoint is refused with the file named, and nothing is overwritten
    (run / "checkpoint.pt").unlink()
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(FundusError, match="checkpoint.pt: not a readable"):
        train(_cfg(tiny_data, run, "vae", steps=4, resume=True))
    assert sorted(p.name for p in run.iterdir()) == before


def test_batches_depend_on_seed_and_step_only() -> None:
    a = [batch_indices(s, n=50, batch=8, seed=3) for s in range(12)]
    assert all(np.array_equal(x, batch_indices(s, n=50, batch=8, seed=3)) for s, x in enumerate(a))
    epoch0 = np.concatenate(a[:6])  # 6 steps per epoch: no image twice
    assert len(set(epoch0.tolist())) == 48
    r0 = batch_indices(0, n=50, batch=4, seed=3, rank=0, world=2)
    r1 = batch_indices(0, n=50, batch=4, seed=3, rank=1, world=2)
    assert not set(r0.tolist()) & set(r1.tolist())


def test_resume_applies_budget_and_reporting_options_and_refuses_run_settings(tiny_data: Path, tmp_path: Path) -> None:
    from fundus_cli.training.config import resume_config

    out = tmp_path / "run"
    train(_cfg(tiny_data, out, "vae", steps=4, keep=5))
    ck = ckpt_mod.load_checkpoint(out)
    from fundus_cli.training.config import config_from_json

    saved = config_from_json(ck["train_config"])
    got = resume_config(TrainConfig(data=tiny_data / "train.h5", arch="vae", max_minutes=50, snapshot_every=2,
                                    sample_every=3, keep=1, steps=8, resume=True), saved, out)
    assert (got.max_minutes, got.snapshot_every, got.sample_every, got.keep, got.steps) == (50, 2, 3, 1, 8)
    assert (got.width, got.batch, got.size) == (saved.width, saved.batch, saved.size)  # defaults: the saved ones
    with pytest.raises(FundusError, match=r"cannot change: --lr \(0.5, saved .*--conditional"):
        resume_config(TrainConfig(arch="vae", lr=0.5, conditional=True, resume=True), saved, out)
    # through the loop: a new budget stops the resumed run (was silently ignored)
    r = train(_cfg(tiny_data, out, "vae", steps=10**6, resume=True, max_cpu_minutes=1e-9))
    assert r.step == 5


def test_default_batch_shrinks_to_a_small_dataset_explicit_batch_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    from fundus_cli.data import h5

    with h5.open_dataset(tiny_data / "train.h5") as r:
        n = r.info.count
    said: list[str] = []
    res = train(TrainConfig(data=tiny_data / "train.h5", arch="vae", out=tmp_path / "a", size=32, width=8,
                            latent_dim=16, steps=1, device="cpu"), log=said.append)
    assert ckpt_mod.load_checkpoint(res.checkpoint)["train_config"]["batch"] == n < 32
    assert any(f"batch {n} instead of the preset's 32" in s for s in said)
    with pytest.raises(FundusError, match=f"fewer than one batch of {n + 1}.*--batch {n} or less"):
        train(TrainConfig(data=tiny_data / "train.h5", arch="vae", out=tmp_path / "b", size=32, batch=n + 1,
                          steps=1, device="cpu"))


def test_demo_gan_learning_rate_follows_the_resolution() -> None:
    """lr 5e-4 was tuned at 64 px; above 64 px the demo GAN takes 2e-4 (it collapsed at 128 px with 5e-4)."""
    from fundus_cli.training.config import resolve

    def lrs(**kw: object) -> tuple[float | None, float | None]:
        cfg = resolve(TrainConfig(preset="demo", **kw), stored_size=256, n_images=100, n_classes=2,
                      device=torch.device("cpu"))
        return cfg.lr, cfg.lr_d

    assert lrs(arch="gan", size=64) == lrs(arch="gan", size=32) == (5e-4, 5e-4)
    assert lrs(arch="gan", size=128) == lrs(arch="gan", size=256) == (2e-4, 2e-4)
    assert lrs(arch="gan", size=128, lr=1e-3) == (1e-3, 1e-3)  # what the user asks for wins
    assert lrs(arch="vae", size=128) == lrs(arch="vae", size=64)  # the VAE's own, whatever the size


@pytest.mark.parametrize("preset", ["demo", "default", "large"])
def test_lecam_is_on_up_to_64_px_and_off_above_unless_asked_for(preset: str) -> None:
    """Measured at 64 px (better KID); at 128 px the samples collapsed with it."""
    from fundus_cli.training.config import resolve

    def lecam(**kw: object) -> float | None:
        return resolve(TrainConfig(preset=preset, **kw), stored_size=256, n_images=100, n_classes=2,
                       device=torch.device("cpu")).lecam

    assert lecam(arch="gan", size=64) == lecam(arch="gan", size=32) == 0.1
    assert lecam(arch="gan", size=128) == lecam(arch="gan", size=256) == 0.0
    assert lecam(arch="gan", size=128, lecam=0.3) == 0.3 and lecam(arch="gan", size=64, lecam=0.0) == 0.0
    assert lecam(arch="vae", size=64) == 0.0  # a GAN setting


@pytest.mark.parametrize("preset", ["demo", "default", "large"])
def test_presets_that_augment_steer_the_augmentation_adaptively(preset: str) -> None:
    """With a fixed colour/translation/cutout policy the discriminator never told reals from fakes
    (hinge loss 2.0 for 1,100 steps at 256 px on an H200, and at 64 px on a CPU): the presets that
    augment (default, large) steer its probability by ADA; demo does not augment."""
    from fundus_cli.training.config import resolve

    def resolved(**kw: object) -> TrainConfig:
        return resolve(TrainConfig(preset=preset, **kw), stored_size=256, n_images=100, n_classes=2,
                       device=torch.device("cpu"))

    for size in (64, 128, 256):
        r = resolved(arch="gan", size=size)
        assert r.ada_target == (0.6 if preset != "demo" else 0.0)
        assert (r.diffaugment != "") == (preset != "demo")  # ADA steers a policy only where there is one
    assert resolved(arch="gan", size=64, ada_target=0.0).ada_target == 0.0  # what the user asks for wins
    assert resolved(arch="gan", size=64, ada_target=0.8).ada_target == 0.8
    assert resolved(arch="vae", size=64).ada_target == 0.0  # a GAN setting
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(FundusError, match="ada_target"):
            resolved(arch="gan", size=64, ada_target=bad)


def test_progress_lines_without_a_bar_follow_the_measured_rate(tiny_data: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from fundus_cli.training import loop

    monkeypatch.setattr(loop, "PROGRESS_EVERY_S", 0.0)  # a line after every step
    said: list[str] = []
    train(_cfg(tiny_data, tmp_path / "p", "gan", steps=3), log=said.append)
    lines = [s for s in said if s.startswith("train gan: step")]
    assert [line.split()[3] for line in lines] == ["1/3", "2/3", "3/3"]
    assert lines[-1].endswith("about 0.0 min left") and "images/s" in lines[0]
    line = loop._progress_line(TrainConfig(arch="vae", steps=100), 50, [(0.6, 32)] * 60)
    assert line == "train vae: step 50/100 (50 %), 53.3 images/s, about 0.5 min left"
    # a first step that compiled for 95 s does not make the rate of the steps after it look like 1 image/s
    line = loop._progress_line(TrainConfig(arch="gan", steps=1000), 3, [(95.0, 64), (0.2, 64), (0.2, 64)])
    assert line == "train gan: step 3/1000 (0 %), 320.0 images/s, about 3.3 min left"
    assert "0.7 images/s" in loop._progress_line(TrainConfig(arch="gan", steps=1000), 1, [(95.0, 64)])


def test_compile_says_that_the_first_step_compiles(tiny_data: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda module, **kw: module)  # the loop's side, not Inductor's
    said: list[str] = []
    train(_cfg(tiny_data, tmp_path / "c", "gan", steps=1, compile=True), log=said.append)
    assert any(s.startswith("torch.compile: the first step compiles") and "--minutes" in s for s in said)
    said.clear()
    train(_cfg(tiny_data, tmp_path / "e", "gan", steps=1), log=said.append)
    assert not any("torch.compile" in s for s in said)
