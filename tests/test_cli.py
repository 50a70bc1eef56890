from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fundus_cli import __version__
from fundus_cli.cli import app
from fundus_cli.data import h5

runner = CliRunner()


def test_help_lists_every_command_with_an_example() -> None:
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    # one entry per command; a narrow terminal wraps an entry onto indented continuation lines
    entries: list[str] = []
    for line in r.stdout.split("Commands:", 1)[1].splitlines():
        if line.startswith("  ") and not line.startswith("   ") and line.strip():
            entries.append(line.strip())
        elif line.strip() and entries:
            entries[-1] += " " + line.strip()
    for cmd in ("demo", "phantoms", "ingest", "train", "sample", "evaluate", "audit-privacy", "report", "info"):
        entry = next(e for e in entries if e.startswith(cmd + " "))
        assert f"e.g. fundus {cmd}" in entry.replace("- ", "-"), entry
    assert "Exit codes" in r.stdout


def test_version() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and __version__ in r.stdout


def test_user_lines_in_a_project_folder(phantom_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`fundus phantoms raw --n 6 && fundus ingest raw` with no other option, then `fundus info`."""
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["phantoms", "raw", "--n", "6", "--seed", "5"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == "raw"
    assert len(list(Path("raw/images").glob("*.jpg"))) == 6
    r = runner.invoke(app, ["ingest", "raw", "--size", "64", "--holdout-fraction", "0.34"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(Path("data/train.h5"))  # main output on stdout, nothing else
    assert "wrote" in r.stderr and "data/holdout.h5" in r.stderr
    with h5.open_dataset(Path("data/train.h5")) as t, h5.open_dataset(Path("data/holdout.h5")) as h:
        assert len(t) + len(h) == 6 and len(h) >= 1
    r = runner.invoke(app, ["info", "data/train.h5", "--json", "--verify"])
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["split"] == "train" and d["images"] + json.loads(
        runner.invoke(app, ["info", "data/holdout.h5", "--json"]).stdout)["images"] == 6
    assert d["fingerprint_verified"] is True and d["pseudonymized"] is False
    # the same line again refuses to overwrite, with the fix in one line and exit code 2
    r = runner.invoke(app, ["ingest", "raw"])
    assert r.exit_code == 2
    assert "already exists" in r.stderr and "--force" in r.stderr and "Traceback" not in r.stderr
    r = runner.invoke(app, ["-q", "ingest", "raw", "--json", "--force", "--size", "32"])
    assert r.exit_code == 0
    assert json.loads(r.stdout)["n_train"] + json.loads(r.stdout)["n_holdout"] == 6


def test_errors_are_one_line_with_exit_code_2(tmp_path: Path) -> None:
    r = runner.invoke(app, ["ingest", str(tmp_path / "missing")])
    assert r.exit_code == 2
    assert r.stderr.strip().startswith("error:") and "folder not found" in r.stderr
    assert "Traceback" not in r.stderr
    r = runner.invoke(app, ["info", str(tmp_path)])
    assert r.exit_code == 2


def test_python_dash_m_runs_the_app() -> None:
    out = subprocess.run([sys.executable, "-m", "fundus_cli", "--version"], capture_output=True, text=True, check=True)
    assert __version__ in out.stdout


def test_train_and_sample_commands_chain(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`fundus train --arch gan` then `fundus sample` with project-layout defaults."""
    monkeypatch.chdir(tmp_path)
    Path("data").mkdir()
    shutil.copy(tiny_data / "train.h5", "data/train.h5")
    small = ["--size", "32", "--width", "8", "--batch", "4", "--steps", "3", "--device", "cpu"]
    r = runner.invoke(app, ["train", "--arch", "gan", "--dry-run", *small])
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["train_config"]["out"] == "runs/gan" and plan["train_config"]["steps"] == 3
    assert not Path("runs").exists()  # a dry run writes nothing
    r = runner.invoke(app, ["train", "--arch", "gan", "--conditional", *small])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == "runs/gan/checkpoint.pt"
    r = runner.invoke(app, ["train", "--arch", "gan", *small])
    assert r.exit_code == 2 and "--resume" in r.stderr
    r = runner.invoke(app, ["train", "--arch", "gan", "--resume", *small[:-4], "--steps", "5", "--device", "cpu"])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(app, ["info", "runs/gan", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["step"] == 5
    r = runner.invoke(app, ["sample", "--n", "5", "--label", "amd", "--grid", "grid.png"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == "data/synthetic.h5" and "runs/gan/checkpoint.pt" in r.stderr
    with h5.open_dataset(Path("data/synthetic.h5")) as d:
        assert len(d) == 5 and set(d.labels().tolist()) == {0} and d.info.provenance["step"] == 5
    r = runner.invoke(app, ["sample", "--n", "5", "--label", "cataract", "--force"])
    assert r.exit_code == 2 and "valid: 0=amd" in r.stderr


def test_audit_privacy_command_exit_codes(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain `fundus audit-privacy` in a project folder; no holdout -> INCONCLUSIVE, exit 3."""
    monkeypatch.chdir(tmp_path)
    Path("data").mkdir()
    shutil.copy(tiny_data / "train.h5", "data/train.h5")
    shutil.copy(tiny_data / "holdout.h5", "data/synthetic.h5")  # stand-in synthetic set (real, unseen)
    r = runner.invoke(app, ["audit-privacy", "--encoder-steps", "5", "--size", "32"])
    assert r.exit_code == 3, r.stderr
    assert "INCONCLUSIVE" in r.stderr and r.stdout.strip() == "reports/audit-privacy/report.json"
    # A line per stage with the time so far, although stderr is not a terminal here (issue 16).
    stages = [s for s in r.stderr.splitlines() if s.startswith("audit-privacy: ")]
    assert any("training images embedded" in s for s in stages) and stages[-1].startswith(
        "audit-privacy: report, flagged.csv and figures written (") and all(s.endswith(" s)") for s in stages)
    assert json.loads(Path("reports/audit-privacy/report.json").read_text())["decision"]["status"] == "INCONCLUSIVE"
