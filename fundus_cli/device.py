"""`--device auto|cpu|cuda` -> a torch device, for every command that runs a network."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fundus_cli.errors import FundusError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise FundusError("--device cuda: no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is "
                              "False). Use --device cpu, or install a CUDA build of PyTorch.")
        return torch.device("cuda", local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise FundusError(f"--device {name!r}: choose auto, cpu or cuda.")
