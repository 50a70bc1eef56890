"""Helpers for the reliability tests: running `fundus` in child processes."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    code: int
    out: str
    err: str


def run_fundus(*args: str, cwd: Path | None = None, timeout: float = 120,
               prefix: list[str] | None = None) -> Run:
    """`python -m fundus_cli ARGS` in a child process (for what a real process needs: other
    users, mounts, signals). `prefix`: a command that runs the child (unshare, setpriv)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [*(prefix or []), sys.executable, "-m", "fundus_cli", *map(str, args)]
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return Run(p.returncode, p.stdout, p.stderr)


DRIVER = Path(__file__).with_name("cli_driver.py")


def run_many(cases: list[dict], tmp: Path, *, prefix: list[str] | None = None, timeout: float = 600) -> dict[str, dict]:
    """Run `cases` (see cli_driver.py) in one child process; name -> result."""
    import json

    tmp.mkdir(parents=True, exist_ok=True)
    cases_path, results_path = tmp / "cases.json", tmp / "results.json"
    cases_path.write_text(json.dumps([{**c, "args": [str(a) for a in c["args"]],
                                       "list": [str(d) for d in c.get("list", [])]} for c in cases]))
    p = subprocess.run([*(prefix or []), sys.executable, str(DRIVER), str(cases_path), str(results_path)],
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=timeout)
    assert results_path.exists(), f"driver failed ({p.returncode}): {p.stderr[-3000:]}"
    results = {r["name"]: r for r in json.loads(results_path.read_text())}
    assert len(results) == len(cases), f"driver stopped early ({p.returncode}): {p.stderr[-3000:]}"
    return results
