"""Benchmark the pieces of `fundus evaluate`: feature extraction and the realism metrics,
each beside a straightforward reference on the same random features.

    python benchmarks/evaluate.py            # 2,000 x 960 features, FID also at 2,048 dims
    python benchmarks/evaluate.py --quick    # smoke run in seconds
    python benchmarks/evaluate.py --data /tmp/idrid64   # one whole `evaluate` with usefulness, per stage

- features: RandomCNN images per second on random 64 px uint8 images (CPU; CUDA too when present).
- FID: ours (Cholesky / nuclear-norm traces, fundus_cli.metrics.fid) vs the pytorch-fid
  formula with scipy.linalg.sqrtm; time and relative difference of the values.
- PRDC: ours (blocked, fundus_cli.metrics.prdc) vs the authors' formulation with three
  all-pairs distance matrices, built with scipy cdist (direct differences) or with one
  GEMM each (as sklearn's pairwise_distances, which the authors' code calls); time, peak
  traced memory, and whether all four values are identical.
- KID: ours (kernel matrices computed once, subset sums as products with 0/1 indicator
  vectors) vs kernels per subset
  (torch-fidelity's way, the previous implementation), 100 subsets of 1,000.
- one resampling replicate of fid + kid + prdc (what each replicate of the intervals costs).

Timings are the median of --repeat runs, methods interleaved, all runs in brackets: a
shared machine's speed drifts between runs. `--threads N` caps BLAS and torch threads
(set before numpy loads): on a machine busy with other work, OpenBLAS threads that wait
for a core spin, and two threads can be many times slower than one. Peak memory is measured with tracemalloc,
which sees numpy's allocations (not BLAS's small work buffers) and is run separately
from the timings, because tracing slows allocation.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path


def _threads_from_argv() -> int | None:
    """--threads must reach the BLAS libraries before numpy loads them."""
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return None


if _threads_from_argv() is not None:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(_threads_from_argv())

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.linalg  # noqa: E402
import torch  # noqa: E402
from scipy.spatial.distance import cdist  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
from fundus_cli.metrics.features import RandomCNN  # noqa: E402
from fundus_cli.metrics.fid import frechet_distance  # noqa: E402
from fundus_cli.metrics.kid import kid  # noqa: E402
from fundus_cli.metrics.prdc import prdc  # noqa: E402
from fundus_cli.metrics.registry import compute_metrics, resolve_metrics  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="feature rows per set")
    p.add_argument("--dim", type=int, default=960, help="feature dims")
    p.add_argument("--fid-cases", default="2000x2048,4096x2048",
                   help="extra FID cases, rows x dims per set ('' to skip)")
    p.add_argument("--images", type=int, default=2048, help="images for the feature throughput")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="BLAS and torch threads (default: all cores)")
    p.add_argument("--data", type=Path, default=None,
                   help="instead: time one whole `evaluate` on DIR/train.h5 + DIR/holdout.h5 from `fundus ingest`, "
                        "with a labelled stand-in synthetic set (the training images, vessels closed and a "
                        "checkerboard added); one line per stage with the elapsed time")
    p.add_argument("--usefulness-seeds", type=int, default=3)
    p.add_argument("--fractions", default="0.1,0.25,0.5,1.0", help="usefulness shares of the real images")
    args = p.parse_args()
    if args.data is not None:
        end_to_end(args)
        return
    if args.quick:
        args.n, args.dim, args.fid_cases, args.images, args.repeat = 300, 128, "200x256", 256, 1

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    print(f"# evaluate benchmark: {args.n:,} real x {args.n:,} fake features, {args.dim} dims, float64, "
          f"seed {args.seed}")
    print(f"# {platform.processor() or platform.machine()}, {threads} threads, numpy {np.__version__}, "
          f"scipy {scipy.__version__}, torch {torch.__version__}, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")

    features(args)
    rng = np.random.default_rng(args.seed)
    real, fake = feature_pair(rng, args.n, args.dim)

    print("\nFID (ours: Gram or Cholesky route, eigenvalues only; reference: scipy.linalg.sqrtm)")
    cases = [(args.n, args.dim)] + [tuple(int(v) for v in c.split("x")) for c in args.fid_cases.split(",") if c]
    for n, d in cases:
        r, f = (real, fake) if (n, d) == (args.n, args.dim) else feature_pair(rng, n, d)
        route = "Gram" if n <= d else "Cholesky"
        res = compare(f"{n:,} x {d}", {"ours": lambda r=r, f=f: frechet_distance(r, f),
                                         "sqrtm": lambda r=r, f=f: sqrtm_fid(r, f)}, args.repeat, note=route)
        print(f"    values: ours {res['ours']:.10g}, sqrtm {res['sqrtm']:.10g}, relative difference "
              f"{abs(res['ours'] - res['sqrtm']) / abs(res['sqrtm']):.1e}")

    print(f"\nPRDC, k = 5 (ours: blocked; references: three all-pairs matrices), {args.n:,} x {args.dim}")
    methods = {"ours": lambda: prdc(real, fake), "all-pairs cdist": lambda: prdc_all_pairs(real, fake, cdist),
               "all-pairs GEMM": lambda: prdc_all_pairs(real, fake, gemm_dist)}
    res = compare("prdc", methods, args.repeat)
    print(f"    values: {', '.join(f'{k} {v:.4f}' for k, v in res['ours'].items())}; identical to "
          f"cdist: {res['ours'] == res['all-pairs cdist']}, to GEMM: {res['ours'] == res['all-pairs GEMM']}")
    for name, fn in methods.items():
        print(f"    peak traced memory, {name:15s}: {peak_mib(fn):7.1f} MiB")
    big = 2 * args.n
    r2, f2 = feature_pair(rng, big, args.dim)
    print(f"    ours at {big:,} x {args.dim}: {peak_mib(lambda: prdc(r2, f2)):.1f} MiB peak (inputs "
          f"{2 * r2.nbytes / 2**20:.0f} MiB); the all-pairs matrices alone would take "
          f"{3 * big * big * 8 / 2**20:.0f} MiB")
    del r2, f2

    print(f"\nKID, 100 subsets of {min(1000, args.n):,} (ours: kernels once, subset sums as "
          f"indicator products; reference: kernels per subset)")
    res = compare("kid", {"ours": lambda: kid(real, fake, seed=0), "per-subset": lambda: kid_per_subset(real, fake)},
                  args.repeat)
    print(f"    values: ours {res['ours'][0]:.6g} +- {res['ours'][1]:.3g}, per-subset {res['per-subset'][0]:.6g}, "
          f"relative difference {abs(res['ours'][0] - res['per-subset'][0]) / abs(res['per-subset'][0]):.1e}")

    print("\nOne resampling replicate (half of each set, without replacement) of fid + kid + prdc")
    metrics = resolve_metrics("fid,kid,prdc")
    half = np.random.default_rng(1)
    compare("replicate", {"fid+kid+prdc": lambda: compute_metrics(
        metrics, real[np.sort(half.permutation(len(real))[: len(real) // 2])],
        fake[np.sort(half.permutation(len(fake))[: len(fake) // 2])], seed=1)}, args.repeat)


def features(args: argparse.Namespace) -> None:
    """RandomCNN images per second on random 64 px images with a circular FOV mask."""
    rng = np.random.default_rng(args.seed)
    images = rng.integers(0, 256, (args.images, 64, 64, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:64, :64]
    mask = (yy - 31.5) ** 2 + (xx - 31.5) ** 2 < 31 ** 2
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"\nfeatures: RandomCNN ({RandomCNN().dim} dims) on {args.images:,} random 64 px uint8 images, "
          "inside a circular field of view")
    for dev in devices:
        net = RandomCNN(device=dev)
        for batch in (64, 256):
            def run(net: RandomCNN = net, batch: int = batch) -> None:
                for s in range(0, len(images), batch):
                    net(images[s:s + batch], mask)
                if dev == "cuda":
                    torch.cuda.synchronize()

            run()  # warm-up: kernels, allocator
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            print(f"  {dev:4s} batch {batch:3d}: {len(images) / med:9,.0f} images/s  "
                  f"[{', '.join(f'{len(images) / t:,.0f}' for t in times)}]")


def compare(label: str, methods: dict[str, Callable[[], object]], repeat: int, note: str = "") -> dict[str, object]:
    times: dict[str, list[float]] = {m: [] for m in methods}
    results: dict[str, object] = {}
    for _ in range(repeat):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    med = {m: statistics.median(t) for m, t in times.items()}
    print(f"  {label}{f'  ({note})' if note else ''}")
    width = max(len(m) for m in methods)
    for name in methods:
        print(f"    {name:{width}s} {med[name]:8.3f} s  [{', '.join(f'{t:.3f}' for t in times[name])}]")
    first, *others = methods
    for b in others:
        print(f"    {b} / {first}: {med[b] / med[first]:.1f}x")
    return results


def feature_pair(rng: np.random.Generator, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Correlated, non-negative 'features' (like ReLU means); the fake set is spread 3 % wider,
    which puts every PRDC value mid-range (many comparisons near the ball edges)."""
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    real = np.abs(rng.standard_normal((n, d)) @ mix)
    fake = np.abs(rng.standard_normal((n, d)) @ mix * 1.03)
    return real, fake


def sqrtm_fid(a: np.ndarray, b: np.ndarray) -> float:
    """pytorch-fid's calculate_frechet_distance on float64 sample statistics."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        off = np.eye(len(s1)) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + off) @ (s2 + off))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def gemm_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sklearn's euclidean_distances: |a|^2 + |b|^2 - 2 a.b, one matrix product."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(d2, 0))


def prdc_all_pairs(real: np.ndarray, fake: np.ndarray, dist: Callable[[np.ndarray, np.ndarray], np.ndarray],
                   k: int = 5) -> dict[str, float]:
    """clovaai/generative-evaluation-prdc's compute_prdc with full distance matrices."""
    real_r = np.partition(dist(real, real), k, axis=1)[:, k]
    fake_r = np.partition(dist(fake, fake), k, axis=1)[:, k]
    d = dist(real, fake)
    return {
        "precision": float((d < real_r[:, None]).any(axis=0).mean()),
        "recall": float((d < fake_r[None, :]).any(axis=1).mean()),
        "density": float((1 / k) * (d < real_r[:, None]).sum(axis=0).mean()),
        "coverage": float((d.min(axis=1) < real_r).mean()),
    }


def kid_per_subset(real: np.ndarray, fake: np.ndarray, subsets: int = 100, size: int = 1000) -> tuple[float, float]:
    """Three kernel matrices per subset; the same subsets as kid(seed=0)."""
    size = min(size, len(real), len(fake))
    rng = np.random.default_rng(0)
    vals = []
    for _ in range(subsets):
        r = real[rng.choice(len(real), size, replace=False)]
        f = fake[rng.choice(len(fake), size, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / a.shape[1] + 1) ** 3 for a, b in ((r, r), (f, f), (r, f)))
        pairs = size * (size - 1)
        vals.append((kxx.sum() - np.trace(kxx)) / pairs + (kyy.sum() - np.trace(kyy)) / pairs - 2 * kxy.mean())
    return float(np.mean(vals)), float(np.std(vals))


def peak_mib(fn: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


if __name__ == "__main__":
    main()


def end_to_end(args: argparse.Namespace) -> None:
    """Wall time of one `fundus evaluate` with usefulness, stage by stage (the progress lines)."""
    import tempfile

    from fundus_cli import progress
    from fundus_cli.data import h5
    from fundus_cli.commands.evaluate import EvaluateConfig, evaluate

    sys.path.insert(0, str(Path(__file__).parent))
    from features import generators  # the known-bad generators of benchmarks/features.py

    threads = args.threads or 1
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        synth = Path(tmp) / "synthetic.h5"
        with h5.open_dataset(args.data / "train.h5") as r:
            images, masks = r.images(), r.fov_masks()
            fake = generators(images, masks, np.random.default_rng(0))["discs+texture"]
            with h5.DatasetWriter(synth, image_size=r.info.image_size, split="synthetic", kind="synthetic",
                                  class_names=r.info.class_names) as w:
                for i in range(len(r)):
                    rec = r.record(i)
                    rec.image = fake[i]
                    w.append(rec)
            n_train = len(r)
        with h5.open_dataset(args.data / "holdout.h5") as r:
            n_hold, size = len(r), r.info.image_size
        fractions = tuple(float(f) for f in args.fractions.split(","))
        print(f"# evaluate end to end: {n_train} train, {n_hold} holdout, {n_train} synthetic images at {size} px; "
              f"{threads} thread(s); usefulness {args.usefulness_seeds} seeds x fractions {fractions}; load average "
              f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
        progress.set_lines(True)
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        r = evaluate(EvaluateConfig(real=args.data / "holdout.h5", synthetic=synth, train=args.data / "train.h5",
                                    out=Path(tmp) / "report", usefulness_seeds=args.usefulness_seeds,
                                    usefulness_fractions=fractions))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        print(f"total: {wall:.0f} s wall, {cpu:.0f} s CPU (this process)")
        if r.usefulness is not None:
            print(f"usefulness: {r.usefulness['summary'].get('headline') or r.usefulness['withheld_reason']}")
