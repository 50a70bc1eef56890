"""The discriminator's vessel map (models/d_inputs.py `dark_lines`, a black top-hat) with its
k x k max pools done as a row pass then a column pass, against the square max pools of its
definition: CPU time of forward + backward alone, and of a whole demo-preset GAN training step
at 128 px, side by side in one run (interleaved repeats, process CPU time, one thread).

    python benchmarks/d_inputs.py [--repeats 5] [--batch 16]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from fundus_cli.models import d_inputs
from fundus_cli.training.config import TrainConfig, hyperparameters, model_config, resolve
from fundus_cli.training.trainers import TRAINERS


def square_max(x: Tensor, k: int) -> Tensor:
    """The definition: one k x k max pool."""
    return F.max_pool2d(x, k, stride=1, padding=k // 2)


def cpu_seconds(fn: Callable[[], object], n: int) -> float:
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n


def top_hat_pass(size: int, batch: int) -> Callable[[], object]:
    x = torch.rand(batch, 3, size, size, requires_grad=True)

    def run() -> None:
        d_inputs.dark_lines(x, size).sum().backward()

    return run


def gan_step(size: int) -> Callable[[], object]:
    dev = torch.device("cpu")
    cfg = resolve(TrainConfig(arch="gan", preset="demo", size=size, conditional=True, device="cpu"),
                  stored_size=size, n_images=413, n_classes=2, device=dev)
    t = TRAINERS["gan"](model_config(cfg, 2), hyperparameters(cfg), device=dev, fov_mask=torch.ones(size, size),
                        amp=cfg.amp, channels_last=False)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(cfg.batch, 3, size, size) * 2 - 1
    y = torch.randint(0, 2, (cfg.batch,))
    i = iter(range(1, 10**9))

    def run() -> None:
        t.step(x, y, next(i), gen)  # type: ignore[attr-defined]

    run()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds per figure (5)")
    ap.add_argument("--batch", type=int, default=16, help="images per top-hat pass (16, the demo GAN's batch)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    separable = d_inputs._square_max
    cases = [(f"top-hat {s} px, batch {a.batch}", top_hat_pass(s, a.batch), 10 if s < 256 else 2) for s in (64, 128, 256)]
    cases.append(("GAN step, demo, 128 px", gan_step(128), 4))
    print(f"{'':30s} {'square ms':>10s} {'row+col ms':>11s} {'ratio':>6s}")
    for name, fn, n in cases:
        times: dict[str, list[float]] = {"square": [], "separable": []}
        for _ in range(a.repeats):
            for label, impl in (("square", square_max), ("separable", separable)):
                d_inputs._square_max = impl
                times[label].append(cpu_seconds(fn, n))
        d_inputs._square_max = separable
        sq, sep = (min(v) * 1000 for v in times.values())
        print(f"{name:30s} {sq:10.1f} {sep:11.1f} {sq / sep:6.2f}", flush=True)


if __name__ == "__main__":
    main()
