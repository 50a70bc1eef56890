from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fundus_cli.training import checkpoint as ckpt_mod


@pytest.mark.parametrize("arch", ["vae", "gan"])
def test_torchrun_two_cpu_processes(arch: str, tiny_data: Path, tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2 -m fundus_cli train ...` trains with DDP over gloo; only rank 0 writes."""
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "fundus_cli", "-q", "train", "--arch", arch,
           "--data", str(tiny_data / "train.h5"), "--out", str(run), "--size", "32", "--width", "8", "--batch", "2",
           "--steps", "4", "--snapshot-every", "2", "--sample-every", "4", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines() == [str(run / "checkpoint.pt")]  # rank 0 alone reports
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["world_size"] == 2
    ck = ckpt_mod.load_checkpoint(run)
    assert ck["step"] == 4 and set(ck["rng"]) == {"rank0", "rank1"}
    assert not torch.equal(ck["rng"]["rank0"], ck["rng"]["rank1"])  # each rank draws its own noise
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [4]  # one writer (log every 10 steps, and at the end)
    assert sorted(p.name for p in run.glob("samples-*.png")) == ["samples-00000004.png"]
