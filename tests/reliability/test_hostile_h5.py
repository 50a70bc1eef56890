"""Issue 12 item 2: datasets whose data lives outside the file are refused by every reader."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from fundus_cli.data import h5
from fundus_cli.errors import FundusError

SECRET = b"root:x:0:0:secret-bytes-of-another-file\n" * 4000


def _external_storage(f: h5py.File, d: Path) -> None:
    shape, dtype = f["images"].shape, f["images"].dtype
    secret = d / "secret.bin"
    secret.write_bytes(SECRET)
    del f["images"]
    f.create_dataset("images", shape=shape, dtype=dtype, external=[(str(secret), 0, h5py.h5f.UNLIMITED)])


def _external_link(f: h5py.File, d: Path) -> None:
    other = d / "other.h5"
    with h5py.File(other, "w") as g:
        g["imgs"] = f["images"][:]
    del f["images"]
    f["images"] = h5py.ExternalLink(str(other), "/imgs")


def _external_link_group(f: h5py.File, d: Path) -> None:
    other = d / "other.h5"
    with h5py.File(other, "w") as g:
        f.copy(f["quality"], g, "q")
    del f["quality"]
    f["quality"] = h5py.ExternalLink(str(other), "/q")


def _virtual(f: h5py.File, d: Path) -> None:
    other = d / "other.h5"
    with h5py.File(other, "w") as g:
        g["imgs"] = f["images"][:]
    shape, dtype = f["images"].shape, f["images"].dtype
    layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
    layout[...] = h5py.VirtualSource(str(other), "imgs", shape=shape)
    del f["images"]
    f.create_virtual_dataset("images", layout)


def _soft_link(f: h5py.File, d: Path) -> None:
    f.move("images", "elsewhere")
    f["images"] = h5py.SoftLink("/elsewhere")


CASES = {"external storage": (_external_storage, "external files"),
         "external link": (_external_link, "link to another file"),
         "external link on a group": (_external_link_group, "link to another file"),
         "virtual dataset": (_virtual, "virtual dataset"),
         "soft link": (_soft_link, "SoftLink")}


def _hostile(tiny_data: Path, tmp_path: Path, case: str) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    for name in ("train.h5", "holdout.h5"):
        shutil.copy(tiny_data / name, d / name)
    with h5py.File(d / "train.h5", "r+") as f:
        CASES[case][0](f, tmp_path)
    return d / "train.h5"


@pytest.mark.parametrize("case", list(CASES))
def test_reader_refuses_data_outside_the_file(tiny_data: Path, tmp_path: Path, case: str) -> None:
    path = _hostile(tiny_data, tmp_path, case)
    with pytest.raises(FundusError, match=CASES[case][1]) as e:
        h5.open_dataset(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("case", ["external storage", "external link"])
def test_commands_exit_2_and_never_show_the_other_file(cli, tiny_data: Path, tmp_path: Path, case: str) -> None:
    path = _hostile(tiny_data, tmp_path, case)
    r = cli("info", path)
    assert r.code == 2 and str(path) in r.err
    r = cli("report", tmp_path, "--out", tmp_path / "report.html")
    assert r.code in (0, 2), r.err
    if r.code == 0:  # the page may show the other files, but must name this one as refused
        html = (tmp_path / "report.html").read_text()
        assert "reads only data stored inside" in html
    r = cli("train", "--data", path, "--out", tmp_path / "run", "--steps", "1", "--size", "32", "--device", "cpu")
    assert r.code == 2 and str(path) in r.err


def test_plain_files_still_open(tiny_data: Path) -> None:
    with h5.open_dataset(tiny_data / "train.h5") as r:
        assert len(r) > 0 and np.asarray(r.images(0, 1)).shape[0] == 1
