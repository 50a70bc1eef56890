"""Issue 12 item 1: two ingests into one folder, stale locks, staged shards that do not match."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fundus_cli.data import h5
from fundus_cli.commands.ingest import stage as ingest_mod
from fundus_cli.commands.ingest import IngestConfig, ingest
from fundus_cli.errors import FundusError
from fundus_cli.fsio import LOCK_NAME, folder_lock

ROOT = Path(__file__).resolve().parents[2]

_HOLD = ("import sys, time\nfrom pathlib import Path\nfrom fundus_cli.fsio import folder_lock\n"
         "with folder_lock(Path(sys.argv[1]), command='fundus ingest'):\n"
         "    print('locked', flush=True)\n    time.sleep(120)\n")


def _holder(folder: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.stdout is not None and p.stdout.readline().strip() == "locked"
    return p


def _cfg(raw: Path, out: Path, **kw: object) -> IngestConfig:
    return IngestConfig(raw=raw, out=out, **{"size": 32, "workers": 1, **kw})  # type: ignore[arg-type]


def test_second_ingest_into_a_busy_folder_exits_2_naming_the_holder(cli, raw_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    holder = _holder(out)
    try:
        r = cli("ingest", raw_copy, "--out", out, "--size", "32", "--workers", "1")
        assert r.code == 2
        assert f"pid {holder.pid}" in r.err and socket.gethostname() in r.err and "in use" in r.err
        assert not (out / "train.h5").exists() and not (out / ingest_mod.STAGING_DIR).exists()
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_process_is_taken_over(cli, raw_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    holder = _holder(out)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (out / LOCK_NAME).exists()  # kill -9 left the file behind
    r = cli("ingest", raw_copy, "--out", out, "--size", "32", "--workers", "1")
    assert r.code == 0, r.err
    assert not (out / LOCK_NAME).exists()


def test_stale_lock_file_with_a_dead_pid_does_not_block(raw_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 2 ** 22 + 7, "host": "elsewhere", "command": "fundus ingest"}))
    res = ingest(_cfg(raw_copy, out))
    assert res.n_train + res.n_holdout == 12


def test_lock_is_exclusive_within_one_process_too(tmp_path: Path) -> None:
    with folder_lock(tmp_path, command="a"):
        with pytest.raises(FundusError, match=f"pid {os.getpid()}"):
            with folder_lock(tmp_path, command="b"):
                pass
    with folder_lock(tmp_path, command="c"):  # released
        pass


def _interrupted_staging(raw: Path, out: Path, monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    monkeypatch.setattr(ingest_mod, "SHARD_SIZE", 4)
    calls = {"n": 0}
    real = ingest_mod.process_file

    def flaky(task):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == after:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(ingest_mod, "process_file", flaky)
    with pytest.raises(KeyboardInterrupt):
        ingest(_cfg(raw, out))
    monkeypatch.setattr(ingest_mod, "process_file", real)


def _by_source(path: Path) -> dict[str, np.ndarray]:
    with h5.open_dataset(path) as r:
        return dict(zip(r.sources(), r.images()))


def test_staged_shards_from_two_processes_are_discarded_not_mixed(raw_copy: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    clean = ingest(_cfg(raw_copy, tmp_path / "clean"))
    truth = {**_by_source(clean.train), **_by_source(clean.holdout)}
    out = tmp_path / "d"
    _interrupted_staging(raw_copy, out, monkeypatch, after=10)  # two committed shards of 4
    staging = out / ingest_mod.STAGING_DIR
    a, b = staging / "shard-000000.h5", staging / "shard-000001.h5"
    assert a.exists() and b.exists()
    # What a second ingest running at once did: one shard's HDF5 part replaced by another's.
    tmp = staging / "swap"
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    res = ingest(_cfg(raw_copy, out))
    assert res.resumed_images == 0  # neither shard verified, so all 12 were decoded again
    got = {**_by_source(res.train), **_by_source(res.holdout)}
    assert got.keys() == truth.keys()
    for source, image in got.items():
        assert np.array_equal(image, truth[source]), f"{source} holds another photograph"


def test_shard_with_a_damaged_json_part_is_redone(raw_copy: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "d"
    _interrupted_staging(raw_copy, out, monkeypatch, after=10)
    meta_path = out / ingest_mod.STAGING_DIR / "shard-000001.json"
    meta = json.loads(meta_path.read_text())
    ok = [e for e in meta["files"] if e["ok"]]
    ok[0]["rel"], ok[1]["rel"] = ok[1]["rel"], ok[0]["rel"]  # names attached to the wrong rows
    meta_path.write_text(json.dumps(meta))
    res = ingest(_cfg(raw_copy, out))
    assert res.resumed_images == 4  # shard 0 verified and was kept; shard 1 was redone
    clean = ingest(_cfg(raw_copy, tmp_path / "clean"))
    with h5.open_dataset(clean.train) as x, h5.open_dataset(res.train) as y:
        assert x.info.fingerprint == y.info.fingerprint and x.sources() == y.sources()
