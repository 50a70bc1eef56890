"""The hostile-input corpus of issue 12: run every case and count what must never happen.

    python benchmarks/hostile.py              # all cases, in a temporary folder
    python benchmarks/hostile.py --keep DIR   # build and keep the corpus in DIR
    python benchmarks/hostile.py -k pipe      # only cases whose name contains "pipe"

Each case is a `fundus` command line on an input made the way a careless or hostile user
would make it (two ingests at once, HDF5 links to other files, odd file names, pipes,
unwritable folders, a full disk, damaged checkpoints, formula cells, ...). The commands run
in worker processes (one per environment: plain, without root's permission bypass, in a
private namespace with a small tmpfs), one case at a time, each with a time limit; a worker
that dies or hangs is replaced. Printed per case: exit code, expected codes, and any problem;
then the totals the issue asks for:

    cases, exit codes, tracebacks seen (must be 0), hangs (0), files left under final names
    that do not open (0), stray .tmp files (0), unexpected exit codes (0).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a source checkout

TIMEOUT = 300.0  # seconds per case; a command that takes longer counts as hung
FORMULA = "=cmd|' -C calc'!A0"


# --------------------------------------------------------------------------------- worker side

def worker() -> None:
    """Read one JSON case per line on stdin, run it with the CLI in-process, answer one JSON line."""
    from typer.testing import CliRunner

    from fundus_cli.cli import app

    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but answers on the pipe
    for line in sys.stdin:
        case = json.loads(line)
        r = CliRunner().invoke(app, case["args"])
        exc = r.exception if r.exception is not None and not isinstance(r.exception, SystemExit) else None
        files = [os.path.join(d, f) for folder in case.get("list", []) for d, _, fs in os.walk(folder) for f in fs]
        out.write(json.dumps({"code": r.exit_code, "stderr": r.stderr, "stdout": r.stdout,
                              "exception": repr(exc) if exc else None, "files": files}) + "\n")
        out.flush()


class Worker:
    def __init__(self, prefix: list[str]) -> None:
        self.prefix = prefix
        self.proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        return subprocess.Popen([*self.prefix, sys.executable, str(Path(__file__).resolve()), "--worker"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, start_new_session=True)

    def run(self, args: list[str], timeout: float, listing: list[str] = ()) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        p = self.proc
        assert p.stdin and p.stdout
        p.stdin.write(json.dumps({"args": args, "list": list(listing)}) + "\n")
        p.stdin.flush()
        ready, _, _ = select.select([p.stdout], [], [], timeout)
        if not ready:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            self.proc = None
            return {"code": None, "hang": True, "stderr": "", "stdout": "", "exception": None}
        line = p.stdout.readline()
        if not line:  # the worker died: the command took the process with it (os._exit, a crash)
            p.wait()
            err = p.stderr.read() if p.stderr else ""
            self.proc = None
            return {"code": p.returncode, "hang": False, "stderr": err, "stdout": "", "exception": None,
                    "died": True}
        return {**json.loads(line), "hang": False}

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# --------------------------------------------------------------------------------- the corpus

@dataclass
class Case:
    name: str
    args: list[Any]
    expect: set[int]
    env: str = "plain"  # plain | noroot | tmpfs
    check: Callable[[dict[str, Any]], str | None] | None = None  # extra check on the result; a problem or None
    scan: list[Path] = field(default_factory=list)  # folders whose final files must open and hold no .tmp


def _phantoms(dst: Path, n: int = 12, seed: int = 5) -> Path:
    from fundus_cli.data.phantoms import write_phantoms

    write_phantoms(dst, n=n, seed=seed)
    return dst


def _ingest(raw: Path, out: Path) -> Path:
    from fundus_cli.commands.ingest import IngestConfig, ingest

    ingest(IngestConfig(raw=raw, out=out, size=32, workers=1, holdout_fraction=0.25))
    return out


def build(root: Path) -> list[Case]:
    import h5py
    import numpy as np
    import torch

    from fundus_cli.data import h5
    from fundus_cli.commands.ingest import stage as ingest_mod
    from fundus_cli.fsio import LOCK_NAME
    from fundus_cli.training.config import TrainConfig
    from fundus_cli.training.loop import train

    raw = _phantoms(root / "raw")
    data = _ingest(raw, root / "data")
    ckpt = train(TrainConfig(data=data / "train.h5", arch="gan", out=root / "run", size=32, batch=4, width=8,
                             latent_dim=16, steps=2, device="cpu")).checkpoint
    cases: list[Case] = []
    ing = ["--size", "32", "--workers", "1"]

    # 1. two ingests into one folder; stale locks; staged shards from two processes
    busy = root / "busy"
    busy.mkdir()
    cases.append(Case("ingest into a folder held by another process", ["ingest", raw, "--out", busy, *ing], {2},
                      check=lambda r: None if "in use" in r["stderr"] and "pid" in r["stderr"] else "holder not named",
                      scan=[busy]))
    stale = root / "stale"
    stale.mkdir()
    (stale / LOCK_NAME).write_text(json.dumps({"pid": 4194311, "host": "gone"}))
    cases.append(Case("ingest over a stale lock file", ["ingest", raw, "--out", stale, *ing], {0}, scan=[stale]))
    swapped = root / "swapped"
    ingest_mod.SHARD_SIZE, saved_shard = 4, ingest_mod.SHARD_SIZE
    real, calls = ingest_mod.process_file, {"n": 0}

    def flaky(task: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real(task)

    ingest_mod.process_file = flaky
    try:
        _ingest(raw, swapped)
    except KeyboardInterrupt:
        pass
    finally:
        ingest_mod.process_file, ingest_mod.SHARD_SIZE = real, saved_shard
    st = swapped / ingest_mod.STAGING_DIR
    (st / "shard-000000.h5").rename(st / "x")
    (st / "shard-000001.h5").rename(st / "shard-000000.h5")
    (st / "x").rename(st / "shard-000001.h5")

    def right_images(r: dict[str, Any]) -> str | None:
        def by_source(p: Path) -> dict[str, Any]:
            with h5.open_dataset(p) as d:
                return dict(zip(d.sources(), d.images()))
        truth = {**by_source(data / "train.h5"), **by_source(data / "holdout.h5")}
        got = {**by_source(swapped / "train.h5"), **by_source(swapped / "holdout.h5")}
        wrong = [s for s, im in got.items() if not np.array_equal(im, truth[s])]
        return f"{len(wrong)} images under another photograph's name" if wrong else None

    cases.append(Case("resume over staged shards whose parts do not match", ["ingest", raw, "--out", swapped, *ing],
                      {0}, check=right_images, scan=[swapped]))

    # 2. data outside the file
    def hostile_h5(name: str, fn: Callable[[Any, Path], None]) -> Path:
        d = root / "h5" / name
        d.mkdir(parents=True)
        for f in ("train.h5", "holdout.h5"):
            shutil.copy(data / f, d / f)
        with h5py.File(d / "train.h5", "r+") as f:
            fn(f, d)
        return d

    secret = root / "secret.bin"
    secret.write_bytes(b"secret" * 100_000)

    def external(f: Any, d: Path) -> None:
        shape, dtype = f["images"].shape, f["images"].dtype
        del f["images"]
        f.create_dataset("images", shape=shape, dtype=dtype, external=[(str(secret), 0, h5py.h5f.UNLIMITED)])

    def ext_link(f: Any, d: Path) -> None:
        with h5py.File(d / "other.h5", "w") as g:
            g["imgs"] = f["images"][:]
        del f["images"]
        f["images"] = h5py.ExternalLink(str(d / "other.h5"), "/imgs")

    def virtual(f: Any, d: Path) -> None:
        with h5py.File(d / "other.h5", "w") as g:
            g["imgs"] = f["images"][:]
        shape, dtype = f["images"].shape, f["images"].dtype
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        layout[...] = h5py.VirtualSource(str(d / "other.h5"), "imgs", shape=shape)
        del f["images"]
        f.create_virtual_dataset("images", layout)

    def soft(f: Any, d: Path) -> None:
        f.move("images", "elsewhere")
        f["images"] = h5py.SoftLink("/elsewhere")

    def bad_attr(f: Any, d: Path) -> None:
        f.attrs["class_names"] = "{not json"

    def bad_utf8(f: Any, d: Path) -> None:
        f["source"][0] = b"bad-\xff\xfe.jpg"
        f["patient"][0] = b"\xc3("

    for name, fn in (("external storage", external), ("external link", ext_link), ("virtual dataset", virtual),
                     ("soft link", soft), ("class_names not JSON", bad_attr)):
        d = hostile_h5(name.replace(" ", "-"), fn)
        cases.append(Case(f"info on a dataset with {name}", ["info", d / "train.h5"], {2}))
        cases.append(Case(f"train on a dataset with {name}", ["train", "--data", d / "train.h5", "--out", d / "run",
                                                              "--steps", "1", "--device", "cpu"], {2}, scan=[d]))
        outside = fn is not bad_attr  # the page must say the file was refused, not show its pixels
        cases.append(Case(f"report on a folder with {name}", ["report", d, "--out", d / "report.html"], {0, 2},
                          check=lambda r, d=d, outside=outside: (
                              "the page does not say the dataset was refused" if outside
                              and (d / "report.html").exists()
                              and "reads only data stored inside" not in (d / "report.html").read_text() else None),
                          scan=[d]))
    d = hostile_h5("non-utf8", bad_utf8)
    cases.append(Case("info on a dataset whose source text is not UTF-8", ["info", d / "train.h5", "--json"], {0}))
    trunc = root / "h5" / "truncated.h5"
    trunc.write_bytes((data / "train.h5").read_bytes()[:5000])
    cases.append(Case("info on a truncated dataset", ["info", trunc], {2}))

    # 3. names and special files in the raw folder
    odd = root / "raw-odd"
    shutil.copytree(raw, odd)
    shutil.copy(next((odd / "images").glob("*.jpg")), os.fsdecode(bytes(odd / "images") + b"/caf\xe9-\xff.jpg"))
    cases.append(Case("ingest a folder with a file name that is not UTF-8", ["ingest", odd, "--out", root / "o1", *ing],
                      {0}, scan=[root / "o1"]))
    cases.append(Case("rerun ingest on that folder", ["ingest", odd, "--out", root / "o1", *ing, "--force"], {0},
                      scan=[root / "o1"]))
    pipe = root / "raw-pipe"
    shutil.copytree(raw, pipe)
    os.mkfifo(pipe / "images" / "pipe.jpg")
    cases.append(Case("ingest a folder with a named pipe called .jpg", ["ingest", pipe, "--out", root / "o2", *ing],
                      {0}, scan=[root / "o2"]))
    locked = root / "raw-locked"
    shutil.copytree(raw, locked)
    (locked / "more").mkdir()
    shutil.copy(next((locked / "images").glob("*.jpg")), locked / "more" / "x.jpg")
    os.chmod(locked / "more", 0)
    cases.append(Case("ingest a folder with an unreadable subfolder", ["ingest", locked, "--out", root / "o3", *ing],
                      {0}, env="noroot", check=lambda r: None if "more/" in (root / "o3" / "ingest-report.json")
                      .read_text() else "the unreadable subfolder is not in the report", scan=[root / "o3"]))

    # 4. markup in user text
    cases.append(Case("error naming a path with [/]", ["info", root / "a[/]b.h5"], {2},
                      check=lambda r: None if "a[/]b.h5" in r["stderr"] else "path not printed as given"))
    cases.append(Case("error naming patient[left]/train.h5", ["info", root / "patient[left]" / "train.h5"], {2},
                      check=lambda r: None if "patient[left]/train.h5" in r["stderr"] else "path not printed as given"))

    # 5. folders that cannot be written; a full disk
    ro = root / "ro"
    ro.mkdir()
    for dirpath, _, filenames in os.walk(root):
        if Path(dirpath) != locked / "more":
            os.chmod(dirpath, 0o755)
    os.chmod(ro, 0o555)
    for name, args in (("ingest", ["ingest", raw, "--out", ro / "d", *ing]),
                       ("train", ["train", "--data", data / "train.h5", "--out", ro / "run", "--steps", "1",
                                  "--size", "32", "--batch", "2", "--device", "cpu"]),
                       ("sample", ["sample", "--checkpoint", ckpt, "--n", "2", "--out", ro / "s.h5", "--device", "cpu"]),
                       ("evaluate", ["evaluate", "--real", data / "train.h5", "--synthetic", data / "train.h5",
                                     "--train", data / "train.h5", "--out", ro / "ev", "--no-usefulness", "--n-boot",
                                     "2", "--metrics", "fid,kid"]),
                       ("audit-privacy", ["audit-privacy", "--train", data / "train.h5", "--holdout",
                                          data / "holdout.h5", "--synthetic", data / "train.h5", "--out", ro / "au",
                                          "--embeddings", "pixel", "--size", "32", "--device", "cpu"]),
                       ("report", ["report", data, "--out", ro / "report.html"])):
        cases.append(Case(f"{name} into a folder that cannot be written", args, {2}, env="noroot",
                          check=lambda r: None if str(ro) in r["stderr"] else "folder not named", scan=[ro]))
    full = root / "full"
    cases.append(Case("ingest onto a full disk (600 KB tmpfs)", ["ingest", raw, "--out", full / "a", "--size", "64",
                                                                 "--workers", "1"], {2}, env="tmpfs",
                      check=lambda r: None if "no space left" in r["stderr"] else "not reported as a full disk"))
    cases.append(Case("sample onto a full disk", ["sample", "--checkpoint", ckpt, "--n", "3000", "--out",
                                                  full / "s.h5", "--device", "cpu"], {2}, env="tmpfs",
                      check=lambda r: None if "no space left" in r["stderr"] else "not reported as a full disk"))

    cases.append(Case("train onto a full disk", ["train", "--data", data / "train.h5", "--out", full / "run",
                                                 "--steps", "3", "--size", "32", "--batch", "2", "--width", "32",
                                                 "--device", "cpu"], {2}, env="tmpfs",
                      check=lambda r: None if "no space left" in r["stderr"] else "not reported as a full disk"))

    # 6. checkpoints: right marker, wrong contents; and pickles that would run code
    pristine = torch.load(ckpt, weights_only=True)

    def damaged(name: str, fn: Callable[[dict[str, Any]], None]) -> Path:
        ck = copy.deepcopy(pristine)
        fn(ck)
        d = root / "ckpt" / name
        d.mkdir(parents=True)
        torch.save(ck, d / "checkpoint.pt")
        return d

    def wrong_tensor(ck: dict[str, Any]) -> None:
        ck["models"]["generator"][next(iter(ck["models"]["generator"]))] = torch.zeros(3)

    for name, fn in (("model_config without latent_dim", lambda ck: ck["model_config"].pop("latent_dim")),
                     ("weights of another network", wrong_tensor),
                     ("train_config not a dict", lambda ck: ck.__setitem__("train_config", [1])),
                     ("optimizer state for other parameters",
                      lambda ck: ck["optimizers"].__setitem__("generator", {"state": {}, "param_groups": []}))):
        d = damaged(name.replace(" ", "-"), fn)
        cases.append(Case(f"info on a checkpoint with {name}", ["info", d / "checkpoint.pt"], {2}))
        cases.append(Case(f"sample from a checkpoint with {name}", ["sample", "--checkpoint", d / "checkpoint.pt",
                                                                   "--n", "2", "--out", d / "s.h5", "--device", "cpu"],
                          {2}, scan=[d]))
        cases.append(Case(f"train --resume a checkpoint with {name}",
                          ["train", "--arch", "gan", "--data", data / "train.h5", "--out", d, "--resume", "--steps",
                           "4", "--device", "cpu"], {2}, scan=[d]))
    pickled = root / "ckpt" / "pickle"
    pickled.mkdir(parents=True)
    marker = root / "pwned"

    class Evil:
        def __reduce__(self) -> Any:
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "fundus-cli checkpoint", "payload": Evil()}, pickled / "checkpoint.pt")
    cases.append(Case("sample from a pickle that runs code", ["sample", "--checkpoint", pickled / "checkpoint.pt",
                                                             "--n", "2", "--out", pickled / "s.h5"], {2},
                      check=lambda r: "the pickle ran code" if marker.exists() else None))

    # 9. spreadsheet formulas; 10. nothing identifying with --pseudonymize
    formula = root / "formula"
    formula.mkdir()
    shutil.copy(data / "train.h5", formula / "train.h5")
    with h5py.File(formula / "train.h5", "r+") as f:
        for i in range(f["patient"].shape[0]):
            f["patient"][i] = FORMULA

    def no_formula(r: dict[str, Any]) -> str | None:
        rows = list(csv.reader(open(formula / "audit" / "flagged.csv", newline="")))
        bad = [c for row in rows[1:] for c in row if c[:1] in ("=", "+", "@", "\t", "\r")]
        return f"formula cells in flagged.csv: {bad[:2]}" if bad else (None if len(rows) > 1 else "nothing flagged")

    cases.append(Case("audit a training set whose patient ids are formulas",
                      ["audit-privacy", "--train", formula / "train.h5", "--holdout", data / "holdout.h5",
                       "--synthetic", formula / "train.h5", "--out", formula / "audit", "--embeddings", "pixel",
                       "--size", "32", "--device", "cpu"], {0, 1, 3}, check=no_formula, scan=[formula]))
    named = root / "Jane Doe scans"
    shutil.copytree(raw, named)
    (named / "images" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    private = root / "John Smith"
    private.mkdir()
    shutil.move(named / "labels.csv", private / "labels.csv")
    pseudo = root / "pseudo"

    def nothing_identifying(r: dict[str, Any]) -> str | None:
        for p in pseudo.iterdir():
            text = p.read_bytes().decode("utf-8", "replace") if p.suffix != ".h5" else ""
            if p.suffix == ".h5":
                with h5py.File(p, "r") as f:
                    text = " ".join(str(v) for v in f.attrs.values()) + " ".join(
                        str(v) for k in ("source", "patient") for v in f[k][:])
            for s in ("Jane Doe", "John Smith", "broken.jpg"):
                if s in text:
                    return f"{p.name} holds {s!r}"
        return None

    cases.append(Case("ingest --pseudonymize from folders with names", ["ingest", named, "--out", pseudo, *ing,
                                                                       "--pseudonymize", "--labels",
                                                                       private / "labels.csv", "--pseudonym-map",
                                                                       root / "map.csv"], {0},
                      check=nothing_identifying, scan=[pseudo]))
    return cases


# --------------------------------------------------------------------------------- checks

def scan(folder: Path) -> tuple[list[str], list[str]]:
    """(final files that do not open, stray .tmp files) under `folder`."""
    import torch

    from fundus_cli.data import h5
    from fundus_cli.errors import FundusError
    from fundus_cli.training.checkpoint import load_checkpoint

    broken, tmp = [], []
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            p = Path(dirpath, name)
            if name.endswith(".tmp"):
                tmp.append(str(p))
                continue
            try:
                if name.endswith(".h5") and ".ingest-staging" not in dirpath and "h5" != p.parent.parent.name:
                    h5.open_dataset(p).close()
                elif name.endswith(".json"):
                    json.loads(p.read_text())
                elif name.endswith(".pt") and "ckpt" not in p.parts:
                    load_checkpoint(p)
            except (FundusError, ValueError, OSError, RuntimeError, torch.serialization.pickle.UnpicklingError):
                broken.append(str(p))
    return broken, tmp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--keep", type=Path, help="build the corpus here and keep it")
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    args = ap.parse_args()
    if args.worker:
        worker()
        return
    root = Path(args.keep or tempfile.mkdtemp(prefix="fundus-hostile-"))
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    t0 = time.perf_counter()
    print(f"building the corpus in {root} ...", flush=True)
    cases = [c for c in build(root) if args.k in c.name]
    print(f"built {len(cases)} cases in {time.perf_counter() - t0:.0f} s", flush=True)

    (root / "full").mkdir(exist_ok=True)
    prefixes = {"plain": []}
    if os.geteuid() == 0 and shutil.which("setpriv"):
        prefixes["noroot"] = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    elif os.geteuid() != 0:
        prefixes["noroot"] = []
    mount = f'mount -t tmpfs -o size=600k tmpfs "{root / "full"}" && exec "$@"'
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True) \
        if shutil.which("unshare") else None
    if probe is not None and probe.returncode == 0:
        prefixes["tmpfs"] = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mount, "sh"]
    workers = {env: Worker(p) for env, p in prefixes.items()}

    # Item 1: a real second process holds the lock on `busy` while its case runs.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                               "from fundus_cli.fsio import folder_lock\n"
                               "with folder_lock(Path(sys.argv[1]), command='fundus ingest'):\n"
                               "    print('locked', flush=True); time.sleep(3600)\n", str(root / "busy")],
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"

    totals: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    try:
        for case in cases:
            if case.env not in workers:
                print(f"SKIP  {case.name}: no {case.env} environment on this machine")
                totals["skipped"] += 1
                continue
            t = time.perf_counter()
            listing = [str(root / "full")] if case.env == "tmpfs" else []
            r = workers[case.env].run([str(a) for a in case.args], TIMEOUT, listing)
            problems = []
            codes[str(r["code"])] += 1
            if r["hang"]:
                totals["hangs"] += 1
                problems.append(f"hung for more than {TIMEOUT:.0f} s")
            if r.get("exception") or "Traceback" in r["stderr"]:
                totals["tracebacks"] += 1
                problems.append(f"traceback: {r.get('exception') or r['stderr'][-300:]}")
            if r.get("died"):
                problems.append(f"the process died (exit {r['code']})")
            if r["code"] not in case.expect:
                totals["unexpected exit codes"] += 1
                problems.append(f"exit {r['code']}, expected {sorted(case.expect)}: {r['stderr'][-300:].strip()}")
            elif case.check is not None and not r["hang"]:
                try:
                    why = case.check(r)
                except Exception as e:  # a check that cannot read the output is a failure too
                    why = f"check failed: {type(e).__name__}: {e}"
                if why:
                    totals["failed checks"] += 1
                    problems.append(why)
            for folder in case.scan:
                if case.env == "tmpfs":
                    continue  # the tmpfs lives only inside the worker's namespace, checked there
                broken, tmp = scan(folder)
                totals["files that do not open"] += len(broken)
                totals["stray .tmp"] += len(tmp)
                problems += [f"does not open: {b}" for b in broken] + [f"stray: {x}" for x in tmp]
            if case.env == "tmpfs":  # listed by the worker, inside its namespace
                tmp = [f for f in r.get("files", []) if f.endswith(".tmp")]
                totals["stray .tmp"] += len(tmp)
                problems += [f"stray: {x}" for x in tmp]
            totals["cases"] += 1
            status = "ok  " if not problems else "FAIL"
            print(f"{status}  exit {r['code']!s:>4} (expected {'/'.join(map(str, sorted(case.expect)))})  "
                  f"{time.perf_counter() - t:5.1f} s  {case.name}" + "".join(f"\n        {p}" for p in problems),
                  flush=True)
            if problems:
                totals["cases with a problem"] += 1
    finally:
        holder.kill()
        holder.wait()
        for w in workers.values():
            w.close()
        os.chmod(root / "raw-locked" / "more", 0o755) if (root / "raw-locked" / "more").exists() else None
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"cases: {totals['cases']}   (skipped: {totals['skipped']})")
    print("exit codes: " + ", ".join(f"{k}: {v}" for k, v in sorted(codes.items())))
    for key in ("tracebacks", "hangs", "files that do not open", "stray .tmp", "unexpected exit codes",
                "failed checks", "cases with a problem"):
        print(f"{key}: {totals[key]}")
    print(f"time: {time.perf_counter() - t0:.0f} s")
    sys.exit(1 if totals["cases with a problem"] else 0)


if __name__ == "__main__":
    main()
