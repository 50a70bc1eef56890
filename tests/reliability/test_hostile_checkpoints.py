"""Issue 12 item 6: checkpoints with the right format marker but wrong contents."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch


def _del_latent(ck: dict) -> None:
    del ck["model_config"]["latent_dim"]


def _wider(ck: dict) -> None:
    ck["model_config"]["width"] = int(ck["model_config"].get("width", 8)) * 2


def _wrong_tensor(ck: dict) -> None:
    name = next(iter(ck["models"]["generator"]))
    ck["models"]["generator"][name] = torch.zeros(3, 1, 7)


def _train_config_list(ck: dict) -> None:
    ck["train_config"] = ["not", "a", "dict"]


def _train_config_unknown(ck: dict) -> None:
    ck["train_config"]["rm_rf"] = True


def _optimizer_garbage(ck: dict) -> None:
    ck["optimizers"]["generator"] = {"state": {}, "param_groups": [{"params": [0, 1]}]}


def _models_not_dict(ck: dict) -> None:
    ck["models"] = [1, 2]


def _step_text(ck: dict) -> None:
    ck["step"] = "3"


def _bad_config_value(ck: dict) -> None:
    ck["model_config"]["generator"] = "no-such-generator"


def _vessel_inf(ck: dict) -> None:
    ck["model_config"]["vessel"] = float("inf")  # an infinite gain would train on NaN losses


def _ada_text(ck: dict) -> None:
    ck["ada"] = "p=1"


def _ada_nan(ck: dict) -> None:
    ck["ada"] = {"p": float("nan"), "sum": 0.0, "n": 0}


def _lecam_one(ck: dict) -> None:
    ck["lecam"] = [1.0]


def _lecam_nan(ck: dict) -> None:
    ck["lecam"] = [0.5, float("inf")]


CASES: dict[str, Callable[[dict], None]] = {
    "model_config without latent_dim": _del_latent, "model_config of another size": _wider,
    "a tensor of the wrong shape": _wrong_tensor, "train_config a list": _train_config_list,
    "train_config with unknown keys": _train_config_unknown, "optimizer for other parameters": _optimizer_garbage,
    "models a list": _models_not_dict, "step as text": _step_text, "unknown generator": _bad_config_value,
    "an infinite vessel gain": _vessel_inf,
    "ada state as text": _ada_text, "ada probability NaN": _ada_nan, "one LeCam anchor": _lecam_one,
    "an infinite LeCam anchor": _lecam_nan,
}


@pytest.fixture(scope="module")
def pristine(tiny_runs: dict) -> dict[str, Any]:
    return torch.load(tiny_runs["gan"], weights_only=True)


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_checkpoint_is_exit_2_in_info_sample_and_resume(cli, pristine: dict, tiny_data: Path,
                                                                  tmp_path: Path, case: str) -> None:
    import copy

    ck = copy.deepcopy(pristine)
    CASES[case](ck)
    run = tmp_path / "run"
    run.mkdir()
    path = run / "checkpoint.pt"
    torch.save(ck, path)
    r = cli("info", path)
    assert r.code == 2 and str(path) in r.err and "damaged checkpoint" in r.err, r.err
    r = cli("sample", "--checkpoint", path, "--n", "2", "--out", tmp_path / "s.h5", "--device", "cpu")
    assert r.code == 2 and str(path) in r.err, r.err
    r = cli("train", "--arch", "gan", "--data", tiny_data / "train.h5", "--out", run, "--resume", "--steps", "5",
            "--device", "cpu")
    assert r.code == 2 and str(path) in r.err, r.err
    assert not (tmp_path / "s.h5").exists()


def test_intact_checkpoint_still_loads(pristine: dict, tiny_runs: dict) -> None:
    from fundus_cli.training.checkpoint import load_checkpoint

    assert load_checkpoint(tiny_runs["gan"])["step"] == pristine["step"]
    assert load_checkpoint(tiny_runs["vae"])["arch"] == "vae"
