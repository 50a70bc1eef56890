"""Ingest speed and memory.

Prints, on the same photographs in one run:
  1. images/s per core of the full-decode + Lanczos-resize way (as stylegan2-ada's
     dataset_tool does) vs fundus-cli's reduced-scale decode, side by side;
  2. images/s of a whole `ingest` on all cores;
  3. peak memory of `ingest` for 200 vs 2000 images (flat memory: the ratio should be ~1).

Photographs: the IDRiD set in ../shared/data/idrid/images (12-megapixel camera JPEGs) when
present, else generated phantoms. Usage: python benchmarks/ingest.py [--size 256] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from fundus_cli.data.decode import decode_image
from fundus_cli.data.fov import crop_to_fov, detect_fov

ROOT = Path(__file__).resolve().parents[1]
IDRID = ROOT.parent / "shared" / "data" / "idrid" / "images"


def per_image(path: Path, size: int, reduced: bool) -> np.ndarray:
    """One photograph through decode -> FOV -> crop; `reduced=False` is the reference way."""
    d = decode_image(path, target=size, reduced=reduced)
    img = d.image
    h, w = img.shape[:2]
    f = min(1.0, 1024 / max(h, w))
    small = cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA) if f < 1 else img
    circle = detect_fov(small)
    assert circle is not None, path
    circle = circle.scaled(1 / f)
    interp = cv2.INTER_AREA if reduced else cv2.INTER_LANCZOS4
    return crop_to_fov(img, circle, size=size, interpolation=interp)[0]


def speed_per_core(files: list[Path], size: int, rounds: int) -> tuple[float, float, float]:
    cv2.setNumThreads(1)
    t_full, t_fast, diffs = [], [], []
    for _ in range(rounds):  # interleaved so that machine noise hits both ways alike
        for p in files:
            t0 = time.perf_counter()
            a = per_image(p, size, reduced=False)
            t1 = time.perf_counter()
            b = per_image(p, size, reduced=True)
            t2 = time.perf_counter()
            t_full.append(t1 - t0)
            t_fast.append(t2 - t1)
            diffs.append(np.abs(a.astype(float) - b.astype(float)).mean())
    return 1 / np.median(t_full), 1 / np.median(t_fast), float(np.mean(diffs))


def make_folder(files: list[Path], n: int, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for i in range(n):
        os.symlink(files[i % len(files)].resolve(), dst / f"{i:05d}{files[i % len(files)].suffix}")
    return dst


def ingest_child(raw: Path, out: Path, size: int, workers: int) -> dict:
    """Run one ingest in a fresh process and return its timing and peak memory."""
    code = (
        "import json, resource, sys, time\n"
        "from pathlib import Path\n"
        "from fundus_cli.commands.ingest import IngestConfig, ingest\n"
        f"t=time.perf_counter(); r=ingest(IngestConfig(raw=Path({str(raw)!r}), out=Path({str(out)!r}), "
        f"size={size}, workers={workers}))\n"
        "dt=time.perf_counter()-t\n"
        "print(json.dumps({'seconds': dt, 'images': r.n_train + r.n_holdout, "
        "'parent_peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
        "'worker_peak_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))\n"
    )
    out_text = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out_text.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--images", type=int, default=24, help="photographs in the per-core comparison")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer images, 40 vs 200 for memory")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        if IDRID.is_dir():
            files = sorted(IDRID.glob("*.jpg"))
            source = f"IDRiD ({len(files)} camera JPEGs, {cv2.imread(str(files[0])).shape[1]} px wide)"
        else:
            from fundus_cli.data.phantoms import write_phantoms

            write_phantoms(tmp / "ph", n=64, seed=0)
            files = sorted((tmp / "ph" / "images").glob("*.jpg"))
            source = "phantoms (../shared/data/idrid is absent)"
        n_cmp = 6 if args.quick else args.images
        print(f"photographs: {source}; target size {args.size} px; {os.cpu_count()} cores")

        full, fast, diff = speed_per_core(files[:n_cmp], args.size, 1 if args.quick else args.rounds)
        print("\nper core (one process, same images, interleaved, median):")
        print(f"  full decode + Lanczos resize : {full:7.1f} images/s  ({1000 / full:6.1f} ms/image)")
        print(f"  reduced-scale decode         : {fast:7.1f} images/s  ({1000 / fast:6.1f} ms/image)")
        print(f"  speed-up                     : {fast / full:7.1f} x   (mean abs. pixel difference {diff:.2f}/255)")

        small_n, big_n = (40, 200) if args.quick else (200, 2000)
        a = ingest_child(make_folder(files, small_n, tmp / "a"), tmp / "oa", args.size, 0)
        b = ingest_child(make_folder(files, big_n, tmp / "b"), tmp / "ob", args.size, 0)
        print(f"\nwhole ingest, all cores ({os.cpu_count()} workers):")
        for n, r in ((small_n, a), (big_n, b)):
            print(f"  {n:5d} images: {r['seconds']:6.1f} s  {r['images'] / r['seconds']:6.1f} images/s  "
                  f"peak memory: writer {r['parent_peak_mb']:6.0f} MB, largest worker {r['worker_peak_mb']:6.0f} MB")
        print(f"  peak memory ratio {big_n} vs {small_n} images: writer {b['parent_peak_mb'] / a['parent_peak_mb']:.2f} x, "
              f"worker {b['worker_peak_mb'] / a['worker_peak_mb']:.2f} x")


if __name__ == "__main__":
    main()
