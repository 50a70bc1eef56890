"""Atomic file writes: a crash or Ctrl-C never leaves a half-written file under its final name."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def tmp_path_for(path: Path) -> Path:
    """The temporary sibling that `path` is written to before the rename (same filesystem)."""
    return path.with_name(path.name + ".tmp")


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    # The rename itself lives in the directory entry; without this a power cut can lose it.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit_tmp(tmp: Path, path: Path) -> None:
    """fsync `tmp`, then rename it over `path`."""
    fsync_file(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on any error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    commit_tmp(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def sha256_file(path: Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# Folder locks: one writer per output folder

LOCK_NAME = ".fundus.lock"


def _holder(lock: Path) -> dict[str, Any]:
    try:
        data = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe_holder(info: dict[str, Any]) -> str:
    pid, host = info.get("pid"), info.get("host")
    since, command = info.get("since"), info.get("command")
    parts = [f"pid {pid}" if isinstance(pid, int) else "an unknown process",
             f"on host {host}" if isinstance(host, str) and host else ""]
    if isinstance(command, str) and command:
        parts.append(f"({command}")
        parts[-1] += f", since {since})" if isinstance(since, str) else ")"
    return " ".join(p for p in parts if p)


@contextlib.contextmanager
def folder_lock(folder: Path, *, command: str) -> Iterator[dict[str, Any]]:
    """Hold an exclusive lock on `folder` while one command writes into it.

    The lock is a kernel `flock` on `folder/.fundus.lock`, so it disappears with the process
    that held it (kill -9 and power cuts included): a lock file left by a dead process is
    taken over at once, without guessing from pids whether its owner is alive. The file's
    content (pid, host, command) only serves to name the holder in the refusal. Yields
    what the previous, dead holder wrote ({} when there was none).
    """
    import fcntl
    import socket
    from datetime import datetime, timezone

    from fundus_cli.errors import FundusError

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            info = _holder(lock)
            raise FundusError(
                f"{folder} is in use by another fundus-cli command: {_describe_holder(info)}. Wait for it to "
                f"finish, or write elsewhere with --out. (If that process is gone, {lock} is freed "
                "automatically; a lock on a network file system may need deleting by hand.)") from None
        except OSError:
            os.close(fd)
            raise
        # The holder before us may have unlinked the file between our open and our lock:
        # then we hold a lock on a deleted inode and must start again on the new file.
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = _holder(lock)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
          "since": datetime.now(timezone.utc).replace(microsecond=0).isoformat()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    try:
        yield previous
    finally:
        # Unlink before unlocking, so that a waiter never locks a file that is about to vanish
        # (it checks the inode after locking, above).
        try:
            lock.unlink()
        except OSError:
            pass
        os.close(fd)


# ---------------------------------------------------------------------------------------
# CSV files that people open in spreadsheets

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# Digits, signs, dots, exponents and spaces ("-0.25", "-6 8" shifts) cannot call a function or
# reach another cell, so such cells stay as they are.
_ARITHMETIC = re.compile(r"[-+0-9.eE ]+")


def csv_cell(value: Any) -> str:
    """`value` as a CSV cell that no spreadsheet runs as a formula.

    File names and patient ids are untrusted: a cell such as `=cmd|' /C calc'!A0` is run by
    Excel and LibreOffice when the CSV is opened. Text starting with = + - @ tab or CR gets a
    leading apostrophe (OWASP's advice), unless it is only numbers (-0.25, a "-6 8" shift).
    """
    text = "" if value is None else str(value)
    if text.startswith(_FORMULA_START) and not _ARITHMETIC.fullmatch(text):
        return "'" + text
    return text


def write_csv_atomic(path: Path, rows: Any, *, preamble: str = "") -> None:
    """Write `rows` (sequences of cells) as CSV, every cell through `csv_cell`, atomically."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for row in rows:
        w.writerow([csv_cell(v) for v in row])
    write_text_atomic(path, preamble + buf.getvalue())
