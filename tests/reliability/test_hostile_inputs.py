"""Issue 12 items 3 and 7: odd names, pipes and unreadable folders in the raw folder; text in a
dataset that is not UTF-8."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import h5py
import pytest

from fundus_cli.data import h5


@pytest.fixture
def no_hang():
    """Fail (instead of waiting forever) if the test takes more than a minute."""
    def alarm(*_: object) -> None:
        raise TimeoutError("hung for 60 s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _rejected(out: Path) -> dict[str, str]:
    return {r["source"]: r["reason"] for r in json.loads((out / "ingest-report.json").read_text())["rejected"]}


def test_file_name_that_is_not_utf8_is_rejected_with_a_reason_not_a_crash(cli, raw_copy: Path, tmp_path: Path) -> None:
    first = sorted((raw_copy / "images").glob("*.jpg"))[0]
    odd = os.fsdecode(bytes(raw_copy / "images") + b"/caf\xe9-\xff.jpg")
    shutil.copy(first, odd)
    out = tmp_path / "data"
    for attempt in range(2):  # a rerun must not crash either
        r = cli("ingest", raw_copy, "--out", out, "--size", "32", "--workers", "1", *(["--force"] if attempt else []))
        assert r.code == 0, r.err
        rejected = _rejected(out)
        assert "images/caf\\xe9-\\xff.jpg" in rejected and "UTF-8" in rejected["images/caf\\xe9-\\xff.jpg"]
        with h5.open_dataset(out / "train.h5") as a, h5.open_dataset(out / "holdout.h5") as b:
            assert len(a) + len(b) == 12


def test_named_pipe_called_jpg_does_not_hang(cli, raw_copy: Path, tmp_path: Path, no_hang: None) -> None:
    os.mkfifo(raw_copy / "images" / "pipe.jpg")
    out = tmp_path / "data"
    r = cli("ingest", raw_copy, "--out", out, "--size", "32", "--workers", "1")
    assert r.code == 0, r.err
    assert "named pipe" in _rejected(out)["images/pipe.jpg"]


def test_decoder_refuses_a_pipe_unread(tmp_path: Path, no_hang: None) -> None:
    from fundus_cli.data.decode import DecodeError, decode_image

    os.mkfifo(tmp_path / "p.png")
    with pytest.raises(DecodeError, match="not a regular file"):
        decode_image(tmp_path / "p.png", target=32)


def test_unreadable_subfolder_is_reported_not_skipped_silently(cli, raw_copy: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    hidden = raw_copy / "more"
    hidden.mkdir()
    shutil.copy(sorted((raw_copy / "images").glob("*.jpg"))[0], hidden / "x.jpg")
    os.chmod(hidden, 0)
    if os.geteuid() == 0:  # root reads any folder: make listing it fail as it would for a user
        real = os.scandir

        def scandir(path: object = ".") -> object:
            if isinstance(path, (str, os.PathLike)) and Path(os.fspath(path)) == hidden:
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return real(path)

        monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "data"
    try:
        r = cli("ingest", raw_copy, "--out", out, "--size", "32", "--workers", "1")
    finally:
        os.chmod(hidden, 0o755)
    assert r.code == 0, r.err
    assert "folder could not be read" in _rejected(out)["more/"]


def test_dataset_text_that_is_not_utf8_is_read_without_a_crash(cli, tiny_data: Path, tmp_path: Path) -> None:
    path = tmp_path / "train.h5"
    shutil.copy(tiny_data / "train.h5", path)
    with h5py.File(path, "r+") as f:
        f["source"][0] = b"bad-\xff\xfe.jpg"
        f["patient"][1] = b"\xc3("
    with h5.open_dataset(path) as r:
        assert r.sources()[0] == "bad-\\xff\\xfe.jpg" and r.patients()[1] == "\\xc3("
        assert r.record(0).source == "bad-\\xff\\xfe.jpg"
    r = cli("info", path)
    assert r.code == 0, r.err
