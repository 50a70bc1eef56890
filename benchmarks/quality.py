"""Generator quality on real photographs: fundus-cli's GAN and VAE against the PyTorch-examples
DCGAN, at equal CPU budget, side by side in one run (the standard benchmark of issue 10).

Usage (from the project root; the checkout's own `fundus_cli` is measured, not an installed copy):

    python benchmarks/quality.py                          # idrid516, 64 px, 30 CPU-minutes each, all contestants
    python benchmarks/quality.py --size 128 --minutes 120 # the 128-px budget of issue 10
    python benchmarks/quality.py --data idrid             # second opinion: the 128 full-size IDRiD photographs
    python benchmarks/quality.py --contestants gan-start,gan --jobs 2
    python benchmarks/quality.py --contestants gan --seed 1   # a second training seed
    python benchmarks/quality.py --contestants gan --variant gan-v4=gan:vessel=4 --jobs 2
    python benchmarks/quality.py --quick                  # smoke run: 60 photographs, 0.2 min each, ~3 min

Data. `--data idrid516` (default): the 516 photographs of ../shared/data/idrid516 (labels.csv,
id column `file`, label `any_lesion`); `--data idrid`: the 128 full-size camera JPEGs of
../shared/data/idrid (labels.csv there, ids `images/NNNN.jpg`, same label). Each is ingested
once with `fundus_cli.data.ingest` at `--size` px with a 20 % holdout (seed 0) into
OUT/data-<data>-<size> and reused by later runs. Without ../shared, phantoms stand in (the
script says so; their numbers say nothing about real photographs). `--quick` ingests an evenly
spread 60-photograph subset (48 train, 12 holdout) into OUT/data-quick-<data>-<size>.

Contestants (CONTESTANTS below; pick with --contestants). Each trains with
`TrainConfig(max_cpu_minutes=M, steps=10**6, device="cpu")` on one torch thread, so the budget
is CPU time of its own process: a fair split even when other work shares the cores. They run
one after another, or `--jobs 2` at a time as separate processes (each still one thread).
    dcgan      the DCGAN of pytorch/examples (nz=100, ngf=ndf=64, BN, BCE, batch 64, Adam 2e-4),
               unconditional, as defined for 64 px; at 128 px one more layer on each side
    gan-start  `fundus train --arch gan --preset demo --conditional` with the settings of commit
               1c01205, where issue 10 started, pinned explicitly (random flips, not one disc
               orientation; strided discriminator without patch head, no ADA, cutout
               DiffAugment, batch 16, lr 5e-4, ...). Its settings, not its code: it is trained
               and sampled by the checkout, so fixes such as the EMA generator's standing
               BatchNorm statistics apply to it too (a 30-minute gan-start scored KID 3.58 x1e-3
               sampled as at 1c01205, 0.48 with them: comparisons against it are conservative)
    gan        the same command with the checkout's current defaults
    vae-start  `--arch vae --preset demo --conditional` as at 1c01205 (random flips, no adversarial
               term)
    vae        the same with the current defaults
`--variant NAME=BASE:KEY=VALUE,...` adds a contestant defined on the command line: BASE's
definition with those TrainConfig fields set (values read as JSON, else as text), so a setting
can be tried side by side without editing CONTESTANTS; it may repeat, and each variant runs
after the `--contestants` named (`--contestants ''` runs the variants alone, to add a contestant
to an earlier run at the same seed).
The run length is set by the CPU budget, so steps=10**6 would make any schedule defined as a
share of the run meaningless; the one such default (the VAE's KL warm-up, steps / 5) is pinned
to the demo preset's 120 steps for both VAEs (HARNESS below). A pinned setting that is not a
TrainConfig field in this checkout is dropped and listed (a checkout that predates it, or
that retired it, has only the start behaviour; tests/test_benchmark_quality.py keeps the pins
to current fields). The pins fix the settings, not the code: a change to the
resnet generator's code itself also changes gan-start, and so would a new behaviour without a
switch of its own (keep one for each, as `orient` is: False = the random flips of the start).

After training, each contestant's EMA weights draw `--samples` images (512) through
`fundus_cli.api.sample` (conditional models: classes in the training shares) into
OUT/<name>/synthetic.h5 with the dataset schema; the DCGAN's samples go through the same
schema writer, with labels drawn at random in the training shares (it is unconditional).
Each set is then evaluated with `fundus_cli.api.evaluate` against the holdout, once in the
default random-CNN features and, where the data have labels, once in `--features classifier`
(usefulness tests off), and audited with `fundus_cli.api.audit_privacy` against the training set.

Figures (printed as one table, all of them in OUT/quality.json):
    steps, img/s    optimisation steps done in the budget; training images per CPU-second
    KID             x 1000, against the holdout, with its bootstrap 95 % CI; the `real train`
                    row is the floor: the real training photographs scored the same way at the
                    same sample size (what a perfect generator reaches)
    +floor          KID excess = contestant - floor (issue 10's target: the new GAN's at most
                    half gan-start's); `cls` = the same in classifier features
    P, R            precision (share of samples inside the real manifold) and recall (share of
                    the real manifold the samples cover), k-NN PRDC; `real train` row: real-vs-real
    v.frac          mean vessel fraction of the samples (the field of view's share that the vessel
                    detector finds); `real train` row: the holdout's
    vessel, colour, sharp, disc
                    fundus statistics: Wasserstein-1 distance to the holdout of vessel density,
                    sharpness and optic-disc brightness, and the mean colour-histogram EMD (grey
                    levels); `real train` row: the same distances for the real training images
    flat%, garish%  shares of all the samples outside the real training photographs' range (their
                    0.5th-99.5th percentiles, `odd_shares`): flat, less fine detail (the green
                    Laplacian's spread) than almost any photograph; garish, more fine detail or
                    more colour patches (spread of R - G or G - B) than almost any; `real train`
                    row: the holdout's shares (images drawn like the training photographs land
                    there by chance: about 0.5 % flat and up to 1.5 % garish)
    audit           the privacy audit's verdict on the samples (PASS / WARN / FAIL / INCONCLUSIVE)
Beware (issue 10): random-CNN KID could not tell vessel-free discs from photographs, and vessel
density scored checkerboard texture as vessels; read recall, classifier KID and the grids too.

OUT/quality.png: the holdout (first 16 images), then one grid per contestant of its first 16
samples, each labelled with its name, budget, steps and KID; 64-px images are shown 2x
(nearest neighbour). OUT/<name>/ holds the run, the samples, evaluate-*/ and audit/ reports and
log.txt (the worker's output).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

import numpy as np
import torch
from torch import nn

from fundus_cli import api
from fundus_cli.commands.audit import AuditConfig
from fundus_cli.data import h5
from fundus_cli.data.quality import phash, quality_measures
from fundus_cli.errors import FundusError
from fundus_cli.images import grid_image, write_png
from fundus_cli.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
START_COMMIT = "1c01205"

# name -> what it trains. "overrides" are TrainConfig fields on top of HARNESS and the run's
# common settings (preset demo, conditional, size, CPU budget); an empty dict = current defaults.
CONTESTANTS: dict[str, dict[str, Any]] = {
    "dcgan": {"kind": "dcgan", "title": "DCGAN (pytorch/examples)"},
    # The resnet generator and the spectrally-normalised discriminator of the start are the only
    # ones since 749302d (the skip generator and the D without spectral norm lost), so no pins.
    "gan-start": {"kind": "fundus", "arch": "gan", "title": f"GAN @ {START_COMMIT}",
                  "overrides": {"orient": False, "patch_head": False, "upsample": "nearest", "detail": 0.0, "vessel": 0.0, "vessel_lines": 0.0, "ada_target": 0.0, "lecam": 0.0, "discriminator": "strided",
                                "diffaugment": "cutout", "batch": 16, "lr": 5e-4, "lr_d": 5e-4, "width": 16,
                                "latent_dim": 128, "gan_loss": "hinge", "r1_gamma": 0.1, "r1_every": 4,
                                "ema_decay": 0.999}},
    "gan": {"kind": "fundus", "arch": "gan", "title": "GAN (current)", "overrides": {}},
    "vae-start": {"kind": "fundus", "arch": "vae", "title": f"VAE @ {START_COMMIT}",
                  "overrides": {"orient": False, "adv_weight": 0.0, "local_latent": 0, "line_weight": 0.0, "batch": 32, "lr": 1e-3, "width": 16,
                                "latent_dim": 128, "beta": 1.0, "recon": "l1", "ssim_weight": 0.2,
                                "ema_decay": 0.999}},
    "vae": {"kind": "fundus", "arch": "vae", "title": "VAE (current)", "overrides": {}},
}
# Settings of the harness, not of a contestant: see the docstring (run length set by CPU time).
HARNESS: dict[str, dict[str, Any]] = {
    "gan": {"sample_every": 10**9, "snapshot_every": 10**9},
    "vae": {"sample_every": 10**9, "snapshot_every": 10**9, "kl_warmup": 120},
}
DATASETS = {  # name -> (raw folder, labels CSV, id column, label column)
    "idrid516": (SHARED / "idrid516" / "images", SHARED / "idrid516" / "labels.csv", "file", "any_lesion"),
    "idrid": (SHARED / "idrid", SHARED / "idrid" / "labels.csv", "file", "any_lesion"),
}
QUICK_IMAGES = 60
QUICK_MINUTES = 0.2
GRID_N = 16  # images per grid in quality.png


# -- the anchor: the DCGAN of pytorch/examples (nz=100, ngf=ndf=64, BN, transposed convs, BCE).
# Defined there for 64 px; for 128 px one more (de)convolution on each side, at twice the width.
def _mults(size: int) -> list[int]:
    if size not in (64, 128):
        raise FundusError(f"the DCGAN anchor is defined for 64 and 128 px, not {size}")
    return [8, 4, 2, 1] if size == 64 else [16, 8, 4, 2, 1]


class DCGANGenerator(nn.Sequential):
    def __init__(self, nz: int = 100, ngf: int = 64, size: int = 64) -> None:
        m = _mults(size)
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz, ngf * m[0], 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(ngf * m[0]), nn.ReLU(True)]
        for a, b in zip(m, m[1:]):
            layers += [nn.ConvTranspose2d(ngf * a, ngf * b, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * b),
                       nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ngf * m[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]
        super().__init__(*layers)


class DCGANDiscriminator(nn.Sequential):
    def __init__(self, ndf: int = 64, size: int = 64) -> None:
        m = _mults(size)[::-1]
        layers: list[nn.Module] = [nn.Conv2d(3, ndf * m[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for a, b in zip(m, m[1:]):
            layers += [nn.Conv2d(ndf * a, ndf * b, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * b),
                       nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(ndf * m[-1], 1, 4, 1, 0, bias=False)]
        super().__init__(*layers)


def _init(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def train_dcgan(images: np.ndarray, minutes: float, *, seed: int = 0, batch: int = 64) -> tuple[nn.Module, int]:
    torch.manual_seed(seed)
    size = images.shape[1]
    g, d = DCGANGenerator(size=size), DCGANDiscriminator(size=size)
    g.apply(_init)
    d.apply(_init)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    data = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    rng = np.random.default_rng(seed)
    threads = torch.get_num_threads()
    c0 = time.process_time()
    steps = 0
    while (time.process_time() - c0) / threads < 60 * minutes:
        x = data[rng.choice(len(data), batch, replace=len(data) < batch)]
        z = torch.randn(batch, 100, 1, 1)
        fake = g(z)
        loss_d = bce(d(x).view(-1), torch.ones(batch)) + bce(d(fake.detach()).view(-1), torch.zeros(batch))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = bce(d(fake).view(-1), torch.ones(batch))
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        steps += 1
    return g, steps


def write_dcgan_samples(g: nn.Module, out: Path, *, n: int, train_h5: Path, steps: int, seed: int = 0) -> Path:
    """The DCGAN's samples as a synthetic set of the dataset schema, as `fundus sample` writes one."""
    from fundus_cli.images import to_uint8

    with h5.open_dataset(train_h5) as r:
        info = r.info
        labels = r.labels()
        mask = r.fov_masks().mean(0) >= 0.5  # what fundus-cli's models take as their field of view
    size = info.image_size
    names = list(info.class_names)
    known = labels[labels >= 0]
    shares = np.bincount(known, minlength=len(names)) / max(1, len(known)) if names and len(known) else None
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    circle = ((size - 1) / 2, (size - 1) / 2, size / 2)
    provenance = {"generator": "pytorch-examples DCGAN (benchmarks/quality.py)", "steps": steps,
                  "dataset_fingerprint": info.fingerprint, "seed": seed, "n": n,
                  "labels": "random in the training class shares (the DCGAN is unconditional)"}
    # Batch-norm in training mode, in batches of 64, as pytorch/examples draws its sample grids
    # (it never switches to eval mode; its running statistics lag far behind after short runs).
    g.train()
    with h5.DatasetWriter(out, image_size=size, split="synthetic", kind="synthetic", class_names=names,
                          options={"n": n, "seed": seed}, provenance=provenance) as w, torch.no_grad():
        for b0 in range(0, n, 64):
            imgs = to_uint8(g(torch.randn(64, 100, 1, 1, generator=gen)))[: n - b0]
            for k, img in enumerate(imgs):
                i = b0 + k
                label = int(rng.choice(len(names), p=shares)) if shares is not None else -1
                w.append(h5.Record(image=img, mask=mask.astype(np.uint8), circle=circle, source=f"dcgan:i={i}",
                                   patient=f"synthetic-{i}", label=label, phash=phash(img), dup_group=i,
                                   quality=quality_measures(img, mask, fov_fraction=1.0)))
    return out


# -- data ------------------------------------------------------------------------------------
def _quick_subset(raw: Path, labels: Path, id_col: str, dest: Path) -> Path:
    """An evenly spread subset of QUICK_IMAGES photographs (both classes) copied to `dest`."""
    with labels.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = sorted(reader, key=lambda r: r[id_col])
    pick = rows[:: max(1, len(rows) // QUICK_IMAGES)][:QUICK_IMAGES]
    if dest.exists():
        shutil.rmtree(dest)
    for row in pick:
        (dest / row[id_col]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(raw / row[id_col], dest / row[id_col])
    with (dest / "labels.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(pick)
    return dest / "labels.csv"


def prepare_data(out: Path, data: str, size: int, quick: bool) -> tuple[Path, str]:
    """Ingest once into a folder named after the data and size; returns (folder, description)."""
    raw, labels, id_col, label_col = DATASETS[data]
    real = raw.is_dir() and labels.is_file()
    tag = ("quick-" if quick else "") + (data if real else "phantoms")
    folder = out / f"data-{tag}-{size}"
    if real:
        source = f"{data}: {labels.parent}" + (f" ({QUICK_IMAGES}-photograph subset)" if quick else "")
    else:
        source = f"PHANTOMS (no {raw}: numbers say nothing about real photographs)"
    if (folder / "train.h5").is_file() and (folder / "holdout.h5").is_file():
        return folder, source + f", reused from {folder}"
    if real:
        if quick:
            labels = _quick_subset(raw, labels, id_col, out / f"raw-{tag}")
            raw = labels.parent
        cfg = api.IngestConfig(raw=raw, out=folder, size=size, labels=str(labels), id_column=id_col,
                               label_column=label_col, holdout_fraction=0.2, seed=0, force=True)
    else:
        raw = out / f"raw-{tag}"
        api.phantoms(raw, n=QUICK_IMAGES if quick else 516, seed=0, overwrite=True)
        cfg = api.IngestConfig(raw=raw, out=folder, size=size, holdout_fraction=0.2, seed=0, force=True)
    api.ingest(cfg)
    return folder, source


# -- one contestant (runs in its own process, one torch thread) --------------------------------
def _kid_block(report: dict[str, Any]) -> dict[str, Any]:
    o = report["realism"]["overall"]
    s, b = o["synthetic"], o.get("baseline_train", {})
    out: dict[str, Any] = {"n_real": o["n_real"], "n_compared": o["n_compared"]}
    for k in ("kid", "fid", "precision", "recall", "density", "coverage"):
        if k in s:
            out[k] = s[k]
            if k in b:
                out[k + "_real_train"] = b[k]
    if "kid" in s and "kid" in b:
        out["kid_excess"] = s["kid"]["value"] - b["kid"]["value"]
    out["fundus_statistics"] = report["fundus_statistics"]
    out["notes"] = report["notes"]
    return out


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
TRAIN_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))  # what an override may set


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """`NAME=BASE:KEY=VALUE,...` -> (NAME, BASE's definition with those TrainConfig overrides)."""
    head, _, settings = text.partition(":")
    name, _, base = head.partition("=")
    if not _NAME.fullmatch(name) or name in CONTESTANTS:
        raise ValueError(f"{text!r}: NAME must be a new folder name (letters, digits, _.-), not one of {', '.join(CONTESTANTS)}")
    if CONTESTANTS.get(base, {}).get("kind") != "fundus":
        raise ValueError(f"{text!r}: BASE must be one of {', '.join(k for k, v in CONTESTANTS.items() if v['kind'] == 'fundus')}")
    overrides: dict[str, Any] = {}
    for item in filter(None, settings.split(",")):
        key, eq, raw = item.partition("=")
        if not eq or key not in TRAIN_FIELDS:
            raise ValueError(f"{text!r}: {item!r} is not KEY=VALUE with KEY a TrainConfig field")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    if not overrides:
        raise ValueError(f"{text!r}: give at least one KEY=VALUE after BASE:")
    spec = CONTESTANTS[base]
    title = f"{spec['title']}, " + ", ".join(f"{k}={v}" for k, v in overrides.items())
    return name, {**spec, "title": title, "overrides": {**spec["overrides"], **overrides}}


def select_contestants(contestants: str, variants: list[str]) -> dict[str, dict[str, Any]]:
    """`--contestants` (comma-separated names) and the `--variant`s, in that order; the names may
    be none where variants are given."""
    names = [c.strip() for c in contestants.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONTESTANTS]
    if unknown or not (names or variants):
        raise ValueError(f"--contestants: unknown {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(CONTESTANTS)}, or give '' and a --variant")
    specs = {n: CONTESTANTS[n] for n in names}
    for text in variants:
        try:
            name, spec = parse_variant(text)
        except ValueError as e:
            raise ValueError(f"--variant {e}") from None
        if name in specs:
            raise ValueError(f"--variant {text!r}: {name} is given twice")
        specs[name] = spec
    return specs


def run_contestant(job: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(1)
    name, spec = job["name"], job["spec"]
    d = Path(job["dir"])
    data = Path(job["data"])
    train_h5, holdout_h5 = data / "train.h5", data / "holdout.h5"
    synth = d / "synthetic.h5"
    res: dict[str, Any] = {"name": name, "title": spec["title"], "definition": spec, "minutes": job["minutes"]}
    wall, cpu = time.perf_counter(), time.process_time()
    if spec["kind"] == "dcgan":
        with h5.open_dataset(train_h5) as r:
            images = r.images()
        g, steps = train_dcgan(images, job["minutes"], seed=job["seed"])
        batch = 64
        cpu_train = time.process_time() - cpu
        write_dcgan_samples(g, synth, n=job["samples"], train_h5=train_h5, steps=steps)
        res["train"] = {"steps": steps, "batch": batch}
    else:
        wanted = {**HARNESS[spec["arch"]], **spec["overrides"]}
        dropped = sorted(k for k in wanted if k not in TRAIN_FIELDS)
        cfg = TrainConfig(data=train_h5, arch=spec["arch"], out=d / "run", preset="demo", conditional=job["labelled"],
                          size=job["size"], steps=10**6, max_cpu_minutes=job["minutes"], device="cpu", force=True,
                          seed=job["seed"],
                          **{k: v for k, v in wanted.items() if k in TRAIN_FIELDS})
        tr = api.train(cfg)
        cpu_train = time.process_time() - cpu
        resolved = api.describe(tr.checkpoint)["train_config"]
        api.sample(api.SampleConfig(checkpoint=tr.checkpoint, n=job["samples"], out=synth, seed=0, device="cpu",
                                    force=True))
        res["train"] = {"steps": tr.step, "batch": resolved["batch"], "resolved_config": resolved,
                        "dropped_overrides": dropped}
        steps, batch = tr.step, resolved["batch"]
    res["train"].update({"cpu_seconds": cpu_train, "wall_seconds_with_sampling": time.perf_counter() - wall,
                         "images_per_cpu_second": steps * batch / max(cpu_train, 1e-9)})
    res["samples"] = {"path": str(synth), "n": job["samples"]}
    stages = {"train+sample": time.process_time() - cpu}
    print(f"{name}: {steps} steps in {cpu_train:.0f} CPU-s; {job['samples']} samples in {synth}", flush=True)
    # --quick: fewer bootstrap rounds and shorter feature/encoder training (a smoke run, not figures)
    ev_quick = {"n_boot": 20, "usefulness_steps": 50} if job["quick"] else {}
    au_quick = {"encoder_steps": 50, "n_boot": 100} if job["quick"] else {}
    res["odd"], res["odd_holdout"] = odd_shares(synth, train_h5), odd_shares(holdout_h5, train_h5)
    res["evaluate"] = {}
    for feats in ("random", "classifier"):
        if feats == "classifier" and not job["labelled"]:
            res["evaluate"][feats] = {"skipped": "the data have no labels"}
            continue
        try:
            ev = api.evaluate(api.EvaluateConfig(real=holdout_h5, synthetic=synth, train=train_h5,
                                                 out=d / f"evaluate-{feats}", features=feats, usefulness=False,
                                                 force=True, **ev_quick))
            res["evaluate"][feats] = _kid_block(json.loads(ev.report.read_text(encoding="utf-8")))
            res["evaluate"][feats]["report"] = str(ev.report)
        except FundusError as e:
            res["evaluate"][feats] = {"error": str(e)}
        stages[f"evaluate-{feats}"] = time.process_time() - cpu - sum(stages.values())
        print(f"{name}: evaluate --features {feats} in {stages[f'evaluate-{feats}']:.0f} CPU-s", flush=True)
    try:
        au = api.audit_privacy(AuditConfig(train=train_h5, holdout=holdout_h5, synthetic=synth, out=d / "audit",
                                           device="cpu", force=True, **au_quick))
        res["audit"] = {"decision": au.decision, "reasons": au.reasons, "warnings": au.warnings,
                        "n_flagged": au.n_flagged, "confirmed": len(au.confirmed), "report": str(au.report)}
    except FundusError as e:
        res["audit"] = {"decision": "ERROR", "error": str(e)}
    stages["audit"] = time.process_time() - cpu - sum(stages.values())
    print(f"{name}: audit {res['audit']['decision']} in {stages['audit']:.0f} CPU-s", flush=True)
    res["cpu_seconds_by_stage"] = stages
    res["total_wall_seconds"] = time.perf_counter() - wall
    return res


def _launch(job: dict[str, Any]) -> dict[str, Any]:
    d = Path(job["dir"])
    d.mkdir(parents=True, exist_ok=True)
    (d / "result.json").unlink(missing_ok=True)
    (d / "job.json").write_text(json.dumps(job, indent=1), encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    t = time.perf_counter()
    with (d / "log.txt").open("w", encoding="utf-8") as log:
        rc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(d / "job.json")],
                            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    if rc == 0 and (d / "result.json").is_file():
        res = json.loads((d / "result.json").read_text(encoding="utf-8"))
        print(f"  {job['name']}: done in {time.perf_counter() - t:.0f} s", flush=True)
        return res
    tail = (d / "log.txt").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
    print(f"  {job['name']}: FAILED (exit {rc}); see {d / 'log.txt'}", flush=True)
    return {"name": job["name"], "title": job["spec"]["title"], "minutes": job["minutes"],
            "failed": {"exit_code": rc, "log": str(d / "log.txt"), "tail": tail}}


# -- report ------------------------------------------------------------------------------------
def _v(block: dict[str, Any], key: str) -> float | None:
    x = block.get(key)
    return None if x is None else float(x["value"] if isinstance(x, dict) else x)


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None or not np.isfinite(x) else format(x, fmt)


def _milli(x: float | None) -> float | None:
    return None if x is None else 1e3 * x


def _ci(m: dict[str, float]) -> str:
    return f"[{1e3 * m['ci_low']:.2f}, {1e3 * m['ci_high']:.2f}]"


STAT_COLUMNS = (("vessel", "vessel_density", ".4f"), ("colour", "colour_emd", ".2f"),
                ("sharp", "sharpness", ".0f"), ("disc", "disc_brightness", ".2f"))


def _image_stats(h5_path: Path) -> np.ndarray:
    """Per image (N, 3): the spread of the green channel's Laplacian inside the field of view
    (fine detail: vessels, texture, blotch edges) and the spreads of R - G and of G - B there
    (colour patches)."""
    import cv2

    with h5.open_dataset(h5_path) as r:
        images, masks = r.images(), r.fov_masks()
    out = np.zeros((len(images), 3))
    for i, (im, m) in enumerate(zip(images, masks)):
        x = im.astype(np.float32) / 255
        inner = cv2.erode((m > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0  # no rim
        inside = m > 0
        out[i] = (cv2.Laplacian(x[..., 1], cv2.CV_32F)[inner].std(),
                  (x[..., 0] - x[..., 1])[inside].std(), (x[..., 1] - x[..., 2])[inside].std())
    return out


def odd_shares(images_h5: Path, train_h5: Path) -> dict[str, float]:
    """Shares of images outside the training photographs' range (their 0.5th-99.5th percentiles):
    "flat", less fine detail than almost any photograph (a smooth average); "garish", more fine
    detail or colour patches than almost any (blotched, checkered or multicoloured samples).
    The 16-image grid shows one or two of these at best; this counts them over every sample."""
    real, mine = _image_stats(train_h5), _image_stats(images_h5)
    lo, hi = np.percentile(real, 0.5, axis=0), np.percentile(real, 99.5, axis=0)
    return {"flat": float((mine[:, 0] < lo[0]).mean()), "garish": float((mine > hi).any(axis=1).mean()),
            "n": len(mine)}


def _odd(odd: dict[str, Any] | None, key: str) -> str:
    return _f(None if not odd else 100 * odd[key], ".1f")


def _vessel_fraction(e: dict[str, Any], who: str) -> str:
    """Mean vessel fraction of `who`'s images ("synthetic", or "real": the holdout): the distance
    column says how far apart the two distributions are, this one which way (too few vessels or
    too many)."""
    means = e.get("fundus_statistics", {}).get("means", {}).get(who, {})
    return _f(means.get("vessel_density"), ".4f")


def table(results: list[dict[str, Any]]) -> str:
    head = (f"{'':<10} {'min':>5} {'steps':>6} {'img/s':>6} {'KIDx1e3':>8} {'95% CI':>17} {'+floor':>7} {'cls+fl':>7} "
            f"{'P':>5} {'R':>5} {'v.frac':>7} " + " ".join(f"{c:>7}" for c, _, _ in STAT_COLUMNS)
            + f" {'flat%':>6} {'garish%':>7}  audit")
    lines = [head, "-" * len(head)]
    base = next((r for r in results if "evaluate" in r and "kid" in r["evaluate"].get("random", {})), None)
    if base is not None:
        e = base["evaluate"]["random"]
        k = e.get("kid_real_train", {})
        tv = e["fundus_statistics"].get("train_vs_real", {})
        ci = _ci(k) if k else ""
        lines.append(f"{'real train':<10} {'':>5} {'':>6} {'':>6} {_f(_milli(_v(e, 'kid_real_train')), '.2f'):>8} "
                     f"{ci:>17} {'':>7} {'':>7} {_f(_v(e, 'precision_real_train'), '.2f'):>5} "
                     f"{_f(_v(e, 'recall_real_train'), '.2f'):>5} {_vessel_fraction(e, 'real'):>7} "
                     + " ".join(f"{_f(tv.get(key), fmt):>7}" for _, key, fmt in STAT_COLUMNS)
                     + f" {_odd(base.get('odd_holdout'), 'flat'):>6} {_odd(base.get('odd_holdout'), 'garish'):>7}"
                     + "  (the floor)")
    for r in results:
        if "failed" in r:
            lines.append(f"{r['name']:<10} {r['minutes']:>5g} FAILED: {r['failed']['log']}")
            continue
        e = r["evaluate"].get("random", {})
        c = r["evaluate"].get("classifier", {})
        tr = r["train"]
        if "kid" in e:
            k = e["kid"]
            kid = f"{1e3 * k['value']:8.2f} {_ci(k):>17}"
            sv = e["fundus_statistics"]["synthetic_vs_real"]
        else:
            kid, sv = f"{'eval error':>26}", {}
        cls = _f(_milli(c.get("kid_excess")), ".1f")
        lines.append(f"{r['name']:<10} {r['minutes']:>5g} {tr['steps']:>6d} {tr['images_per_cpu_second']:>6.1f} "
                     f"{kid} {_f(_milli(e.get('kid_excess')), '.2f'):>7} {cls:>7} "
                     f"{_f(_v(e, 'precision'), '.2f'):>5} {_f(_v(e, 'recall'), '.2f'):>5} "
                     f"{_vessel_fraction(e, 'synthetic'):>7} "
                     + " ".join(f"{_f(sv.get(key), fmt):>7}" for _, key, fmt in STAT_COLUMNS)
                     + f" {_odd(r.get('odd'), 'flat'):>6} {_odd(r.get('odd'), 'garish'):>7}"
                     + f"  {r['audit']['decision']}")
    return "\n".join(lines)


def _label_strip(width: int, height: int, lines: list[str]) -> np.ndarray:
    import cv2

    strip = np.full((height, width, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(strip, line, (8, 24 + 22 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5 if i else 0.55, (0, 0, 0),
                    2 if i == 0 else 1, cv2.LINE_AA)
    return strip


def figure(path: Path, holdout_h5: Path, results: list[dict[str, Any]], size: int) -> Path:
    with h5.open_dataset(holdout_h5) as r:
        real = r.images(0, GRID_N)
    n = len(real)
    scale = 2 if size <= 64 else 1
    panels = [("real holdout", [f"first {n} images", "(what the samples", "should look like)"], real)]
    for res in results:
        if "failed" in res:
            continue
        with h5.open_dataset(Path(res["samples"]["path"])) as r:
            imgs = r.images(0, n)
        kid = res["evaluate"].get("random", {}).get("kid")
        panels.append((res["name"], [res["title"], f"{res['minutes']:g} CPU-min, {res['train']['steps']} steps",
                                     f"KID x1e3 {1e3 * kid['value']:.1f}" if kid else "KID -",
                                     f"audit {res['audit']['decision']}"], imgs))
    rows = []
    for name, lines, imgs in panels:
        g = grid_image(imgs, nrow=8)
        if scale > 1:
            g = np.repeat(np.repeat(g, scale, axis=0), scale, axis=1)
        rows.append(np.concatenate([_label_strip(230, g.shape[0], [name, *lines]), g], axis=1))
        rows.append(np.full((6, rows[-1].shape[1], 3), 255, np.uint8))
    return write_png(path, np.concatenate(rows[:-1], axis=0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="CPU budget of each contestant, minutes (30)")
    ap.add_argument("--size", type=int, default=64, choices=(64, 128), help="image size, px (64)")
    ap.add_argument("--data", default="idrid516", choices=tuple(DATASETS), help="photographs (idrid516)")
    ap.add_argument("--contestants", default=",".join(CONTESTANTS),
                    help="comma-separated (all); may be '' when --variant names the contestants")
    ap.add_argument("--samples", type=int, default=512, help="images sampled per contestant (512)")
    ap.add_argument("--seed", type=int, default=0,
                    help="training seed of every contestant (0); the data split and the samples' seed stay 0")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=BASE:KEY=VALUE,...",
                    help="one more contestant: BASE with these TrainConfig fields set (repeatable)")
    ap.add_argument("--jobs", type=int, default=1, choices=(1, 2), help="contestants trained at once (1)")
    ap.add_argument("--out", type=Path, default=Path("bench-out/quality"))
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: {QUICK_IMAGES}-photograph subset, {QUICK_MINUTES} min each, 64 samples")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        job = json.loads(args.worker.read_text(encoding="utf-8"))
        res = run_contestant(job)
        (Path(job["dir"]) / "result.json").write_text(json.dumps(res, indent=1, default=str), encoding="utf-8")
        return
    try:
        specs = select_contestants(args.contestants, args.variant)
    except ValueError as e:
        ap.error(str(e))
    names = list(specs)
    minutes = QUICK_MINUTES if args.quick else args.minutes
    samples = 64 if args.quick else args.samples
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data, source = prepare_data(out, args.data, args.size, args.quick)
    with h5.open_dataset(data / "train.h5") as r:
        n_train, classes = r.info.count, list(r.info.class_names)
        labelled = len(classes) >= 2 and bool((r.labels() >= 0).all())
    with h5.open_dataset(data / "holdout.h5") as r:
        n_hold = r.info.count
    print(f"data: {source}\n  {n_train} train / {n_hold} holdout photographs at {args.size} px, classes {classes}"
          f"\ncontestants: {', '.join(names)}; {minutes:g} CPU-minutes each on one thread, {args.jobs} at a time; "
          f"{samples} samples each", flush=True)
    jobs = [{"name": n, "dir": str((out / n).resolve()), "data": str(data.resolve()), "minutes": minutes,
             "size": args.size, "samples": samples, "labelled": labelled, "quick": args.quick, "seed": args.seed,
             "spec": specs[n]} for n in names]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(_launch, jobs))
    dropped = {r["name"]: r["train"]["dropped_overrides"] for r in results
               if r.get("train", {}).get("dropped_overrides")}
    print("\n" + table(results))
    if dropped:
        print("pinned settings that are not TrainConfig fields in this checkout (dropped): "
              + "; ".join(f"{k}: {', '.join(v)}" for k, v in dropped.items()))
    fig = figure(out / "quality.png", data / "holdout.h5", results, args.size)
    report = {"format": "fundus-cli quality benchmark", "start_commit": START_COMMIT,
              "settings": {"minutes": minutes, "size": args.size, "data": args.data, "samples": samples,
                           "jobs": args.jobs, "quick": args.quick, "contestants": names,
                           "seed": args.seed},
              "data": {"source": source, "folder": str(data), "n_train": n_train, "n_holdout": n_hold,
                       "classes": classes},
              "contestants": specs, "harness": HARNESS, "results": results,
              "wall_seconds": time.perf_counter() - t0}
    (out / "quality.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    print(f"\nwrote {out / 'quality.json'} and {fig} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
