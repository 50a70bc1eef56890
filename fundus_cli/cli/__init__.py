"""The `fundus` command line: one module per command (options -> config -> one `api` call ->
summary), on the app, error handling and output helpers of `app.py`. No logic lives here.
"""

from __future__ import annotations

# Importing a command module registers its command on `app`, in this order (the order of --help).
from fundus_cli.cli import phantoms, ingest, train, sample, evaluate, audit, info, report, demo  # noqa: F401, E402
from fundus_cli.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    app()
