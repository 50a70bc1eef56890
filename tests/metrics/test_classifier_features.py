"""`--features classifier`: the penultimate layer of the usefulness classifier, trained on the
labelled real training set with the usefulness recipe, fingerprinted in the report."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fundus_cli.cli import app
from fundus_cli.data import h5
from fundus_cli.errors import FundusError
from fundus_cli.commands.evaluate import EvaluateConfig, evaluate
from fundus_cli.metrics.classifier_features import ClassifierFeatures
from fundus_cli.metrics.usefulness import Recipe, _to_tensor, train_classifier

FAST = Recipe(epochs=1, min_steps=30, batch=16, width=8, size=32)


def _discs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half red discs, half red discs with a bright blob; (images, labels, disc mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    disc = (yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 14**2
    labels = np.arange(n) % 2
    out = np.zeros((n, 32, 32, 3), np.uint8)
    for i in range(n):
        img = np.zeros((32, 32, 3), float)
        img[disc] = [150, 60, 30]
        img += rng.normal(0, 12, img.shape)
        if labels[i]:
            img[(yy - 16) ** 2 + (xx - rng.integers(8, 14)) ** 2 < 9] = [240, 220, 120]
        out[i] = np.clip(img * disc[..., None], 0, 255)
    return out, labels, disc


def test_features_are_the_usefulness_classifiers_penultimate_layer() -> None:
    images, labels, disc = _discs(24)
    ext = ClassifierFeatures(images, labels, n_classes=2, seed=3, recipe=FAST, data_fingerprint="f" * 64)
    # the very network the usefulness test trains on these images with this recipe and seed
    ref = train_classifier(images, labels, n_classes=2, seed=3, recipe=FAST)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, ext.model.state_dict()[k]), k
    f = ext(images, disc)
    assert f.shape == (24, FAST.width * 8) == (24, ext.dim) and f.dtype == np.float64
    # penultimate: the head applied to the features gives the classifier's logits
    with torch.no_grad():
        logits = ext.model(_to_tensor(images, FAST.size)).double().numpy()
        head = copy.deepcopy(ext.model.head).double()
        np.testing.assert_allclose(head(torch.from_numpy(f)).numpy(), logits, rtol=1e-5, atol=1e-6)
    # outside the field of view nothing counts
    noisy = images.copy()
    noisy[:, ~disc] = 200
    np.testing.assert_array_equal(ext(noisy, disc), f)
    assert np.abs(ext(noisy) - f).max() > 1e-4


def test_same_recipe_data_and_seed_give_the_same_features_and_fingerprint() -> None:
    images, labels, _ = _discs(16)
    a = ClassifierFeatures(images, labels, n_classes=2, seed=0, recipe=FAST, data_fingerprint="a" * 64)
    b = ClassifierFeatures(images, labels, n_classes=2, seed=0, recipe=FAST, data_fingerprint="a" * 64)
    assert a.fingerprint == b.fingerprint and a.weights_sha256 == b.weights_sha256
    np.testing.assert_array_equal(a(images), b(images))
    assert a.definition == {"recipe": asdict(FAST), "train_fingerprint": "a" * 64, "seed": 0, "n_classes": 2,
                            "train_images": 16}
    other_seed = ClassifierFeatures(images, labels, n_classes=2, seed=1, recipe=FAST, data_fingerprint="a" * 64)
    assert other_seed.fingerprint != a.fingerprint and other_seed.weights_sha256 != a.weights_sha256
    other_data = ClassifierFeatures(images, labels, n_classes=2, seed=0, recipe=FAST, data_fingerprint="b" * 64)
    assert other_data.fingerprint != a.fingerprint


def _cfg(data: Path, out: Path, **kw) -> EvaluateConfig:  # type: ignore[no-untyped-def]
    # The 10 training images on every side: the 2 holdout images are too few to resample.
    return EvaluateConfig(real=data / "train.h5", synthetic=data / "train.h5", train=data / "train.h5", out=out,
                          features="classifier", metrics="fid,kid", n_boot=3, usefulness=False,
                          usefulness_steps=20, **kw)


def test_evaluate_records_the_classifier_in_the_report(tiny_data: Path, tmp_path: Path) -> None:
    r1 = evaluate(_cfg(tiny_data, tmp_path / "a"))
    r2 = evaluate(_cfg(tiny_data, tmp_path / "b"))
    rep1, rep2 = (json.loads(r.report.read_text()) for r in (r1, r2))
    f = rep1["features"]
    with h5.open_dataset(tiny_data / "train.h5") as r:
        fingerprint, names = r.info.fingerprint, list(r.info.class_names)
    assert f["name"] == "classifier" and f["dim"] == Recipe().width * 8
    assert f["recipe"] == asdict(Recipe(min_steps=20, size=32))  # the usefulness recipe at the compared size
    assert f["train_fingerprint"] == fingerprint and f["seed"] == 0 and f["class_names"] == names
    assert len(f["fingerprint"]) == 64 and len(f["weights_sha256"]) == 64
    assert rep2["features"] == f  # deterministic: same network...
    assert rep2["realism"] == rep1["realism"]  # ...same numbers
    assert any("baseline is pessimistic" in n for n in r1.notes)
    other = evaluate(_cfg(tiny_data, tmp_path / "c", seed=1))
    assert json.loads(other.report.read_text())["features"]["fingerprint"] != f["fingerprint"]


def _unlabelled(data: Path, out: Path) -> Path:
    with h5.open_dataset(data / "train.h5") as r:
        n, size = len(r), r.info.image_size
        with h5.DatasetWriter(out, image_size=size, split="train") as w:
            for i in range(n):
                rec = r.record(i)
                rec.label = -1
                w.append(rec)
    return out


def test_classifier_features_need_a_labelled_training_set(tiny_data: Path, tmp_path: Path) -> None:
    bare = _unlabelled(tiny_data, tmp_path / "unlabelled.h5")
    with pytest.raises(FundusError) as e:
        evaluate(EvaluateConfig(real=bare, synthetic=bare, train=bare, out=tmp_path / "x", features="classifier",
                                usefulness=False))
    msg = str(e.value)
    assert msg.startswith(str(bare)) and "labelled" in msg and "--features random" in msg and "inception" in msg
    with pytest.raises(FundusError, match="there is none"):
        evaluate(EvaluateConfig(real=tiny_data / "train.h5", synthetic=tiny_data / "train.h5", train=None,
                                out=tmp_path / "y", features="classifier", usefulness=False))
    res = CliRunner().invoke(app, ["evaluate", "--real", str(bare), "--synthetic", str(bare), "--train", str(bare),
                                   "--out", str(tmp_path / "z"), "--features", "classifier", "--no-usefulness"])
    assert res.exit_code == 2 and "Traceback" not in res.output + res.stderr
    assert str(bare) in res.stderr and "--features random" in res.stderr
    assert not (tmp_path / "z").exists()
