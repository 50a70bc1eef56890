"""Which feature space tells known-bad generators from real photographs at a typical
project's sample size? Detection rates of `fundus evaluate`'s realism verdict.

    python benchmarks/features.py DATA_DIR                  # train.h5 + holdout.h5 from `fundus ingest`
    python benchmarks/features.py DATA_DIR --repeats 2 --quick

Used on ../shared/data/idrid516 ingested at 64 px with --holdout-fraction 0.2 (413 train,
103 holdout, labels any_lesion):

    fundus ingest ../shared/data/idrid516/images --labels ../shared/data/idrid516/labels.csv \\
        --id-column file --label-column any_lesion --size 64 --holdout-fraction 0.2 --out /tmp/idrid64

Each repeat splits the training photographs at random into halves A and B. B plays the
training set (the real-vs-real baseline, and what `--features classifier` learns from);
the "generators" return A's photographs, changed:

    real            unchanged (a perfect generator: must NOT be called distinguishable)
    no-vessels      each channel closed with a disc wider than the vessels (colour, disc kept)
    blurred         Gaussian blur, sigma = S/64 (1 px at 64 px)
    colour-shift    red x1.08, blue x0.9 (a warmer cast)
    texture         a 2-px checkerboard of +-4 grey levels (upsampling artefacts)
    discs+texture   no-vessels and texture together: "orange discs with texture"
    few-images      10 photographs, each repeated (no diversity)

For each feature space the verdict is evaluate's: the synthetic-vs-holdout metric's CI
does not overlap the train-vs-holdout baseline's (same sample size). Printed: the share of
repeats in which each metric calls each generator distinguishable, and "fid|kid" (either).
Single-threaded (torch and BLAS), so the figures do not depend on a busy machine's cores.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from fundus_cli.data import h5  # noqa: E402
from fundus_cli.commands.evaluate import EvaluateConfig, _compare, standardise  # noqa: E402
from fundus_cli.metrics.bootstrap import cis_overlap  # noqa: E402
from fundus_cli.metrics.classifier_features import ClassifierFeatures  # noqa: E402
from fundus_cli.metrics.features import RandomCNN  # noqa: E402
from fundus_cli.metrics.fundus_features import FundusFeatures  # noqa: E402
from fundus_cli.metrics.registry import resolve_metrics  # noqa: E402
from fundus_cli.metrics.usefulness import Recipe  # noqa: E402


def _close(images: np.ndarray) -> np.ndarray:
    s = images.shape[1]
    k = max(3, int(round(s / 25)) | 1)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    return np.stack([cv2.morphologyEx(im, cv2.MORPH_CLOSE, disc) for im in images])


def _checker(images: np.ndarray, amplitude: float = 4.0) -> np.ndarray:
    s = images.shape[1]
    yy, xx = np.mgrid[:s, :s]
    pattern = np.where((yy + xx) % 2 == 0, amplitude, -amplitude)[None, :, :, None]
    return np.clip(images.astype(np.float32) + pattern, 0, 255).astype(np.uint8)


def generators(images: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Known-bad 'generators' built from real photographs; black outside each FOV as ingest stores them."""
    s = images.shape[1]
    keep = masks[..., None].astype(np.uint8)
    closed = _close(images) * keep
    few = images[rng.choice(len(images), 10, replace=False)]
    shift = np.clip(images.astype(np.float32) * np.array([1.08, 1.0, 0.9], np.float32), 0, 255).astype(np.uint8)
    return {
        "real": images,
        "no-vessels": closed,
        "blurred": np.stack([cv2.GaussianBlur(im, (0, 0), s / 64) for im in images]) * keep,
        "colour-shift": shift,
        "texture": _checker(images) * keep,
        "discs+texture": _checker(closed) * keep,
        "few-images": np.resize(few, images.shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="folder with train.h5 and holdout.h5")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-boot", type=int, default=20)
    parser.add_argument("--features", default="random,fundus,classifier")
    parser.add_argument("--quick", action="store_true", help="kid only, 20 resamples")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with h5.open_dataset(args.data / "train.h5") as r:
        train, train_masks, train_labels, train_fp = r.images(), r.fov_masks(), r.labels(), r.info.fingerprint
        n_classes = len(r.info.class_names)
    with h5.open_dataset(args.data / "holdout.h5") as r:
        hold, hold_masks = r.images(), r.fov_masks()
    mask = hold_masks.mean(0) > 0.5
    metrics = resolve_metrics("kid" if args.quick else "fid,kid,prdc")
    cfg = EvaluateConfig(n_boot=20 if args.quick else args.n_boot)
    spaces = args.features.split(",")
    print(f"{args.data}: {len(train)} train, {len(hold)} holdout images at {train.shape[1]} px; "
          f"{args.repeats} repeats, {cfg.n_boot} resamples, metrics {', '.join(metrics)}")
    hits: dict[tuple[str, str, str], int] = {}
    seconds: dict[str, float] = {}
    for rep in range(args.repeats):
        rng = np.random.default_rng(rep)
        order = rng.permutation(len(train))
        a, b = order[: len(order) // 2], order[len(order) // 2 :]
        fakes = generators(train[a], train_masks[a], rng)
        for space in spaces:
            t0 = time.perf_counter()
            if space == "random":
                extractor = RandomCNN()
            elif space == "fundus":
                extractor = FundusFeatures()
            else:
                extractor = ClassifierFeatures(train[b], train_labels[b], n_classes=n_classes, seed=rep,
                                               recipe=Recipe(), data_fingerprint=train_fp)

            def feats(x: np.ndarray) -> np.ndarray:
                return np.concatenate([extractor(x[i : i + 128], mask) for i in range(0, len(x), 128)])

            f_hold, f_base = feats(hold), feats(train[b])
            f_fakes = {name: feats(x) for name, x in fakes.items()}
            if space == "fundus":
                f_hold, f_base, *rest = standardise(f_hold, [f_hold, f_base, *f_fakes.values()])
                f_fakes = dict(zip(f_fakes, rest))
            n = min(len(f_base), len(a))
            base = _compare(metrics, f_hold, f_base[:n], cfg)
            for name, f in f_fakes.items():
                res = _compare(metrics, f_hold, f[:n], cfg)
                calls = {k: not cis_overlap((v["ci_low"], v["ci_high"]), (base[k]["ci_low"], base[k]["ci_high"]))
                         for k, v in res.items()}
                calls["fid|kid"] = calls.get("fid", False) or calls.get("kid", False)
                for k, v in calls.items():
                    hits[(space, name, k)] = hits.get((space, name, k), 0) + int(v)
            seconds[space] = seconds.get(space, 0.0) + time.perf_counter() - t0
            print(f"  repeat {rep + 1}, {space}: {time.perf_counter() - t0:.0f} s", flush=True)
        print(f"repeat {rep + 1}/{args.repeats} done", flush=True)
    keys = sorted({k for _, _, k in hits}, key=["fid|kid", "fid", "kid", "precision", "recall", "density",
                                                  "coverage"].index)
    names = list(fakes)
    for space in spaces:
        print(f"\n{space} features ({seconds[space] / args.repeats:.0f} s per repeat: features of "
              f"{len(hold) + len(b) + len(a) * len(names)} images and the metrics)")
        print(f"  {'generator':<14}" + "".join(f"{k:>10}" for k in keys))
        for name in names:
            print(f"  {name:<14}" + "".join(f"{hits[(space, name, k)] / args.repeats:>10.2f}" for k in keys))


if __name__ == "__main__":
    main()
