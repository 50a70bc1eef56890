"""A training run's config.json and metrics.jsonl: stamped with format and format_version by
`fundus train`, read back through schemas/training_run.py, and files from before the stamp still read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fundus_cli import __version__
from fundus_cli.errors import FundusError
from fundus_cli.schemas.training_run import (METRICS, RUN_CONFIG, config_problem, metrics_line, read_config,
                                             read_metrics, write_config)

BODY = {"arch": "vae", "train_config": {"steps": 3}, "model_config": {"image_size": 32}, "device": "cpu"}


def test_config_is_stamped_and_read_back_and_an_unstamped_one_reads_as_version_1(tmp_path: Path) -> None:
    path = write_config(tmp_path / "config.json", BODY)
    obj = json.loads(path.read_text())
    assert list(obj)[:3] == ["format", "format_version", "fundus_cli_version"]
    assert (obj["format"], obj["format_version"], obj["fundus_cli_version"]) == (RUN_CONFIG.format, 1, __version__)
    assert read_config(path) == obj
    old = tmp_path / "old.json"  # what fundus-cli wrote before the stamp
    old.write_text(json.dumps({"fundus_cli_version": "0.1.0", **BODY}))
    assert read_config(old)["train_config"] == {"steps": 3}


def test_a_config_of_another_kind_or_a_newer_version_is_refused_with_the_fix(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"arch": "vae"}))  # neither stamped nor a run's config
    with pytest.raises(FundusError, match=r"other.json: not a fundus-cli training run .*`fundus train`"):
        read_config(other)
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**RUN_CONFIG.stamp(BODY), "format_version": 2}))
    with pytest.raises(FundusError, match=r"newer.json: fundus-cli training run version 2, newer than"):
        read_config(newer)
    assert config_problem({**BODY, "format": "fundus-cli demo summary"}, other) is not None


def test_metrics_lines_carry_the_format_and_old_lines_and_a_torn_last_line_are_read(tmp_path: Path) -> None:
    line = metrics_line({"step": 10, "loss": 0.5})
    assert line.endswith("\n") and json.loads(line) == {"format": METRICS.format, "format_version": 1,
                                                        "step": 10, "loss": 0.5}
    old = json.dumps({"step": 20, "loss": 0.4}) + "\n"  # before the stamp
    rows = read_metrics(line + old + '{"step": 30, "lo', tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [10, 20]
    newer = json.dumps({"format": METRICS.format, "format_version": 9, "step": 40})
    with pytest.raises(FundusError, match="version 9, newer than"):
        read_metrics(line + newer, tmp_path / "metrics.jsonl")


def test_fundus_train_writes_both_through_the_schema(tiny_runs: dict[str, Path]) -> None:
    for arch, ckpt in tiny_runs.items():
        run = ckpt.parent
        config = read_config(run / "config.json")
        assert config["format"] == RUN_CONFIG.format and config["arch"] == arch
        assert config["train_config"]["steps"] == 3
        rows = read_metrics((run / "metrics.jsonl").read_text(), run / "metrics.jsonl")
        assert [r["step"] for r in rows] == [3]  # log_every 10: the last step only
        assert all(r["format"] == METRICS.format and r["format_version"] == 1 for r in rows)
