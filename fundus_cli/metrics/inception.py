"""The FID Inception-v3 network, for FID/KID/PRDC numbers comparable with other tools.

This is the network of the original TensorFlow FID code (the 2015-12-05 ImageNet Inception
graph) as pytorch-fid and torch-fidelity run it: torchvision's Inception3 layout with 1008
output classes and no auxiliary head, and four TensorFlow quirks that change the features:
the average-pool branches of the A, C and first E blocks leave the zero padding out of the
mean (count_include_pad=False), and the pool branch of the last E block (Mixed_7c) takes
the maximum instead. Features are the 2048 channels of Mixed_7c averaged over the map;
inputs are resized bilinearly to 299 x 299 and scaled to [-1, 1].

The weights are NOT downloaded at run time. They live in one file that the user fetches
once, `pt_inception-2015-12-05-6726825d.pth` (see WEIGHTS_URL), and point to with
`--weights PATH` or the environment variable FUNDUS_INCEPTION_WEIGHTS. It is loaded with
`torch.load(weights_only=True)` and checked tensor by tensor against the architecture.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fundus_cli.errors import FundusError

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_NAME}"
WEIGHTS_ENV = "FUNDUS_INCEPTION_WEIGHTS"
INPUT_SIZE = 299
FEATURE_DIM = 2048
N_CLASSES = 1008  # the TF graph's 1008 logits; only the shapes of fc are used (checked on load)


def download_hint() -> str:
    return (f"download it once (about 91 MB; fundus-cli never downloads at run time), e.g. "
            f"`curl -LO {WEIGHTS_URL}`, then pass --weights PATH/{WEIGHTS_NAME} "
            f"or set {WEIGHTS_ENV}=PATH/{WEIGHTS_NAME}")


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, TensorFlow's), ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int | tuple[int, int], *,
                 stride: int = 1, padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: Tensor) -> Tensor:
    # TensorFlow's 'SAME' average pool divides by the number of real pixels under the window.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (unchanged from torchvision)."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class FIDInceptionC(nn.Module):
    def __init__(self, c_in: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            b7d = layer(b7d)
        return torch.cat([self.branch1x1(x), b7, b7d, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (unchanged from torchvision)."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class FIDInceptionE(nn.Module):
    """`max_pool`: the pool branch of Mixed_7c takes the maximum (a quirk of the TF graph that
    FID is defined by); Mixed_7b averages without the padding."""

    def __init__(self, c_in: int, *, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3d = torch.cat([self.branch3x3dbl_3a(b3d), self.branch3x3dbl_3b(b3d)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_tf(x)
        return torch.cat([self.branch1x1(x), b3, b3d, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """(B, 3, 299, 299) in [-1, 1] -> (B, 2048) pooled Mixed_7c features.

    Module names are those of torchvision's Inception3, so the published state dict loads
    as it is; `fc` is kept only so that the file's every tensor has a home.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, c7=128)
        self.Mixed_6c = FIDInceptionC(768, c7=160)
        self.Mixed_6d = FIDInceptionC(768, c7=160)
        self.Mixed_6e = FIDInceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, max_pool=False)
        self.Mixed_7c = FIDInceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, N_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))


def resolve_weights(path: Path | str | None) -> Path:
    """--weights, else $FUNDUS_INCEPTION_WEIGHTS; a folder means the standard file name in it."""
    if path is None or str(path) == "":
        env = os.environ.get(WEIGHTS_ENV, "")
        if not env:
            raise FundusError(f"--features inception needs the FID Inception weights file {WEIGHTS_NAME}: "
                              + download_hint() + ".")
        path, source = Path(env), f"${WEIGHTS_ENV}"
    else:
        path, source = Path(path), "--weights"
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise FundusError(f"{path} (from {source}): no such file. --features inception needs the FID Inception "
                          f"weights file {WEIGHTS_NAME}: " + download_hint() + ".")
    return path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _examples(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def load_inception(path: Path) -> FIDInceptionV3:
    """The network with the weights of `path`, checked key by key and shape by shape; eval mode."""
    model = FIDInceptionV3()
    bad = f"{path}: not the FID Inception-v3 weights ({WEIGHTS_NAME})"
    fix = f"download the file again from {WEIGHTS_URL}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with code in it, not a torch file at all, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise FundusError(f"{path}: cannot be read as PyTorch weights ({type(e).__name__}: {first[:200]}); the "
                          f"file is truncated, corrupt or of another kind: {fix}.") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor)
                                              for k, v in state.items()):
        raise FundusError(f"{bad}: it holds a {type(state).__name__}, not a state dict of tensors; {fix}.")
    expected = model.state_dict()
    # Old PyTorch versions did not store BatchNorm's counter; it plays no part in inference.
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = ([f"{len(missing)} missing (e.g. {_examples(missing)})"] if missing else []) + \
                ([f"{len(unexpected)} unexpected (e.g. {_examples(unexpected)})"] if unexpected else []) + \
                ([f"{len(wrong)} of another shape ({_examples(wrong, 2)})"] if wrong else [])
        raise FundusError(f"{bad}: {'; '.join(parts)}. Expected {len(expected)} tensors named like torchvision's "
                          f"Inception3 with a 1008-class fc; {fix}.")
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise FundusError(f"{path}: NaN or infinite values in {_examples(nonfinite)}; the file is corrupt: {fix}.")
    state = {k: state.get(k, expected[k]) for k in expected}
    model.load_state_dict(state)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class InceptionFeatures:
    """The 2048-d FID features of uint8 images, inside the field of view.

    Outside the common field-of-view mask every image is set to black, the surround of a
    fundus photograph, and the standard global average over Mixed_7c is kept: on images
    whose surround is already black the features are exactly those of pytorch-fid, so FID
    stays comparable, while differences outside the disc cannot count. (Pooling over the
    mask alone, as the random features do, would change the standard features.)
    """

    name = "inception"
    dim = FEATURE_DIM

    def __init__(self, weights: Path | str | None = None, *, device: str | torch.device = "cpu",
                 batch: int = 32) -> None:
        self.weights = resolve_weights(weights)
        self.sha256 = file_sha256(self.weights)
        self.fingerprint = self.sha256
        self.device = torch.device(device)
        self.batch = batch
        self.model = load_inception(self.weights).to(self.device)

    @torch.no_grad()
    def __call__(self, images: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """uint8 (B, S, S, 3) -> float64 (B, 2048)."""
        if mask is not None:
            images = images * mask[None, :, :, None].astype(np.uint8)
        out = []
        for s in range(0, len(images), self.batch):
            x = torch.from_numpy(np.ascontiguousarray(images[s : s + self.batch])).to(self.device)
            x = x.permute(0, 3, 1, 2).float() / 255.0
            # pytorch-fid's order: resize in [0, 1], then scale to [-1, 1] (equal, resizing is linear)
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
            out.append(self.model(2 * x - 1).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim))
