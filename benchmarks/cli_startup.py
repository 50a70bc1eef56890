"""How long `fundus --help` and `fundus <command> --help` take, in fresh processes.

Each figure is the median wall time of `python -m fundus_cli [<command>] --help` over
--runs fresh subprocesses (the first run of each is also timed: it is the one a user sees
after the files left the page cache). Target (issue 13): under 0.5 s. The figure is
dominated by Python, typer and rich starting up; torch, h5py, scipy and pydantic must not
be among the imports (tests/test_cli_startup.py checks that structurally).

Wall time grows when other jobs share the CPUs, so the median CPU time (user + sys) of each
process is printed too: it moves much less than the wall time when the machine is busy.

Usage: python benchmarks/cli_startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("", "phantoms", "ingest", "train", "sample", "evaluate", "audit-privacy", "info", "report", "demo")


def time_help(command: str, runs: int, root: Path = ROOT) -> tuple[list[float], list[float]]:
    """Wall and CPU (user + sys) seconds of each of `runs` fresh `python -m fundus_cli [command] --help`."""
    argv = [sys.executable, "-m", "fundus_cli", *([command] if command else []), "--help"]
    env = os.environ | {"PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    walls, cpus = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), _children_cpu()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=root)
        walls.append(time.perf_counter() - t0)
        cpus.append(_children_cpu() - c0)
    return walls, cpus


def _children_cpu() -> float:
    """CPU seconds used so far by this process's finished children (each run is waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="fresh processes per command")
    ap.add_argument("--root", type=Path, default=ROOT, help="source tree to time, e.g. an older checkout to compare")
    args = ap.parse_args()
    print(f"source tree: {args.root}")
    base, base_cpu = time_help_python(args.runs)
    print(f"python -c pass (interpreter alone): median {base:.3f} s wall, {base_cpu:.3f} s CPU")
    print(f"{'command':<28} {'median s':>9} {'first s':>8} {'max s':>7} {'CPU s':>7}")
    worst = worst_cpu = 0.0
    for command in COMMANDS:
        t, cpu = time_help(command, args.runs, args.root)
        med, med_cpu = statistics.median(t), statistics.median(cpu)
        worst, worst_cpu = max(worst, med), max(worst_cpu, med_cpu)
        print(f"{('fundus ' + command + ' --help').replace('  ', ' '):<28} {med:9.3f} {t[0]:8.3f} {max(t):7.3f} "
              f"{med_cpu:7.3f}")
    print(f"slowest median: {worst:.3f} s wall, {worst_cpu:.3f} s CPU (target < 0.5 s): "
          f"{'met' if worst < 0.5 else 'NOT met'}")
    print(f"load average over the last minute: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
          "(above the CPU count, other jobs inflate the wall times)")


def time_help_python(runs: int) -> tuple[float, float]:
    """Median wall and CPU seconds of a bare interpreter start, the floor under every figure above."""
    walls, cpus = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), _children_cpu()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        walls.append(time.perf_counter() - t0)
        cpus.append(_children_cpu() - c0)
    return statistics.median(walls), statistics.median(cpus)


if __name__ == "__main__":
    main()
