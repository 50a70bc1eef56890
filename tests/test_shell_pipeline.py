"""The commands compose in a real shell: `x=$(fundus ...)` captures exactly the main output path,
`--json` is one JSON line, and exit codes follow the README (0 ok, 1 audit FAIL, 2 bad input)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FUNDUS = Path(sys.executable).parent / "fundus"

SCRIPT = r"""
set -euo pipefail
save() { printf '%s' "$2" > "out/$1"; }
mkdir -p out
raw=$("$FUNDUS" phantoms raw --n 24 --seed 1);                                        save raw "$raw"
train=$("$FUNDUS" ingest "$raw" --size 32 --workers 1 --holdout-fraction 0.25);       save train "$train"
ckpt=$("$FUNDUS" train --arch gan --data "$train" --steps 3 --batch 4 --width 8 --size 32 --conditional)
save ckpt "$ckpt"
syn=$("$FUNDUS" sample --checkpoint "$ckpt" --n 16);                                  save syn "$syn"
ev=$("$FUNDUS" evaluate --synthetic "$syn" --metrics kid --n-boot 5 --no-usefulness); save ev "$ev"
# The privacy gate: exit 0 (PASS/WARN) lets the next command run, 1 (FAIL) and 3 (INCONCLUSIVE) stop it.
set +e
gate=$("$FUNDUS" audit-privacy --synthetic "$syn" --encoder-steps 3 && echo gate-passed)
save gate_rc "$?"
set -e
save gate "$gate"
report=$("$FUNDUS" report . --out report.html);                                       save report "$report"
report_json=$("$FUNDUS" report . --out report2.html --json);                          save report_json "$report_json"
# Bad input: exit code 2 and one line on stderr naming the file.
set +e
"$FUNDUS" sample --checkpoint runs/none/checkpoint.pt --n 2 --out data/x.h5 > out/bad_stdout 2> out/bad_stderr
save bad_rc "$?"
"""


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not FUNDUS.exists():
        raise AssertionError(f"{FUNDUS} is missing: install the package (pip install -e .) into this interpreter's "
                             "environment")
    work = tmp_path_factory.mktemp("shell")
    env = {**os.environ, "FUNDUS": str(FUNDUS), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.run(["bash", "-c", SCRIPT], cwd=work, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"script failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return work


def _out(work: Path, name: str) -> str:
    return (work / "out" / name).read_text()


def test_each_command_prints_exactly_its_main_output(pipeline: Path) -> None:
    expected = {"raw": "raw", "train": "data/train.h5", "ckpt": "runs/gan/checkpoint.pt", "syn": "data/synthetic.h5",
                "ev": "reports/evaluate/report.json", "report": "report.html"}
    for name, path in expected.items():
        assert _out(pipeline, name) == path, name
        assert (pipeline / path).exists(), path
    html = (pipeline / "report.html").read_text()
    assert "data/synthetic.h5" in html and "data:image/png;base64," in html


def test_json_outputs_are_one_line(pipeline: Path) -> None:
    text = _out(pipeline, "report_json")
    assert text.endswith("}") and "\n" not in text
    summary = json.loads(text)
    assert summary["report"] == "report2.html" and (pipeline / "report2.html").is_file()
    assert (summary["datasets"], summary["runs"], summary["evaluations"], summary["audits"]) == (3, 1, 1, 1)


def test_the_privacy_gate_follows_the_verdict(pipeline: Path) -> None:
    report = json.loads((pipeline / "reports/audit-privacy/report.json").read_text())
    status, rc = report["decision"]["status"], int(_out(pipeline, "gate_rc"))
    lines = _out(pipeline, "gate").splitlines()
    assert lines[0] == "reports/audit-privacy/report.json"
    # 6 holdout images cannot show anything at alpha = 0.05 (the smallest p-value is 1/7): the gate
    # must not pass, whatever the samples look like (issue 16).
    assert report["inputs"]["holdout"]["used"] < 19 and status in ("INCONCLUSIVE", "FAIL")
    assert rc == {"INCONCLUSIVE": 3, "FAIL": 1}[status] and lines[1:] == []
    summary = json.loads(_out(pipeline, "report_json"))
    assert summary["verdicts"] == {"data/synthetic.h5": status}


def test_bad_input_exits_2_with_one_line_naming_the_file(pipeline: Path) -> None:
    err = _out(pipeline, "bad_stderr")
    assert int(_out(pipeline, "bad_rc")) == 2, err
    assert "runs/none/checkpoint.pt" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert _out(pipeline, "bad_stdout") == ""
