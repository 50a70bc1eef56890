"""Benchmark fundus_cli.privacy.knn against FAISS IndexFlatL2 and a naive torch.cdist search.

    python benchmarks/knn.py                 # 5,000 x 50,000 x 1,024, k = 1 and 50
    python benchmarks/knn.py --quick         # smoke run in seconds

The FAISS column needs the `bench` extra (pip install -e '.[bench]'); without FAISS the
benchmark still compares ours with the naive version. The three searches run interleaved,
`--repeat` times each, and the median is reported, because a shared machine's speed drifts
between runs. The memory part runs each case in a fresh process and reads its peak resident
set size (VmHWM, reset just before the search), and shows the resident size before the
search (Python, torch, the queries) separately from the growth during it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
from fundus_cli.privacy.knn import knn  # noqa: E402

try:
    import faiss
except ImportError:  # the benchmark is still useful without it
    faiss = None

STREAM_CHUNK = 1000  # rows per chunk of the streamed database (an HDF5 reader's slice)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=5000)
    p.add_argument("--database", type=int, default=50000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--k", default="1,50", help="comma-separated k values")
    p.add_argument("--memory-rows", default="10000,100000",
                   help="streamed database sizes for the memory check ('' to skip)")
    p.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--_memory-case", type=int, default=None, dest="memory_case", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.queries, args.database, args.dim, args.repeat = 500, 5000, 128, 1
        args.memory_rows = "10000,50000"

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    if faiss is not None:
        faiss.omp_set_num_threads(threads)

    if args.memory_case is not None:
        memory_case(args.memory_case, args)
        return

    print(f"# knn benchmark: {args.queries:,} queries x {args.database:,} database x {args.dim} dims, "
          f"float32, seed {args.seed}")
    print(f"# {platform.processor() or platform.machine()}, {threads} threads, torch {torch.__version__}, "
          f"faiss {faiss.__version__ if faiss else 'not installed (pip install faiss-cpu)'}")
    rng = np.random.default_rng(args.seed)
    xq = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    xb = rng.standard_normal((args.database, args.dim), dtype=np.float32)
    index = None
    if faiss is not None:
        index = faiss.IndexFlatL2(args.dim)
        index.add(xb)
    gflop = 2 * args.queries * args.database * args.dim / 1e9

    for k in [int(s) for s in args.k.split(",") if s]:
        methods = {"ours": lambda k=k: knn(xq, xb, k=k), "naive": lambda k=k: naive(xq, xb, k)}
        if index is not None:
            methods["faiss"] = lambda k=k: faiss_search(index, xq, k)
        warm_up(xq, xb, k, index)
        times: dict[str, list[float]] = {m: [] for m in methods}
        results = {}
        for _ in range(args.repeat):
            for name, f in methods.items():
                t0 = time.perf_counter()
                results[name] = f()
                times[name].append(time.perf_counter() - t0)
        med = {m: statistics.median(t) for m, t in times.items()}
        print(f"\nk = {k}  (median of {args.repeat}; all runs in brackets; {gflop:.0f} GFLOP per search)")
        for name in methods:
            runs = ", ".join(f"{t:.2f}" for t in times[name])
            print(f"  {name:6s} {med[name]:7.2f} s  {gflop / med[name]:6.1f} GFLOP/s  [{runs}]")
        if "faiss" in med:
            print(f"  ours/FAISS throughput: {med['faiss'] / med['ours']:.2f}x   "
                  f"ours/naive: {med['naive'] / med['ours']:.2f}x")
            print("  " + agreement(xq, xb, results["ours"], results["faiss"], "FAISS"))
        else:
            print(f"  ours/naive throughput: {med['naive'] / med['ours']:.2f}x")
        print("  " + agreement(xq, xb, results["ours"], results["naive"], "naive"))

    sizes = [int(s) for s in args.memory_rows.split(",") if s]
    if sizes and not Path("/proc/self/clear_refs").exists():
        print("\npeak memory: skipped, it reads Linux's /proc/self/status")
    elif sizes:
        print(f"\npeak memory, streamed database in chunks of {STREAM_CHUNK} rows, "
              f"{args.queries:,} queries, k = 50, default blocks (fresh process per case):")
        for n in sizes:
            cmd = [sys.executable, __file__, "--_memory-case", str(n), "--queries", str(args.queries),
                   "--dim", str(args.dim), "--seed", str(args.seed)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
            print(f"  {n:>9,} rows ({n * args.dim * 4 / 2**20:7.0f} MiB if held in memory): {out}")


def warm_up(xq: np.ndarray, xb: np.ndarray, k: int, index) -> None:  # type: ignore[no-untyped-def]
    """Run each method once on a slice so the timed runs do not pay one-off start-up costs."""
    knn(xq[:64], xb[:4096], k=k)
    naive(xq[:64], xb[:4096], k)
    if index is not None:
        index.search(xq[:64], k)


def naive(xq: np.ndarray, xb: np.ndarray, k: int, chunk: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """torch.cdist on query chunks against the whole database, then topk: the obvious version."""
    q, d = torch.from_numpy(xq), torch.from_numpy(xb)
    dist, idx = [], []
    for s in range(0, len(q), chunk):
        v, i = torch.topk(torch.cdist(q[s:s + chunk], d), k, dim=1, largest=False)
        dist.append(v)
        idx.append(i)
    return torch.cat(dist).numpy(), torch.cat(idx).numpy()


def faiss_search(index: object, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d2, i = index.search(xq, k)  # type: ignore[attr-defined]
    return np.sqrt(np.maximum(d2, 0)), i


def agreement(xq: np.ndarray, xb: np.ndarray, ours: tuple, other: tuple, name: str) -> str:
    """Share of (query, rank) places with the same index; a different index counts as a tie when
    the two rows are equally far from the query in float64 (relative difference < 1e-5)."""
    i_a, i_b = ours[1], other[1]
    same = i_a == i_b
    q_idx, rank = np.nonzero(~same)
    ties = 0
    if len(q_idx):
        q = xq[q_idx].astype(np.float64)
        d_a = np.linalg.norm(q - xb[i_a[q_idx, rank]], axis=1)
        d_b = np.linalg.norm(q - xb[i_b[q_idx, rank]], axis=1)
        ties = int(np.sum(np.abs(d_a - d_b) <= 1e-5 * np.maximum(d_a, d_b)))
    total = same.size
    agree = int(same.sum())
    return (f"index agreement with {name}: {agree / total:.4%} exact, {(agree + ties) / total:.4%} "
            f"allowing ties ({total - agree - ties} real mismatches of {total:,})")


def memory_case(n_rows: int, args: argparse.Namespace) -> None:
    """One streamed search in this (fresh) process; print the growth of its resident set.

    Linux keeps ru_maxrss across fork + exec, so a child started by a big parent would report
    the parent's peak; instead the peak of this process is reset through /proc/self/clear_refs
    and read back as VmHWM, so it covers the search alone.
    """
    rng = np.random.default_rng(args.seed)
    xq = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    knn(xq[:8], rng.standard_normal((64, args.dim), dtype=np.float32), k=1)  # load kernels first

    def chunks():  # generated on the fly and dropped after use, like slices read from HDF5
        for start in range(0, n_rows, STREAM_CHUNK):
            n = min(STREAM_CHUNK, n_rows - start)
            rng_chunk = np.random.default_rng([args.seed, start])
            yield start, rng_chunk.standard_normal((n, args.dim), dtype=np.float32)

    before = proc_status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    dist, idx = knn(xq, chunks, k=50)
    elapsed = time.perf_counter() - t0
    peak = proc_status_mib("VmHWM")
    assert idx.max() < n_rows and np.all(dist[:, 1:] >= dist[:, :-1])
    print(f"peak RSS {peak:6.0f} MiB = {before:.0f} before the search + {peak - before:4.0f} "
          f"during it ({elapsed:.1f} s)")


def proc_status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # reported in kB
    raise RuntimeError(f"{field} not in /proc/self/status")


if __name__ == "__main__":
    main()
