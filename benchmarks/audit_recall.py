"""Detection recall per transform and false-fail rate of `fundus audit-privacy`, on phantoms.

    python benchmarks/audit_recall.py                     # 1,200 phantoms, 20 null splits (~45 min, 1 thread)
    python benchmarks/audit_recall.py --quick             # 400 phantoms, 4 null splits, 100 steps (~5 min)
    python benchmarks/audit_recall.py --null-splits 40 --per-transform 50

Data: ``--phantoms`` phantom photographs (``fundus phantoms``: JPEG files of 600-2000 px)
ingested the way the real pipeline does (``fundus ingest``: field-of-view detection,
cropping, resizing to ``--image-size``), written once to ``--data`` and reused.

Recall: the ingested images are split by patient into training, holdout and "synthetic"
sets. The synthetic set holds the untouched disjoint real images plus, per transform,
``--per-transform`` transformed copies of random training images; one full audit
(``audit_privacy``, all embeddings) runs on it. An image is *flagged* when some embedding gives
it the smallest possible p-value and a ratio below 1, *confirmed* when the audit counts it as a
copy (FAIL). Per-image flags do not depend on the other synthetic images (p-values compare
with the holdout, ratios with the training set), so one audit measures every transform.
The negative controls (blurry means of 10 training images, 50/50 blends of two holdout
images) must not be confirmed.

False-fail rate: ``--null-splits`` random patient splits, each audited with disjoint real
images as "synthetic"; the share that FAIL (should be at most about alpha, 0.05) and WARN.

Transforms are applied to the stored training image (shifts in pixels of the 64 px working
size, scaled to ``--image-size``); the copy keeps the training image's field-of-view mask,
as a generator's output carries its fixed mask.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
from fundus_cli.data import h5  # noqa: E402
from fundus_cli.data.quality import phash  # noqa: E402

WORKING = 64  # the audit's working size; transforms are specified at it


# --------------------------------------------------------------------------- data


@dataclass
class Pool:
    """Every ingested phantom, in memory."""

    images: np.ndarray  # uint8 (N, S, S, 3)
    masks: np.ndarray  # bool (N, S, S)
    circles: np.ndarray  # (N, 3)
    sources: list[str]
    patients: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def records(self, rows: np.ndarray, *, images: np.ndarray | None = None, prefix: str | None = None,
                patient: str | None = None) -> list[h5.Record]:
        out = []
        for j, i in enumerate(rows):
            img = self.images[i] if images is None else images[j]
            out.append(h5.Record(image=img, mask=self.masks[i], circle=tuple(float(v) for v in self.circles[i]),
                                 source=self.sources[i] if prefix is None else f"{prefix}/{j:05d}",
                                 patient=self.patients[i] if patient is None else f"{patient}-{j}",
                                 phash=phash(img), dup_group=j))
        return out


def phantom_pool(data: Path, *, n: int, seed: int, size: int) -> Pool:
    """n phantoms rendered and ingested at ``size`` px (cached under ``data``)."""
    from fundus_cli.commands.ingest import IngestConfig, ingest
    from fundus_cli.data.phantoms import write_phantoms

    cache = data / f"pool-n{n}-seed{seed}-{size}px.npz"
    if not cache.exists():
        raw, ingested = data / f"raw-n{n}-seed{seed}", data / f"ingested-n{n}-seed{seed}-{size}px"
        t0 = time.perf_counter()
        if not (raw / "labels.csv").exists():
            write_phantoms(raw, n=n, seed=seed, overwrite=True)
        ingest(IngestConfig(raw=raw, out=ingested, size=size, workers=1, holdout_fraction=0.5, force=True))
        parts = []
        for name in ("train.h5", "holdout.h5"):
            with h5.open_dataset(ingested / name) as r:
                parts.append((r.images(), r.fov_masks(), r.circles(), r.sources(), r.patients()))
        order = np.argsort(np.array(parts[0][3] + parts[1][3]), kind="stable")  # by file name: a fixed order
        np.savez_compressed(cache, images=np.concatenate([p[0] for p in parts])[order],
                            masks=np.concatenate([p[1] for p in parts])[order],
                            circles=np.concatenate([p[2] for p in parts])[order],
                            sources=np.array(parts[0][3] + parts[1][3])[order],
                            patients=np.array(parts[0][4] + parts[1][4])[order])
        print(f"rendered and ingested {n} phantoms in {time.perf_counter() - t0:.0f} s -> {cache}", flush=True)
    z = np.load(cache)
    return Pool(images=z["images"], masks=z["masks"].astype(bool), circles=z["circles"],
                sources=[str(s) for s in z["sources"]], patients=[str(p) for p in z["patients"]])


def split_patients(pool: Pool, *, seed: int, fractions: tuple[float, float]) -> tuple[np.ndarray, ...]:
    """Rows of (train, holdout, synthetic) with every patient on one side only."""
    patients = np.array(pool.patients)
    ids = np.unique(patients)
    ids = ids[np.random.default_rng([seed, 7]).permutation(len(ids))]
    a = int(round(fractions[0] * len(ids)))
    b = a + int(round(fractions[1] * len(ids)))
    sides = (set(ids[:a]), set(ids[a:b]), set(ids[b:]))
    return tuple(np.array([i for i, p in enumerate(patients) if p in side], dtype=np.int64) for side in sides)


def write(path: Path, records: list[h5.Record], *, size: int, split: str, kind: str) -> Path:
    with h5.DatasetWriter(path, image_size=size, split=split, kind=kind, chunk_rows=256) as w:
        for rec in records:
            w.append(rec)
    return path


# --------------------------------------------------------------------------- transforms


def _scaled(px: float, size: int) -> float:
    return px * size / WORKING


def shift(img: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Moved by k px (at the working size) along one axis and up to k along the other."""
    s = img.shape[0]
    a, b = int(rng.choice([-k, k])), int(rng.integers(-k, k + 1))
    dy, dx = (a, b) if rng.random() < 0.5 else (b, a)
    m = np.float32([[1, 0, round(_scaled(dx, s))], [0, 1, round(_scaled(dy, s))]])
    return cv2.warpAffine(img, m, (s, s), flags=cv2.INTER_NEAREST, borderValue=0)


def rotate(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    s = img.shape[0]
    m = cv2.getRotationMatrix2D(((s - 1) / 2, (s - 1) / 2), float(rng.choice([-5.0, 5.0])), 1.0)
    return cv2.warpAffine(img, m, (s, s), flags=cv2.INTER_LINEAR, borderValue=0)


def crop90(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    s = img.shape[0]
    c = int(round(0.9 * s))
    a = (s - c) // 2
    return cv2.resize(img[a:a + c, a:a + c], (s, s), interpolation=cv2.INTER_LINEAR)


def jpeg(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 75])
    assert ok
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sigma = rng.uniform(0.02, 0.05) * 255
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).round().astype(np.uint8)


def blur(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), _scaled(rng.uniform(0.5, 1.0), img.shape[0]))


def gamma(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    g = rng.choice([rng.uniform(0.8, 0.9), rng.uniform(1.1, 1.2)])
    return (255 * (img / 255.0) ** g).round().astype(np.uint8)


TRANSFORMS = {
    "exact": lambda img, rng: img,
    "flip": lambda img, rng: np.ascontiguousarray(img[:, ::-1]),
    "shift 2 px": lambda img, rng: shift(img, 2, rng),
    "shift 4 px": lambda img, rng: shift(img, 4, rng),
    "shift 8 px": lambda img, rng: shift(img, 8, rng),
    "shift 8 px + flip": lambda img, rng: np.ascontiguousarray(shift(img, 8, rng)[:, ::-1]),
    "rotation 5 deg": rotate,
    "crop 90 % + resize": crop90,
    "JPEG q75": jpeg,
    "noise 0.02-0.05": noise,
    "blur 0.5-1 px": blur,
    "gamma 0.8-1.2": gamma,
}
CONTROLS = ("blurry mean of 10 (control)", "50/50 holdout blend (control)")


@dataclass
class Planted:
    kind: str  # a TRANSFORMS key, a CONTROLS entry, or "null" (an untouched disjoint real image)
    source: int  # training row it was made from, -1 for none


def synthetic_set(pool: Pool, tr: np.ndarray, ho: np.ndarray, sy: np.ndarray, *, per: int, seed: int
                  ) -> tuple[list[h5.Record], list[Planted]]:
    rng = np.random.default_rng([seed, 11])
    images, masks, planted = [], [], []
    for i in sy:
        images.append(pool.images[i]), masks.append(pool.masks[i]), planted.append(Planted("null", -1))
    for kind, fn in TRANSFORMS.items():
        for j in rng.choice(len(tr), per, replace=False):
            images.append(fn(pool.images[tr[j]], rng)), masks.append(pool.masks[tr[j]])
            planted.append(Planted(kind, int(j)))
    for _ in range(per):
        rows = tr[rng.choice(len(tr), 10, replace=False)]
        mean = pool.images[rows].astype(np.float32).mean(0)
        images.append(cv2.GaussianBlur(mean, (0, 0), _scaled(1.5, mean.shape[0])).round().astype(np.uint8))
        masks.append(pool.masks[rows[0]]), planted.append(Planted(CONTROLS[0], -1))
    for _ in range(per):
        a, b = ho[rng.choice(len(ho), 2, replace=False)]
        images.append(((pool.images[a].astype(np.float32) + pool.images[b]) / 2).round().astype(np.uint8))
        masks.append(pool.masks[a]), planted.append(Planted(CONTROLS[1], -1))
    records = [h5.Record(image=img, mask=m, circle=tuple(float(v) for v in pool.circles[0]),
                         source=f"synthetic/{i:05d}", patient=f"synthetic-{i}", phash=phash(img), dup_group=i)
               for i, (img, m) in enumerate(zip(images, masks))]
    return records, planted


# --------------------------------------------------------------------------- runs


def audit(root: Path, pool: Pool, tr: np.ndarray, ho: np.ndarray, synthetic: list[h5.Record], *, size: int,
          encoder_steps: int, seed: int, embeddings: str) -> tuple[object, float]:
    import torch

    from fundus_cli.commands.audit import AuditConfig, audit_privacy

    train = write(root / "train.h5", pool.records(tr), size=size, split="train", kind="real")
    hold = write(root / "holdout.h5", pool.records(ho), size=size, split="holdout", kind="real")
    synth = write(root / "synthetic.h5", synthetic, size=size, split="synthetic", kind="synthetic")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res = audit_privacy(AuditConfig(train=train, holdout=hold, synthetic=synth, out=root / "report", seed=seed,
                                    encoder_steps=encoder_steps, embeddings=embeddings, force=True))
    return res, time.perf_counter() - t0


def recall(pool: Pool, args: argparse.Namespace, work: Path) -> None:
    tr, ho, sy = split_patients(pool, seed=args.seed, fractions=(0.5, 0.25))
    records, planted = synthetic_set(pool, tr, ho, sy[:args.null_images], per=args.per_transform, seed=args.seed)
    print(f"recall: {len(tr)} training, {len(ho)} holdout, {len(records)} synthetic images "
          f"({args.per_transform} per transform, {min(len(sy), args.null_images)} untouched disjoint real images), "
          f"{args.image_size} px stored, 64 px working size, encoder {args.encoder_steps} steps, embeddings "
          f"{args.embeddings}", flush=True)
    res, wall = audit(work / "recall", pool, tr, ho, records, size=args.image_size,
                      encoder_steps=args.encoder_steps, seed=args.seed, embeddings=args.embeddings)
    with open(res.flagged_csv, newline="") as f:
        rows = {int(r["synthetic_index"]): r for r in csv.DictReader(f)}
    names = list(res.embeddings)
    head = f"{'transform':<28} {'n':>4} {'flagged':>8} {'right src':>9} {'confirmed':>9}  " + \
        " ".join(f"{n:>10}" for n in names)
    print(f"\naudit: {res.decision} in {wall:.0f} s; share of images flagged (some embedding or the hash), "
          "flagged with the right training image, confirmed as copies (FAIL); and flagged per embedding\n" + head)
    print("-" * len(head))
    summary = {}
    for kind in ["null", *TRANSFORMS, *CONTROLS]:
        idx = [i for i, p in enumerate(planted) if p.kind == kind]
        if not idx:
            continue
        flagged = [i for i in idx if i in rows]
        right = [i for i in flagged if planted[i].source >= 0 and int(rows[i]["train_index"]) == planted[i].source]
        confirmed = [i for i in flagged if rows[i]["confirmed"] == "true"]
        per_emb = [sum(n in rows[i]["flagged_in"].split("+") for i in flagged) / len(idx) for n in names]
        share = lambda xs: len(xs) / len(idx)  # noqa: E731
        print(f"{kind:<28} {len(idx):>4} {share(flagged):>8.0%} "
              f"{(share(right) if planted[idx[0]].source >= 0 else float('nan')):>9.0%} {share(confirmed):>9.0%}  "
              + " ".join(f"{v:>10.0%}" for v in per_emb))
        summary[kind] = {"n": len(idx), "flagged": share(flagged), "confirmed": share(confirmed)}
    (Path(args.data) / "recall.json").write_text(json.dumps(summary, indent=1))


def null_splits(pool: Pool, args: argparse.Namespace, work: Path) -> None:
    print(f"\nnull: {args.null_splits} random patient splits (50 % training, 25 % holdout, 25 % disjoint real "
          f"images audited as synthetic, at most {args.null_images}), encoder {args.null_encoder_steps} steps",
          flush=True)
    counts = {"PASS": 0, "WARN": 0, "FAIL": 0, "INCONCLUSIVE": 0}
    reasons: list[str] = []
    walls = []
    for k in range(args.null_splits):
        tr, ho, sy = split_patients(pool, seed=10_000 + k, fractions=(0.5, 0.25))
        syn = pool.records(sy[:args.null_images], prefix="synthetic", patient="synthetic")
        res, wall = audit(work / "null", pool, tr, ho, syn, size=args.image_size,
                          encoder_steps=args.null_encoder_steps, seed=k, embeddings=args.embeddings)
        walls.append(wall)
        counts[res.decision] += 1
        reasons += [f"split {k}: {r}" for r in res.reasons]
        print(f"  split {k:>2}: {res.decision:<5} {'; '.join(res.reasons + res.warnings)[:160]}", flush=True)
    n = args.null_splits
    print(f"\nfalse-fail rate {counts['FAIL']}/{n} = {counts['FAIL'] / n:.1%} (WARN {counts['WARN']}/{n}); "
          f"{np.mean(walls):.0f} s per audit", flush=True)
    for r in reasons:
        print("  FAIL because", r)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phantoms", type=int, default=1200, help="phantom photographs rendered and ingested")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64, help="stored size of the ingested images")
    p.add_argument("--per-transform", type=int, default=40, help="transformed copies per transform")
    p.add_argument("--null-images", type=int, default=300, help="disjoint real images audited as synthetic")
    p.add_argument("--null-splits", type=int, default=20)
    p.add_argument("--encoder-steps", type=int, default=400, help="learned embedding, recall audit")
    p.add_argument("--null-encoder-steps", type=int, default=None, help="learned embedding, null audits "
                   "(default: --encoder-steps)")
    p.add_argument("--embeddings", default="pixel,tiled,learned,registered",
                   help="the audit's --embeddings (pixel,tiled,learned: without the registered distance)")
    p.add_argument("--skip-recall", action="store_true")
    p.add_argument("--data", default="bench-out/audit-recall", help="where phantoms and datasets go")
    p.add_argument("--make-only", action="store_true", help="render and ingest the phantoms and stop")
    p.add_argument("--quick", action="store_true", help="400 phantoms, 10 per transform, 4 null splits, 100 steps")
    args = p.parse_args()
    if args.quick:
        args.phantoms, args.per_transform, args.null_splits, args.encoder_steps = 400, 10, 4, 100
    if args.null_encoder_steps is None:
        args.null_encoder_steps = args.encoder_steps
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    pool = phantom_pool(data, n=args.phantoms, seed=args.seed, size=args.image_size)
    if args.make_only:
        return
    with tempfile.TemporaryDirectory(dir=data) as tmp:
        work = Path(tmp)
        if not args.skip_recall:
            recall(pool, args, work)
        if args.null_splits:
            null_splits(pool, args, work)


if __name__ == "__main__":
    main()
