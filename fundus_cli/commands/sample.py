"""`fundus sample`: checkpoint + seeds -> images -> an HDF5 dataset of the same schema as ingest's.

Sample i depends only on (seed, i): its latent vector and class come from a generator seeded
with both, and it is always computed in a batch of the same size whose boundaries sit at
multiples of --batch in the absolute index space. So the same command gives byte-identical
images, and shards made with --seed-start concatenate to exactly the set one run makes
(with the same --batch, on the same machine).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from fundus_cli.data import h5
from fundus_cli.data.quality import phash, quality_measures
from fundus_cli.errors import FundusError
from fundus_cli.fsio import sha256_file
from fundus_cli.models.registry import ARCHITECTURES, architecture
from fundus_cli.progress import track
from fundus_cli.training import checkpoint as ckpt_mod
from fundus_cli.device import resolve_device
from fundus_cli.images import grid_image, to_uint8, write_png

BALANCES = ("training", "uniform")


@dataclass(frozen=True)
class SampleConfig:
    checkpoint: Path | None = None  # checkpoint.pt; default: the newest runs/*/checkpoint.pt
    run: Path | None = None  # a run folder, instead of --checkpoint
    n: int = 1000  # images to generate
    out: Path = Path("data/synthetic.h5")  # output dataset
    seed: int = 0  # with the index, defines every sample
    seed_start: int = 0  # index of the first sample (for shards of one big set)
    label: str | None = None  # one class, by name or index (conditional models)
    class_balance: str = "training"  # training: class shares of the training data; uniform
    truncation: float | None = None  # GAN: scale latents towards the mean (< 1: less variety)
    temperature: float | None = None  # VAE: scale of the prior (< 1: smoother, more typical)
    batch: int = 64  # images per forward pass (part of what defines the bytes of each image)
    device: str = "auto"  # auto | cpu | cuda
    png_dir: Path | None = None  # also write one PNG per image here
    grid: Path | None = None  # also write a grid of the first 64 images
    force: bool = False  # overwrite an existing output


@dataclass
class SampleResult:
    out: Path
    n: int
    checkpoint: Path
    checkpoint_fingerprint: str
    arch: str
    step: int
    class_counts: dict[str, int]
    grid: Path | None
    png_dir: Path | None
    planned_steps: int | None = None  # the run's planned length (train_config.steps), to tell an unfinished run


def newest_checkpoint(runs: Path = Path("runs")) -> Path:
    found = [p for p in runs.glob(f"*/{ckpt_mod.LATEST}") if p.is_file()]
    if not found:
        raise FundusError(f"no checkpoint found in {runs}/*/{ckpt_mod.LATEST}. Train one with `fundus train`, or "
                          "name one with --checkpoint or --run.")
    return max(found, key=lambda p: p.stat().st_mtime)


class Sampler:
    """The generative half of a checkpoint, ready to map latents (and classes) to images."""

    def __init__(self, ckpt: dict[str, Any], device: torch.device) -> None:
        self.arch = ckpt["arch"]
        self.device = device
        mc = ckpt["model_config"]
        self.num_classes = int(mc.get("num_classes", 0))
        self.image_size = int(mc["image_size"])
        if self.arch not in ARCHITECTURES:
            raise FundusError(f"checkpoint architecture {self.arch!r} cannot be sampled")
        self.spec = ARCHITECTURES[self.arch]
        model = self.spec.build(mc)
        self.latent_dim = int(model.config.noise_dim)  # the noise each image is drawn from
        net = self.spec.network(model, self.spec.sampler)
        ema = ckpt.get("ema") or {}
        net.load_state_dict(ema.get(self.spec.sampler) or ckpt["models"][self.spec.sampler])
        self.net = net.to(device).eval()
        mask = dict(net.named_buffers()).get("fov_mask")
        self.mask = (mask.detach().cpu().numpy().reshape(self.image_size, self.image_size) > 0.5) \
            if mask is not None else np.ones((self.image_size, self.image_size), bool)

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, y: torch.Tensor | None, scale: float) -> np.ndarray:
        z = (z * scale).to(self.device)
        y = None if y is None else y.to(self.device)
        x = self.spec.draw(self.net, z, y)
        return to_uint8(x)


def _per_image(seed: int, i: int, latent_dim: int) -> tuple[torch.Tensor, np.random.Generator]:
    ss = np.random.SeedSequence([seed, i])
    z_seed = int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
    z = torch.randn(latent_dim, generator=torch.Generator().manual_seed(z_seed))
    return z, np.random.default_rng(ss.spawn(1)[0])


def _resolve_label(label: str, class_names: list[str], num_classes: int, path: Path) -> int:
    if num_classes == 0:
        raise FundusError(f"{path} was trained without labels (not --conditional), so it cannot sample a class. "
                          "Drop --label, or train with --conditional.")
    if label in class_names:
        return class_names.index(label)
    if label.lstrip("-").isdigit() and 0 <= int(label) < num_classes:
        return int(label)
    raise FundusError(f"--label {label!r}: not a class of {path}; valid: "
                      + ", ".join(f"{i}={n}" for i, n in enumerate(class_names)))


def _checkpoint_path(cfg: SampleConfig) -> Path:
    """The checkpoint to sample from, once the options that need no checkpoint are checked."""
    if cfg.checkpoint is not None and cfg.run is not None:
        raise FundusError("give --checkpoint or --run, not both.")
    path = cfg.checkpoint or (cfg.run / ckpt_mod.LATEST if cfg.run is not None else newest_checkpoint())
    if cfg.n < 1:
        raise FundusError(f"--n {cfg.n}: ask for at least one image.")
    if cfg.batch < 1 or cfg.seed_start < 0:
        raise FundusError("--batch must be positive and --seed-start non-negative.")
    if cfg.class_balance not in BALANCES:
        raise FundusError(f"--class-balance {cfg.class_balance!r}: choose training or uniform.")
    out = Path(cfg.out)
    if out.exists() and not cfg.force:
        raise FundusError(f"{out} already exists. Use --force to overwrite it, or --out to write elsewhere.")
    return path


def _scale(cfg: SampleConfig, arch: str) -> float:
    """--truncation (GAN) or --temperature (VAE), as the architecture says: the scale of the latent vectors."""
    option = architecture(arch).scale_option
    for other in ("truncation", "temperature"):
        if other != option and getattr(cfg, other) is not None:
            users = "/".join(a.name.upper() for a in ARCHITECTURES.values() if a.scale_option == other)
            raise FundusError(f"--{other} is for {users} checkpoints; for a {arch.upper()} use --{option}.")
    scale = getattr(cfg, option)
    scale = 1.0 if scale is None else float(scale)
    if not 0.0 < scale <= 2.0:
        raise FundusError(f"truncation/temperature {scale}: choose a value in (0, 2] (1 = the trained prior).")
    return scale


def _latents_and_labels(cfg: SampleConfig, idx: list[int], sampler: Sampler, fixed_label: int | None,
                        shares: np.ndarray | None) -> tuple[list[torch.Tensor], list[int]]:
    """Image i's latent vector and class depend only on (seed, i)."""
    zs, ys = [], []
    for i in idx:
        z, rng = _per_image(cfg.seed, i, sampler.latent_dim)
        zs.append(z)
        if fixed_label is not None:
            ys.append(fixed_label)
        elif sampler.num_classes:
            ys.append(i % sampler.num_classes if cfg.class_balance == "uniform"
                      else int(rng.choice(sampler.num_classes, p=shares)))
    return zs, ys


def sample(cfg: SampleConfig) -> SampleResult:
    path = _checkpoint_path(cfg)
    out = Path(cfg.out)
    ckpt = ckpt_mod.load_checkpoint(path)
    arch = ckpt["arch"]
    scale = _scale(cfg, arch)
    device = resolve_device(cfg.device)
    sampler = Sampler(ckpt, device)
    class_names = [str(c) for c in ckpt["class_names"]]
    fixed_label = _resolve_label(cfg.label, class_names, sampler.num_classes, path) if cfg.label is not None else None
    shares = _training_shares(ckpt, sampler.num_classes)
    ck_fp = sha256_file(path)
    size = sampler.image_size
    circle = ((size - 1) / 2, (size - 1) / 2, size / 2)
    mask_u8 = sampler.mask.astype(np.uint8)
    tc = ckpt["train_config"] if isinstance(ckpt.get("train_config"), dict) else {}
    planned = tc.get("steps") if isinstance(tc.get("steps"), int) else None
    provenance = {"checkpoint": str(path), "checkpoint_fingerprint": ck_fp, "arch": arch, "step": int(ckpt["step"]),
                  "planned_steps": planned,  # audit-privacy and report call a far shorter run under-trained
                  "dataset_fingerprint": ckpt["dataset_fingerprint"], "seed": cfg.seed, "seed_start": cfg.seed_start,
                  "n": cfg.n, "batch": cfg.batch, "scale": scale, "label": fixed_label,
                  "class_balance": cfg.class_balance if sampler.num_classes and fixed_label is None else None}
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()}
    first, last = cfg.seed_start, cfg.seed_start + cfg.n
    counts = np.zeros(max(1, sampler.num_classes), int)
    grid_imgs: list[np.ndarray] = []
    if cfg.png_dir is not None:
        Path(cfg.png_dir).mkdir(parents=True, exist_ok=True)
    with h5.DatasetWriter(out, image_size=size, split="synthetic", kind="synthetic",
                          class_names=class_names if sampler.num_classes else [], options=options,
                          provenance=provenance) as w, track("sampling", cfg.n) as advance:
        for b0 in range((first // cfg.batch) * cfg.batch, last, cfg.batch):
            idx = list(range(b0, b0 + cfg.batch))
            zs, ys = _latents_and_labels(cfg, idx, sampler, fixed_label, shares)
            y = torch.tensor(ys, dtype=torch.long) if ys else None
            images = sampler(torch.stack(zs), y, scale)
            for k, i in enumerate(idx):
                if not first <= i < last:
                    continue  # computed only to keep batch boundaries fixed
                img = images[k]
                label = ys[k] if ys else -1
                counts[max(label, 0)] += 1 if label >= 0 else 0
                w.append(h5.Record(image=img, mask=mask_u8, circle=circle, source=f"{ck_fp[:16]}:seed={cfg.seed}:i={i}",
                                   patient=f"synthetic-{i}", label=label, phash=phash(img), dup_group=i,
                                   quality=quality_measures(img, sampler.mask, fov_fraction=1.0)))
                if cfg.png_dir is not None:
                    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
                    (Path(cfg.png_dir) / f"{i:07d}.png").write_bytes(buf.tobytes())
                if len(grid_imgs) < 64:
                    grid_imgs.append(img)
                advance()
    grid = None
    if cfg.grid is not None:
        grid = write_png(Path(cfg.grid), grid_image(np.stack(grid_imgs), nrow=8))
    return SampleResult(out=out, n=cfg.n, checkpoint=path, checkpoint_fingerprint=ck_fp, arch=arch,
                        step=int(ckpt["step"]),
                        class_counts={class_names[c]: int(counts[c]) for c in range(sampler.num_classes)},
                        grid=grid, png_dir=cfg.png_dir, planned_steps=planned)


def _training_shares(ckpt: dict[str, Any], num_classes: int) -> np.ndarray | None:
    if not num_classes:
        return None
    counts = np.asarray(ckpt.get("class_counts") or [1] * num_classes, dtype=np.float64)
    if counts.shape != (num_classes,) or counts.sum() <= 0 or (counts < 0).any():
        counts = np.ones(num_classes)
    return counts / counts.sum()

