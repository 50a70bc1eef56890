"""Sample quality at equal CPU time: fundus-cli's GAN vs the PyTorch examples' DCGAN.

Both train for the same budget of "machine minutes" (process CPU time divided by the number
of torch threads: wall-clock minutes on an idle machine, and still a fair split when other work
shares the cores) on the same training photographs at 64 px
(IDRiD from ../shared/data/idrid when present, else phantoms). The script writes their
sample grids side by side (with real photographs for reference) and prints KID (random-CNN
features, inside the field of view) of each against held-out photographs, next to the KID
of the real training photographs themselves (what a perfect generator would score).

Usage: python benchmarks/quality.py [--minutes 10] [--out bench-out/quality] [--quick]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fundus_cli.data import h5
from fundus_cli.data.ingest import IngestConfig, ingest
from fundus_cli.metrics.features import RandomCNN
from fundus_cli.metrics.kid import kid
from fundus_cli.training.images import grid_image, to_uint8, write_png
from fundus_cli.training.loop import TrainConfig, train
from fundus_cli.training.checkpoint import load_checkpoint
from fundus_cli.models import build_model

ROOT = Path(__file__).resolve().parents[1]
IDRID = ROOT.parent / "shared" / "data" / "idrid" / "images"


# -- the baseline: the DCGAN of pytorch/examples (nz=100, ngf=ndf=64, BN, transposed convs, BCE)
class DCGANGenerator(nn.Sequential):
    def __init__(self, nz: int = 100, ngf: int = 64) -> None:
        super().__init__(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh())


class DCGANDiscriminator(nn.Sequential):
    def __init__(self, ndf: int = 64) -> None:
        super().__init__(
            nn.Conv2d(3, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False))


def _init(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def train_dcgan(images: np.ndarray, minutes: float, seed: int = 0, batch: int = 64) -> tuple[nn.Module, int]:
    torch.manual_seed(seed)
    g, d = DCGANGenerator(), DCGANDiscriminator()
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
    g.eval()
    return g, steps


def label_strip(text_w: int, h: int, text: str) -> np.ndarray:
    import cv2

    strip = np.full((h, text_w, 3), 255, np.uint8)
    for i, line in enumerate(text.split("\n")):
        cv2.putText(strip, line, (6, 22 + 20 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget of each model, machine minutes")
    ap.add_argument("--ours-minutes", type=float, default=None, help="minutes for ours (default: --minutes)")
    ap.add_argument("--out", type=Path, default=Path("bench-out/quality"))
    ap.add_argument("--quick", action="store_true", help="smoke run: 0.3 minutes each")
    ap.add_argument("--samples", type=int, default=256)
    args = ap.parse_args()
    minutes = 0.3 if args.quick else args.minutes
    ours_minutes = 0.3 if args.quick else (args.ours_minutes or minutes)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    if not (data / "train.h5").exists():
        if IDRID.is_dir():
            raw, source = IDRID, "IDRiD"
        else:
            from fundus_cli.data.phantoms import write_phantoms

            raw, source = out / "raw", "phantoms"
            write_phantoms(raw, n=160, seed=0, overwrite=True)
        ingest(IngestConfig(raw=raw, out=data, size=64, force=True))
    else:
        source = "the photographs already ingested in " + str(data)
    with h5.open_dataset(data / "train.h5") as r:
        train_imgs = r.images()
        mask = r.fov_masks().mean(0) > 0.5
    with h5.open_dataset(data / "holdout.h5") as r:
        hold_imgs = r.images()
    print(f"{len(train_imgs)} training and {len(hold_imgs)} held-out photographs ({source}) at 64 px; "
          f"{minutes:g} min for the DCGAN, {ours_minutes:g} min for ours; {torch.get_num_threads()} threads")

    t = time.perf_counter()
    g_dc, dc_steps = train_dcgan(train_imgs, minutes)
    print(f"DCGAN: {dc_steps} steps of batch 64 in {time.perf_counter() - t:.0f} s")
    t = time.perf_counter()
    res = train(TrainConfig(data=data / "train.h5", arch="gan", out=out / "run-gan", preset="demo", steps=10**6,
                            max_cpu_minutes=ours_minutes, device="cpu", force=True, sample_every=10**9,
                            snapshot_every=10**9))
    ck = load_checkpoint(res.checkpoint)
    print(f"fundus-cli GAN: {res.step} steps of batch {ck['train_config']['batch']} in "
          f"{time.perf_counter() - t:.0f} s")
    g_ours = build_model("gan", ck["model_config"]).generator
    g_ours.load_state_dict(ck["ema"]["generator"])
    g_ours.eval()
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        ours = np.concatenate([to_uint8(g_ours(torch.randn(64, g_ours.config.latent_dim, generator=gen)))
                               for _ in range(args.samples // 64)])
        dc = np.concatenate([to_uint8(g_dc(torch.randn(64, 100, 1, 1, generator=gen)))
                             for _ in range(args.samples // 64)])

    feat = RandomCNN()
    f_hold, f_train = feat(hold_imgs, mask), feat(train_imgs, mask)
    f_ours, f_dc = feat(ours, mask), feat(dc, mask)
    k_base = kid(f_hold, f_train, subsets=50)
    k_ours = kid(f_hold, f_ours, subsets=50)
    k_dc = kid(f_hold, f_dc, subsets=50)
    print("\nKID x 1000 against the held-out photographs (random-CNN features, inside the field of view):")
    print(f"  real training photographs  {1000 * k_base[0]:8.2f} +- {1000 * k_base[1]:.2f}   (a perfect generator)")
    print(f"  fundus-cli GAN             {1000 * k_ours[0]:8.2f} +- {1000 * k_ours[1]:.2f}")
    print(f"  PyTorch-examples DCGAN     {1000 * k_dc[0]:8.2f} +- {1000 * k_dc[1]:.2f}")

    rows = [("real\n(training)", train_imgs[:32]), (f"fundus-cli GAN\n{ours_minutes:g} min\nKID {1000 * k_ours[0]:.1f}", ours[:32]),
            (f"DCGAN\n{minutes:g} min\nKID {1000 * k_dc[0]:.1f}", dc[:32])]
    panels = []
    for text, imgs in rows:
        g = grid_image(imgs, nrow=8)
        panels.append(np.concatenate([label_strip(130, g.shape[0], text), g], axis=1))
    path = write_png(out / "quality.png", np.concatenate(panels, axis=0))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
