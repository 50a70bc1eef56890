"""Run several `fundus` command lines in ONE child process and report each as JSON.

Tests that need a real process (no root powers, a private tmpfs) pay the start-up of Python
and torch once instead of once per command:

    python cli_driver.py CASES.json RESULTS.json

CASES.json: [{"name": ..., "args": [...], "list": [folders whose files to list afterwards]}].
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def main() -> None:
    cases = json.loads(open(sys.argv[1]).read())
    from typer.testing import CliRunner

    from fundus_cli.cli import app

    results = []
    for case in cases:
        r = CliRunner().invoke(app, case["args"])
        exc = None
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            exc = "".join(traceback.format_exception(r.exception))
        files = []
        for folder in case.get("list", []):
            for dirpath, _, filenames in os.walk(folder):
                files += [os.path.join(dirpath, f) for f in filenames]
        results.append({"name": case["name"], "code": r.exit_code, "err": r.stderr, "out": r.stdout,
                        "exception": exc, "files": files})
        with open(sys.argv[2], "w") as f:  # after each case, in case a later one kills the process
            json.dump(results, f)


if __name__ == "__main__":
    main()
