"""An under-trained checkpoint is named wherever it is used (issue 16, item 3)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fundus_cli.cli import app
from fundus_cli.data import h5
from fundus_cli.training_length import from_provenance, shortfall


def test_shortfall_threshold_and_untrusted_values() -> None:
    note = shortfall(25, 4000)
    assert note is not None and note.startswith("under-trained checkpoint: step 25 of 4000 planned (0.6%)")
    assert shortfall(1999, 4000) is not None and shortfall(2000, 4000) is None and shortfall(4000, 4000) is None
    for step, planned in ((None, 4000), (25, None), (True, 4000), ("25", "4000"), (3, 0), (-1, 10), (2.5, 10)):
        assert shortfall(step, planned) is None
    assert from_provenance({"step": 25, "planned_steps": 4000})["note"] == note
    assert from_provenance("not a dict") == {"step": None, "planned_steps": None, "note": None}


def test_sample_says_when_its_checkpoint_is_under_trained(tiny_runs: dict[str, Path], tmp_path: Path) -> None:
    import torch

    ckpt = torch.load(tiny_runs["vae"], weights_only=True)
    assert ckpt["step"] == ckpt["train_config"]["steps"] == 3
    ckpt["train_config"]["steps"] = 4000  # the same weights, as if the run had been stopped at step 3 of 4000
    short = tmp_path / "short.pt"
    torch.save(ckpt, short)
    runner = CliRunner()
    for path, planned, warned in ((short, 4000, True), (tiny_runs["vae"], 3, False)):
        out = tmp_path / f"{path.stem}.h5"
        res = runner.invoke(app, ["sample", "--checkpoint", str(path), "--n", "4", "--out", str(out),
                                  "--device", "cpu", "--json"])
        assert res.exit_code == 0, res.output
        summary = json.loads(res.stdout)
        assert summary["planned_steps"] == planned and summary["under_trained"] is warned
        assert ("under-trained checkpoint: step 3 of 4000 planned" in res.stderr) is warned
        assert f"step 3 of {planned})" in res.stderr
        with h5.open_dataset(out) as r:
            assert r.info.provenance["step"] == 3 and r.info.provenance["planned_steps"] == planned
