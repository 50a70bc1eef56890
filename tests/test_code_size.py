"""Size limits of issue 13, enforced: no function in fundus_cli/ over 60 lines and no file over 400,
so that each one can be read in one go. Lines are counted from `def` (decorators excluded) to the
last line of the body, docstrings and comments included.

An exception goes in ALLOWED with a one-line reason; keep the list short.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 400

# "path/relative/to/fundus_cli.py" or "path.py:function" -> why it may be longer. Empty: none needed.
ALLOWED: dict[str, str] = {}


def oversized(package_dir: Path, *, max_function: int = MAX_FUNCTION_LINES,
              max_file: int = MAX_FILE_LINES) -> list[str]:
    """'path: N lines' and 'path:function (line L): N lines' for everything over the limits."""
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir).as_posix()
        text = path.read_text(encoding="utf-8")
        n = len(text.splitlines())
        if n > max_file:
            found.append((rel, f"{rel}: {n} lines (limit {max_file})"))
        for node in ast.walk(ast.parse(text, filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > max_function:
                    key = f"{rel}:{node.name}"
                    found.append((key, f"{key} (line {node.lineno}): {length} lines (limit {max_function})"))
    return [message for key, message in found if key not in ALLOWED]


def test_no_function_or_file_in_fundus_cli_is_over_the_limits() -> None:
    problems = oversized(ROOT / "fundus_cli")
    assert not problems, ("split these along their steps (or add a justified entry to ALLOWED in "
                          "tests/test_code_size.py):\n" + "\n".join(problems))


def test_every_allowed_exception_still_exists_and_says_why() -> None:
    for key, reason in ALLOWED.items():
        assert reason.strip(), f"{key}: give a reason"
        assert (ROOT / "fundus_cli" / key.split(":")[0]).exists(), f"{key}: no such file; drop the entry"


def test_the_check_finds_a_planted_long_function_and_file(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(5))
    (pkg / "a.py").write_text(f"def short():\n{body}\n\nclass C:\n    def long(self):\n"
                              + "".join("    " + line for line in (body * 2).splitlines(keepends=True)))
    (pkg / "b.py").write_text("y = 1\n" * 12)
    assert oversized(pkg, max_function=6, max_file=20) == ["a.py:long (line 10): 11 lines (limit 6)"]
    assert oversized(pkg, max_function=11, max_file=11) == ["a.py: 20 lines (limit 11)",
                                                            "b.py: 12 lines (limit 11)"]
