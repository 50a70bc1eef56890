from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@pytest.fixture
def cli():
    """cli(*args) -> Run: the `fundus` command in-process; an escaped exception fails the test."""
    from fundus_cli.cli import app

    def run(*args: str) -> Run:
        r = CliRunner().invoke(app, [str(a) for a in args])
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            raise AssertionError(f"fundus {' '.join(map(str, args))} raised {r.exception!r}\n{r.stderr}") \
                from r.exception
        assert "Traceback" not in r.stderr, r.stderr
        return Run(r.exit_code, r.stdout, r.stderr)

    return run


@pytest.fixture
def fundus_proc():
    """fundus_proc(*args, ...) -> Run: see `run_fundus`."""
    return run_fundus


def run_fundus(*args: str, cwd: Path | None = None, timeout: float = 120, user: int | None = None,
               prefix: list[str] | None = None) -> Run:
    """`python -m fundus_cli ARGS` in a child process (for what a real process needs: other
    users, mounts, signals). `user`: run as that uid/gid (needs root)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [*(prefix or []), sys.executable, "-m", "fundus_cli", *map(str, args)]
    kw = {}
    if user is not None:
        def demote() -> None:
            os.setgroups([])
            os.setgid(user)
            os.setuid(user)
        kw["preexec_fn"] = demote
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, **kw)
    return Run(p.returncode, p.stdout, p.stderr)
