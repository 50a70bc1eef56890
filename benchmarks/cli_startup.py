"""How long `fundus --help` and `fundus <command> --help` take, in fresh processes.

Each figure is the median wall time of `python -m fundus_cli [<command>] --help` over
--runs fresh subprocesses (the first run of each is also timed: it is the one a user sees
after the files left the page cache). Target (issue 13): under 0.5 s. The figure is
dominated by Python, typer and rich starting up; torch, h5py and scipy must not be among
the imports (tests/test_import_contract.py checks that structurally).

Usage: python benchmarks/cli_startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("", "phantoms", "ingest", "train", "sample", "evaluate", "audit-privacy", "info", "report", "demo")


def time_help(command: str, runs: int, root: Path = ROOT) -> list[float]:
    """Wall seconds of each of `runs` fresh `python -m fundus_cli [command] --help` processes."""
    argv = [sys.executable, "-m", "fundus_cli", *([command] if command else []), "--help"]
    env = os.environ | {"PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=root)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="fresh processes per command")
    ap.add_argument("--root", type=Path, default=ROOT, help="source tree to time, e.g. an older checkout to compare")
    args = ap.parse_args()
    print(f"source tree: {args.root}")
    base = time_help_python(args.runs)
    print(f"python -c pass (interpreter alone): median {base:.3f} s")
    print(f"{'command':<28} {'median s':>9} {'first s':>8} {'max s':>7}")
    worst = 0.0
    for command in COMMANDS:
        t = time_help(command, args.runs, args.root)
        med = statistics.median(t)
        worst = max(worst, med)
        print(f"{('fundus ' + command + ' --help').replace('  ', ' '):<28} {med:9.3f} {t[0]:8.3f} {max(t):7.3f}")
    print(f"slowest median: {worst:.3f} s (target < 0.5 s): {'met' if worst < 0.5 else 'NOT met'}")


def time_help_python(runs: int) -> float:
    """Median wall seconds of a bare interpreter start, the floor under every figure above."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


if __name__ == "__main__":
    main()
