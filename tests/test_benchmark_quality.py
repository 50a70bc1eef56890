"""Smoke tests of benchmarks/quality.py's own parts (the DCGAN anchor, its sample file, the table
and the figure); the benchmark itself is run by hand (`--quick`), never timed in tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fundus_cli.data import h5
from fundus_cli.errors import FundusError

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("quality_benchmark", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("size", [64, 128])
def test_dcgan_anchor_matches_the_image_size(bench, size: int) -> None:
    g, d = bench.DCGANGenerator(size=size), bench.DCGANDiscriminator(size=size)
    x = g(torch.randn(2, 100, 1, 1))
    assert x.shape == (2, 3, size, size)
    assert d(x).shape == (2, 1, 1, 1)
    with pytest.raises(FundusError):
        bench.DCGANGenerator(size=32)


def test_contestants_are_defined_against_real_settings(bench) -> None:
    # A pinned name that is not a TrainConfig field would be dropped at run time (and reported):
    # a typo, or a setting since retired; either way the definition needs a look.
    import dataclasses

    from fundus_cli.training.config import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for name, spec in bench.CONTESTANTS.items():
        assert spec["kind"] in ("dcgan", "fundus"), name
        for key in spec.get("overrides", {}):
            assert key in known, (name, key)
    assert bench.CONTESTANTS["gan"]["overrides"] == {} and bench.CONTESTANTS["vae"]["overrides"] == {}
    # the start's D had none of the strided D's input channels: each one, present or added later,
    # is pinned off, or a new default would change gan-start too
    from fundus_cli.training.config import STRIDED_D_INPUTS

    assert all(bench.CONTESTANTS["gan-start"]["overrides"].get(k) == 0.0 for k in STRIDED_D_INPUTS)


def test_a_variant_is_its_base_with_typed_overrides(bench) -> None:
    name, spec = bench.parse_variant("gan-v4=gan:vessel=4,diffaugment=cutout,orient=false")
    assert name == "gan-v4" and spec["kind"] == "fundus" and spec["arch"] == "gan"
    assert spec["overrides"] == {"vessel": 4, "diffaugment": "cutout", "orient": False}
    _, start = bench.parse_variant("start-b32=gan-start:batch=32")
    assert start["overrides"] == {**bench.CONTESTANTS["gan-start"]["overrides"], "batch": 32}
    assert bench.CONTESTANTS["gan-start"]["overrides"]["batch"] == 16  # the base is not changed
    for bad in ("gan=gan:vessel=4", "x=dcgan:vessel=4", "x=nope:vessel=4", "x=gan:no_such_field=1",
                "x=gan:vessel", "x=gan:", "../x=gan:vessel=4"):
        with pytest.raises(ValueError):
            bench.parse_variant(bad)


def test_contestants_and_variants_are_selected_in_order(bench) -> None:
    specs = bench.select_contestants("gan, dcgan", ["g2=gan:lr=0.001"])
    assert list(specs) == ["gan", "dcgan", "g2"]
    alone = bench.select_contestants("", ["g2=gan:lr=0.001"])  # a contestant added to an earlier run
    assert list(alone) == ["g2"] and alone["g2"]["overrides"]["lr"] == 0.001
    for contestants, variants, message in (("", [], "none given"), ("gan,nope", [], "nope"),
                                           ("gan", ["gan2=gan:lr=1", "gan2=gan:lr=2"], "twice"),
                                           ("gan", ["g=gan:nope=1"], "--variant")):
        with pytest.raises(ValueError, match=message):
            bench.select_contestants(contestants, variants)


def test_dcgan_samples_table_and_figure(bench, tiny_data: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    g = nn.Sequential(nn.ConvTranspose2d(100, 3, 32), nn.Tanh()).eval()  # 32 px, like tiny_data
    synth = bench.write_dcgan_samples(g, tmp_path / "dcgan" / "synthetic.h5", n=70, train_h5=tiny_data / "train.h5",
                                      steps=3)
    with h5.open_dataset(tiny_data / "train.h5") as r:
        classes = r.info.class_names
    with h5.open_dataset(synth) as r:
        info, labels, images = r.info, r.labels(), r.images()
        assert r.compute_fingerprint() == info.fingerprint
    assert (info.count, info.kind, info.split, info.class_names) == (70, "synthetic", "synthetic", classes)
    assert set(labels.tolist()) == set(range(len(classes)))  # random labels in the training shares
    assert len({im.tobytes() for im in images}) == 70  # the batch of 64 and the 6 after it all differ

    # The parts of an evaluate report.json that the benchmark reads (evaluate itself is tested elsewhere).
    def m(v: float) -> dict[str, float]:
        return {"value": v, "ci_low": v - 0.001, "ci_high": v + 0.001}

    stats = {"synthetic_vs_real": {"vessel_density": 0.05, "colour_emd": 30.0, "sharpness": 400.0,
                                   "disc_brightness": 20.0},
             "train_vs_real": {"vessel_density": 0.01, "colour_emd": 9.0, "sharpness": 150.0, "disc_brightness": 12.0},
             "means": {"real": {"vessel_density": 0.026}, "synthetic": {"vessel_density": 0.013}}}
    report = {"realism": {"overall": {"n_real": 12, "n_compared": 48,
                                      "synthetic": {"kid": m(0.0432), "precision": m(0.25), "recall": m(0.125)},
                                      "baseline_train": {"kid": m(0.004), "precision": m(0.9), "recall": m(0.8)}}},
              "fundus_statistics": stats, "notes": []}
    block = bench._kid_block(report)
    assert block["kid_excess"] == pytest.approx(0.0392)
    assert block["recall_real_train"]["value"] == 0.8
    odd = bench.odd_shares(synth, tiny_data / "train.h5")
    assert odd["n"] == 70 and odd["garish"] > 0.9 and odd["flat"] == 0.0  # an untrained generator's noise
    itself = bench.odd_shares(tiny_data / "train.h5", tiny_data / "train.h5")
    # the training images against their own range: at most their extremes (10 images here)
    assert itself["flat"] <= 0.1 and itself["garish"] <= 0.3
    result = {"name": "dcgan", "title": "DCGAN", "minutes": 0.1, "train": {"steps": 3, "batch": 64,
              "images_per_cpu_second": 10.0}, "samples": {"path": str(synth), "n": 70},
              "evaluate": {"random": block, "classifier": {"skipped": "x"}}, "audit": {"decision": "PASS"},
              "odd": {"flat": 0.25, "garish": 0.125, "n": 70}, "odd_holdout": {"flat": 0.0, "garish": 0.02, "n": 12}}
    failed = {"name": "gan", "title": "GAN", "minutes": 0.1, "failed": {"log": "gan/log.txt"}}
    text = bench.table([result, failed])
    lines = text.splitlines()
    assert lines[2].startswith("real train") and lines[3].startswith("dcgan") and "PASS" in lines[3]
    assert lines[3].split()[4:8] == ["43.20", "[42.20,", "44.20]", "39.20"]  # KID, its CI and excess, x 1000
    # the holdout's mean vessel fraction, then the real-train stat distances
    assert lines[2].split()[-9:-4] == ["0.0260", "0.0100", "9.00", "150", "12.00"]
    assert " 0.25  0.12  0.0130  0.0500 " in lines[3]  # P, R, the samples' vessel fraction, its distance
    assert lines[2].split()[-4:-2] == ["0.0", "2.0"] and lines[3].split()[-3:] == ["25.0", "12.5", "PASS"]  # flat%, garish%
    assert "FAILED" in lines[4]

    fig = bench.figure(tmp_path / "quality.png", tiny_data / "holdout.h5", [result, failed], 32)
    import cv2

    png = cv2.imread(str(fig))
    with h5.open_dataset(tiny_data / "holdout.h5") as r:
        n = min(bench.GRID_N, r.info.count)
    rows = -(-n // 8)
    panel_h = 2 * (rows * 34 + 2)  # 32 px shown 2x, 2-px gaps
    assert png.shape[0] == 2 * panel_h + 6  # holdout + dcgan; the failed contestant has no panel
    assert png.shape[1] == 230 + 2 * (8 * 34 + 2)
