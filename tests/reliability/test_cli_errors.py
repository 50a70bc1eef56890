"""Issue 12 items 4, 5 and 8: user text is never markup; unwritable folders and full disks end in
exit 2 with one line; a bug has its own exit code, never 1 (the audit's FAIL)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from fundus_cli import api
from fundus_cli.errors import EXIT_INTERNAL, FundusError

from rel_helpers import run_many


def test_error_text_with_markup_characters_prints_verbatim(cli, tmp_path: Path) -> None:
    for name in ("a[/]b.h5", "patient[left]/train.h5", "[bold red]x[/bold red].h5"):
        path = tmp_path / name
        r = cli("info", path)
        assert r.code == 2
        assert str(path) in r.err, r.err  # the file named is the file given


def test_notes_and_tables_keep_brackets(cli, raw_copy: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw[left]"
    raw_copy.rename(raw)
    r = cli("ingest", raw, "--out", tmp_path / "d[/]x", "--size", "32", "--workers", "1")
    assert r.code == 0, r.err
    assert f"found in {raw}" in r.err.replace("\n", "")  # the table's title
    assert f"wrote {tmp_path / 'd[/]x' / 'train.h5'}\n" in r.err


def test_internal_error_has_its_own_exit_code_and_the_debug_hint(cli, tiny_data: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def bug(*a: object, **k: object) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(api, "describe", bug)
    r = cli("info", tiny_data / "train.h5")
    assert r.code == EXIT_INTERNAL and r.code not in (0, 1, 2, 3)
    assert "internal error" in r.err and "--debug" in r.err and "ZeroDivisionError" in r.err
    assert len(r.err.strip().splitlines()) == 1
    monkeypatch.setattr(api, "audit_privacy", bug)
    r = cli("audit-privacy", "--train", tiny_data / "train.h5", "--holdout", tiny_data / "holdout.h5",
            "--synthetic", tiny_data / "train.h5")
    assert r.code == EXIT_INTERNAL


def test_exit_code_table_documents_the_internal_code(cli) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"| {EXIT_INTERNAL} |" in readme
    assert str(EXIT_INTERNAL) in cli("--help").out


# --------------------------------------------------------------------------- unwritable folders

@pytest.fixture
def world(tiny_data: Path, tiny_runs: dict, phantom_dir: Path):
    """A folder holding the inputs, and `ro`, a folder that cannot be written to."""
    root = Path(tempfile.mkdtemp(prefix="fundus-perm-"))
    try:
        shutil.copytree(tiny_data, root / "data")
        shutil.copy(tiny_runs["gan"], root / "gan.pt")
        shutil.copytree(phantom_dir, root / "raw")
        (root / "ro").mkdir()
        for dirpath, dirnames, filenames in os.walk(root):
            os.chmod(dirpath, 0o755)
            for f in filenames:
                os.chmod(Path(dirpath, f), 0o644)
        os.chmod(root / "ro", 0o555)
        yield root
    finally:
        os.chmod(root / "ro", 0o755)
        shutil.rmtree(root, ignore_errors=True)


def _without_root_powers() -> list[str]:
    """As root, permissions do not bite: run the child without the capabilities that bypass them."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv(1): cannot make a folder unwritable")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


COMMANDS = {
    "ingest": lambda w: ["ingest", w / "raw", "--out", w / "ro" / "data", "--size", "32", "--workers", "1"],
    "ingest-into": lambda w: ["ingest", w / "raw", "--out", w / "ro", "--size", "32", "--workers", "1"],
    "train": lambda w: ["train", "--data", w / "data" / "train.h5", "--out", w / "ro" / "run", "--steps", "1",
                        "--size", "32", "--batch", "2", "--device", "cpu"],
    "sample": lambda w: ["sample", "--checkpoint", w / "gan.pt", "--n", "2", "--out", w / "ro" / "s.h5",
                         "--device", "cpu"],
    "evaluate": lambda w: ["evaluate", "--real", w / "data" / "train.h5", "--synthetic", w / "data" / "train.h5",
                           "--train", w / "data" / "train.h5", "--out", w / "ro" / "ev", "--no-usefulness",
                           "--n-boot", "2", "--metrics", "fid,kid"],
    "audit-privacy": lambda w: ["audit-privacy", "--train", w / "data" / "train.h5", "--holdout",
                                w / "data" / "holdout.h5", "--synthetic", w / "data" / "train.h5", "--out",
                                w / "ro" / "au", "--embeddings", "pixel", "--size", "32", "--device", "cpu"],
    "report": lambda w: ["report", w / "data", "--out", w / "ro" / "report.html"],
}


def test_unwritable_output_folder_exits_2_naming_it(world: Path, tmp_path: Path) -> None:
    results = run_many([{"name": name, "args": args(world), "list": [world / "ro"]} for name, args in COMMANDS.items()],
                       tmp_path / "driver", prefix=_without_root_powers())
    for name, r in results.items():
        assert r["exception"] is None, (name, r["exception"])
        assert r["code"] == 2, (name, r["err"][-2000:])
        lines = [ln for ln in r["err"].splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and str(world / "ro") in lines[0] and "permission" in lines[0], (name, r["err"])
        assert not r["files"], (name, r["files"])


# --------------------------------------------------------------------------- a full disk

def _in_tmpfs_namespace(mounts: dict[Path, str]) -> list[str]:
    """A command prefix running the child in its own mount namespace with small tmpfs mounts,
    or skip when this machine does not allow it."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed: no private tmpfs for the full-disk test")
    for mnt in mounts:
        mnt.mkdir(parents=True)
    script = " && ".join(f'mount -t tmpfs -o size={size} tmpfs "{mnt}"' for mnt, size in mounts.items())
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a private tmpfs here ({probe.stderr.strip()[:100]})")
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script + ' && exec "$@"', "sh"]


def test_full_disk_exits_2_and_leaves_no_tmp(phantom_dir: Path, tiny_runs: dict, tiny_data: Path,
                                             tmp_path: Path) -> None:
    small, medium, tiny, run = tmp_path / "m600k", tmp_path / "m3m", tmp_path / "m200k", tmp_path / "m300k"
    prefix = _in_tmpfs_namespace({small: "600k", medium: "3m", tiny: "200k", run: "300k"})
    cases = [
        {"name": "ingest 600k", "args": ["ingest", phantom_dir, "--out", small / "data", "--size", "64",
                                         "--workers", "1"], "list": [small]},
        {"name": "ingest 3m", "args": ["ingest", phantom_dir, "--out", medium / "data", "--size", "64",
                                       "--workers", "1"], "list": [medium]},
        {"name": "sample 200k", "args": ["sample", "--checkpoint", tiny_runs["gan"], "--n", "600", "--out",
                                         tiny / "s.h5", "--device", "cpu"], "list": [tiny]},
        {"name": "train 300k", "args": ["train", "--data", tiny_data / "train.h5", "--out", run / "run", "--steps", "3",
                                        "--size", "32", "--batch", "2", "--width", "32", "--device", "cpu"],
         "list": [run]},
    ]
    results = run_many(cases, tmp_path / "driver", prefix=prefix)
    for name, r in results.items():
        assert r["exception"] is None, (name, r["exception"])
        assert r["code"] == 2, (name, r["err"][-3000:])
        assert "Exception ignored" not in r["err"] and "no space left" in r["err"], (name, r["err"][-3000:])
        assert not [f for f in r["files"] if f.endswith(".tmp")], (name, r["files"])


def test_os_error_mapping_names_the_folder() -> None:
    from fundus_cli.errors import from_os_error

    e = from_os_error(PermissionError(13, "Permission denied", "/x/y/train.h5.tmp"))
    assert isinstance(e, FundusError) and str(e).startswith("/x/y: permission denied (while working on /x/y/train.h5)")
    h5_text = RuntimeError("Unable to flush file (file write failed: filename = '/d/a.h5.tmp', errno = 28, "
                           "error message = 'No space left on device')")
    assert str(from_os_error(h5_text)).startswith("/d: no space left")
    assert from_os_error(FileNotFoundError(2, "x", "/a")) is None


def test_interrupted_sample_says_it_starts_over_and_leaves_nothing(cli, tiny_runs: dict, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from fundus_cli.commands import sample as sampling

    calls = {"n": 0}
    real = sampling.Sampler.__call__

    def interrupted(self, *a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(sampling.Sampler, "__call__", interrupted)
    out = tmp_path / "s.h5"
    r = cli("sample", "--checkpoint", tiny_runs["gan"], "--n", "8", "--batch", "4", "--out", out, "--device", "cpu")
    assert r.code == 130
    assert "starts over" in r.err and "resume" not in r.err
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))
