from __future__ import annotations

import pytest
from rel_helpers import Run
from typer.testing import CliRunner


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


