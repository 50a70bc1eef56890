"""`fundus --help` must not import the heavy libraries (issue 13): a structural check, not a timing.

The figures themselves come from benchmarks/cli_startup.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# pydantic: typer builds a pydantic coercer for an option whose value is not already a bool,
# which `fundus <cmd> --help` did for the group's own flags (0.13 s of ~0.55 s; see cli/app.py).
HEAVY = ("torch", "h5py", "scipy", "matplotlib", "cv2", "PIL", "sklearn", "numpy", "pydantic")
COMMANDS = ("phantoms", "ingest", "train", "sample", "evaluate", "audit-privacy", "info", "report", "demo")


def _loaded_after(code: str) -> set[str]:
    """Top-level packages in sys.modules after running `code` in a fresh interpreter."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    env = os.environ | {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, env=env, cwd=ROOT)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_importing_the_cli_and_the_api_loads_no_heavy_library() -> None:
    loaded = _loaded_after("import fundus_cli.cli, fundus_cli.api")
    assert "fundus_cli" in loaded and "typer" in loaded  # the probe did import the CLI
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_help_of_every_command_loads_no_heavy_library() -> None:
    # One interpreter for all of them (sys.modules only grows), to keep the test fast.
    loaded = _loaded_after(
        "from typer.testing import CliRunner\nfrom fundus_cli.cli import app\n"
        f"for argv in [['--help'], *([c, '--help'] for c in {list(COMMANDS)!r})]:\n"
        "    r = CliRunner().invoke(app, argv)\n"
        "    assert r.exit_code == 0 and 'Usage' in r.output, r.output")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_the_probe_sees_a_heavy_import() -> None:
    # The check above would pass vacuously if the probe could not see imports; running a command does.
    assert "numpy" in _loaded_after("import fundus_cli.api\nfundus_cli.api.IngestConfig")
