"""`--features fundus`: the descriptor moves where a known-bad generator changes a photograph,
and stays put for more real photographs (the bench: benchmarks/features.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from fundus_cli.data.fov import crop_to_fov, detect_fov
from fundus_cli.data.phantoms import plan_phantoms, render_phantom
from fundus_cli.commands.evaluate import standardise
from fundus_cli.metrics.fundus_features import NAMES, FundusFeatures

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "features.py"


def _phantoms(n: int) -> tuple[np.ndarray, np.ndarray]:
    images, masks = [], []
    for spec in plan_phantoms(n=n, seed=7)[:n]:
        photo = render_phantom(spec)
        crop, mask, _ = crop_to_fov(photo, detect_fov(photo), size=64)
        images.append(crop)
        masks.append(mask)
    return np.stack(images), np.stack(masks)


def test_known_bad_generators_move_the_descriptor_and_real_images_do_not() -> None:
    spec = importlib.util.spec_from_file_location("bench_features", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    images, masks = _phantoms(48)
    mask = masks.mean(0) > 0.5
    extractor = FundusFeatures()
    hold = extractor(images[:16], mask)
    fakes = bench.generators(images[16:32], masks[16:32], np.random.default_rng(0))
    feats = {name: extractor(x, mask) for name, x in fakes.items()}
    feats["more real"] = extractor(images[32:], mask)
    z = dict(zip(feats, standardise(hold, list(feats.values()))))
    shift = {name: dict(zip(NAMES, v.mean(0))) for name, v in z.items()}  # in holdout standard deviations
    for name in ("real", "more real"):
        assert max(abs(x) for x in shift[name].values()) < 1.5, (name, shift[name])
    assert shift["no-vessels"]["vessel_density"] < -1.5 and shift["no-vessels"]["line_p90"] < -1.5
    assert shift["blurred"]["band0_g"] < -1.5 and shift["blurred"]["checker_g"] < -3
    assert shift["texture"]["checker_g"] > 2 and shift["discs+texture"]["checker_g"] > 2
    assert shift["discs+texture"]["vessel_density"] < -1.5
    # few-images: ten photographs repeated leave the mean near real but shrink the spread
    assert np.median(z["few-images"].std(0) / z["real"].std(0)) < 0.9
