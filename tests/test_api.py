"""`fundus_cli.api`, the importable API: each function on tiny inputs (32 px, a few steps), asserting on
the files it writes and the result it returns. `api.demo` runs every command in turn and is tested
through `fundus demo` in tests/test_demo.py."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fundus_cli import api
from fundus_cli.data import h5
from fundus_cli.errors import FundusError
from fundus_cli.schemas.evaluate_report import EVALUATE_REPORT
from fundus_cli.schemas.ingest_report import INGEST_REPORT
from fundus_cli.training.checkpoint import load_checkpoint


def test_config_classes_come_from_their_command_modules_on_first_use() -> None:
    from fundus_cli.commands.sample import SampleConfig
    from fundus_cli.training.config import TrainConfig

    assert api.TrainConfig is TrainConfig and api.SampleConfig is SampleConfig
    with pytest.raises(AttributeError, match="no attribute 'NoSuchConfig'"):
        api.NoSuchConfig  # noqa: B018


def test_phantoms_writes_n_labelled_photographs_and_refuses_to_overwrite(tmp_path: Path) -> None:
    r = api.phantoms(tmp_path / "p", n=4, seed=2)
    with open(r.labels_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert r.n_images == 4 and len(rows) == 4 and sum(r.class_counts.values()) == 4
    assert all((tmp_path / "p" / row[next(iter(row))]).is_file() for row in rows)  # first column: the file
    with pytest.raises(FundusError):
        api.phantoms(tmp_path / "p", n=4, seed=2)


def test_ingest_puts_every_photograph_in_one_split_and_reports_it(phantom_dir: Path, tmp_path: Path) -> None:
    r = api.ingest(api.IngestConfig(raw=phantom_dir, out=tmp_path / "data", size=32, workers=1,
                                    holdout_fraction=0.25))
    with h5.open_dataset(r.train) as t, h5.open_dataset(r.holdout) as h:
        assert (len(t), len(h)) == (r.n_train, r.n_holdout) and len(t) + len(h) == r.n_found == 12
        assert t.info.image_size == 32 and not set(t.patients()) & set(h.patients())  # patients never split
    report = INGEST_REPORT.load(r.report)
    assert report["format_version"] == 1


def test_train_plan_resolves_the_preset_against_the_data_without_training(tiny_data: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    plan = api.train_plan(api.TrainConfig(data=tiny_data / "train.h5", arch="gan", preset="demo", device="cpu"))
    tc = plan["train_config"]
    assert tc["size"] == 32  # the preset's 64 px, capped at the 32 px stored
    assert tc["steps"] == 1500 and tc["lr"] == 5e-4 and tc["diffaugment"] == ""  # the demo GAN's own
    assert tc["batch"] == min(16, plan["dataset"]["images"])
    assert plan["model_config"]["discriminator"] == "strided" and not (tmp_path / "runs").exists()


def test_train_writes_a_checkpoint_and_resumes_it(tiny_data: Path, tmp_path: Path) -> None:
    cfg = api.TrainConfig(data=tiny_data / "train.h5", arch="vae", out=tmp_path / "run", size=32, width=8,
                          latent_dim=16, batch=4, steps=2, device="cpu")
    said: list[str] = []
    r = api.train(cfg, log=said.append)
    ck = load_checkpoint(r.checkpoint)
    assert (r.step, r.steps, ck["step"], ck["arch"]) == (2, 2, 2, "vae") and not r.interrupted
    from dataclasses import replace

    r2 = api.train(replace(cfg, steps=3, resume=True), log=said.append)
    assert r2.step == 3 and load_checkpoint(r2.checkpoint)["step"] == 3
    assert any("resuming" in s and "at step 2 of 3" in s for s in said)


def test_sample_gives_the_same_images_for_the_same_seed(tiny_runs: dict[str, Path], tmp_path: Path) -> None:
    a = api.sample(api.SampleConfig(checkpoint=tiny_runs["gan"], n=5, out=tmp_path / "a.h5", seed=1, device="cpu"))
    b = api.sample(api.SampleConfig(checkpoint=tiny_runs["gan"], n=5, out=tmp_path / "b.h5", seed=1, device="cpu"))
    c = api.sample(api.SampleConfig(checkpoint=tiny_runs["gan"], n=5, out=tmp_path / "c.h5", seed=2, device="cpu"))
    with h5.open_dataset(a.out) as ra, h5.open_dataset(b.out) as rb, h5.open_dataset(c.out) as rc:
        assert len(ra) == 5 and ra.info.kind == "synthetic"
        assert np.array_equal(ra.images(), rb.images()) and not np.array_equal(ra.images(), rc.images())
    assert a.arch == "gan" and sum(a.class_counts.values()) == 5  # a conditional GAN: every image has a class


def test_describe_tells_a_dataset_a_checkpoint_and_a_stranger_apart(tiny_data: Path, tiny_runs: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    d = api.describe(tiny_data / "train.h5")
    c = api.describe(tiny_runs["vae"])
    assert c["type"] == "checkpoint" and c["arch"] == "vae" and c["step"] == 3
    assert d["type"] != "checkpoint" and json.dumps(d)  # JSON-able
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(FundusError, match="not a file that fundus-cli knows"):
        api.describe(tmp_path / "x.txt")


@pytest.fixture(scope="module")
def project(tiny_data: Path, tiny_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder: the tiny data, the VAE run and 8 of its samples."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(tiny_data, root / "data")
    shutil.copytree(tiny_runs["vae"].parent, root / "runs" / "vae")
    api.sample(api.SampleConfig(checkpoint=root / "runs" / "vae" / "checkpoint.pt", n=8,
                                out=root / "data" / "synthetic.h5", device="cpu"))
    return root


def test_evaluate_and_audit_write_reports_that_say_what_they_return(project: Path) -> None:
    data = project / "data"
    ev = api.evaluate(api.EvaluateConfig(real=data / "holdout.h5", synthetic=data / "synthetic.h5",
                                         train=data / "train.h5", out=project / "reports" / "evaluate",
                                         usefulness=False, n_boot=10))
    report = EVALUATE_REPORT.load(ev.report)
    assert set(ev.realism) and report["format_version"] == 1
    au = api.audit_privacy(api.AuditConfig(train=data / "train.h5", holdout=data / "holdout.h5",
                                           synthetic=data / "synthetic.h5", out=project / "reports" / "audit-privacy",
                                           embeddings="pixel", size=32, n_boot=20))
    saved = json.loads(au.report.read_text())
    assert saved["decision"]["status"] == au.decision and saved["decision"]["exit_code"] == au.exit_code
    assert au.flagged_csv.is_file()


def test_report_finds_what_the_project_holds(project: Path) -> None:
    r = api.report(project)
    assert r.out.is_file() and r.root == project and r.runs == 1 and r.datasets >= 3
    assert "<html" in r.out.read_text(encoding="utf-8").lower()
