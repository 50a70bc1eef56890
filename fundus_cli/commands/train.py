"""`fundus train`: the command's home.

The training loop itself lives in `training/loop.py` (train, TrainResult) and its settings in
`training/config.py` (TrainConfig, resolve); this module is where the command meets them, and
adds the `--dry-run` plan.
"""

from __future__ import annotations

from typing import Any

from fundus_cli.data import h5
from fundus_cli.device import resolve_device
from fundus_cli.training.config import TrainConfig, config_to_json, model_config, resolve
from fundus_cli.training.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "plan", "train"]


def plan(config: TrainConfig) -> dict[str, Any]:
    """The fully resolved configuration that `train` would use (for --dry-run), without training."""
    device = resolve_device(config.device)
    with h5.open_dataset(config.data) as r:
        info = r.info
    cfg = resolve(config, stored_size=info.image_size, n_images=info.count, n_classes=len(info.class_names),
                  device=device)
    return {"train_config": config_to_json(cfg), "model_config": model_config(cfg, len(info.class_names)),
            "device": str(device), "dataset": {"path": str(config.data), "images": info.count,
                                               "fingerprint": info.fingerprint}}
