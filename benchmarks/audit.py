"""Time and peak memory of `fundus audit-privacy` on large made-up datasets.

    python benchmarks/audit.py                       # 100,000 training vs 10,000 synthetic at 64 px
    python benchmarks/audit.py --train 25000,100000  # peak memory at two training-set sizes
    python benchmarks/audit.py --quick               # smoke run in a minute

The images are cheap fundus-like renderings (disc, vignette, optic disc, vessels, texture),
all distinct, written once to --data (reused when present). Every audit runs in a fresh
process that reports its wall time and its peak resident set size (VmHWM), so the sizes
compare: flat memory means the peak does not grow with the training set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
from fundus_cli.data import h5  # noqa: E402
from fundus_cli.data.quality import phash  # noqa: E402
from fundus_cli.testing import quick_fundus  # noqa: E402

SIZE = 64
CHUNK = 1000  # images rendered per seeded chunk: file k's first rows equal a bigger file's


def render(n: int, *, seed: int) -> np.ndarray:
    return quick_fundus(n, seed=seed, size=SIZE)[0]


def make(path: Path, n: int, *, split: str, kind: str, seed: int) -> None:
    if path.exists():
        with h5.open_dataset(path) as r:
            if len(r) == n:
                return
    c = (SIZE - 1) / 2
    y, x = np.mgrid[:SIZE, :SIZE] - c
    mask = x * x + y * y <= (SIZE / 2) ** 2
    t0 = time.perf_counter()
    with h5.DatasetWriter(path, image_size=SIZE, split=split, kind=kind, chunk_rows=256) as w:
        for k, a in enumerate(range(0, n, CHUNK)):
            imgs = render(min(CHUNK, n - a), seed=seed * 100_003 + k)
            for j, img in enumerate(imgs):
                i = a + j
                w.append(h5.Record(image=img, mask=mask, circle=(c, c, SIZE / 2), source=f"{split}/{i:06d}.png",
                                   patient=f"{split}-p{i // 2}" if kind == "real" else f"s{i}", phash=phash(img),
                                   dup_group=i))
    print(f"wrote {path} ({n} images) in {time.perf_counter() - t0:.0f} s", flush=True)


def one(args: argparse.Namespace) -> None:
    """Child process: one audit; prints a JSON line with its time and peak memory."""
    import torch

    from fundus_cli.commands.audit import AuditConfig, audit_privacy

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    res = audit_privacy(AuditConfig(train=Path(args.case_train), holdout=Path(args.data) / "holdout.h5",
                                    synthetic=Path(args.data) / "synthetic.h5", out=Path(args.case_out),
                                    encoder_steps=args.encoder_steps, device=args.device, force=True))
    wall = time.perf_counter() - t0
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(json.dumps({"wall_s": round(wall, 1), "peak_rss_mb": round(peak / 1024), "decision": res.decision,
                      "n_train": res.n_train, "n_synthetic": res.n_synthetic, "n_holdout": res.n_holdout_used}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", default="100000", help="comma-separated training-set sizes")
    p.add_argument("--synthetic", type=int, default=10000)
    p.add_argument("--holdout", type=int, default=10000)
    p.add_argument("--encoder-steps", type=int, default=400)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--data", default="bench-out/audit", help="where the made-up datasets go")
    p.add_argument("--make-only", action="store_true", help="write the datasets and stop")
    p.add_argument("--quick", action="store_true", help="2,000 / 8,000 training vs 500 synthetic, 50 steps")
    p.add_argument("--_case-train", dest="case_train", help=argparse.SUPPRESS)
    p.add_argument("--_case-out", dest="case_out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case_train:
        one(args)
        return
    if args.quick:
        args.train, args.synthetic, args.holdout, args.encoder_steps = "2000,8000", 500, 500, 50
    sizes = sorted(int(s) for s in args.train.split(","))
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    make(data / "holdout.h5", args.holdout, split="holdout", kind="real", seed=1)
    make(data / "synthetic.h5", args.synthetic, split="synthetic", kind="synthetic", seed=2)
    for n in sizes:
        make(data / f"train-{n}.h5", n, split="train", kind="real", seed=3)
    if args.make_only:
        return
    for n in sizes:
        cmd = [sys.executable, __file__, "--_case-train", str(data / f"train-{n}.h5"), "--_case-out",
               str(data / f"report-{n}"), "--data", str(data), "--encoder-steps", str(args.encoder_steps),
               "--device", args.device, "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
        res = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"train {n:>7,} vs synthetic {res['n_synthetic']:,} (holdout {res['n_holdout']:,}): "
              f"{res['wall_s']:.0f} s, peak RSS {res['peak_rss_mb']:,} MB, {res['decision']}", flush=True)


if __name__ == "__main__":
    main()
