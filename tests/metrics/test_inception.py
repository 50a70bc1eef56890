"""The FID Inception-v3: its state dict against the published weights file, its forward pass
against torchvision's Inception3 with pytorch-fid's patches, loading and every way a weights
file can be wrong, and `fundus evaluate --features inception` end to end."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from fundus_cli.cli import app
from fundus_cli.errors import FundusError
from fundus_cli.metrics import inception as inc
from fundus_cli.metrics.inception import FIDInceptionV3, InceptionFeatures, load_inception, resolve_weights

# Facts about the published file pt_inception-2015-12-05-6726825d.pth (pytorch-fid's
# fid_weights release), which pytorch-fid loads strictly into torchvision's
# Inception3(num_classes=1008, aux_logits=False) patched with FIDInceptionA/C/E_1/E_2:
# - no AuxLogits.* tensors, fc of 1008 classes;
# - BatchNorm's num_batches_tracked stored (PyTorch 0.4.0 rejects the file with 'Unexpected
#   key(s) in state_dict: "Conv2d_1a_3x3.bn.num_batches_tracked", ...', pytorch-fid issue #34);
# - so 94 BasicConv2d x (conv.weight + bn weight, bias, running_mean, running_var,
#   num_batches_tracked) + fc.weight + fc.bias = 566 tensors;
# - 23,850,960 learnable parameters: torchvision's inception_v3 has 27,161,264, of which
#   the auxiliary head holds 3,326,696; 8 more fc classes add 8 x 2048 + 8 = 16,392.
PUBLISHED_TENSORS = 566
PUBLISHED_PARAMETERS = 23_850_960
PUBLISHED_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch3x3_2b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "Mixed_7c.branch_pool.bn.num_batches_tracked": (),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


def _random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights with the published file's keys and shapes; He-scaled so activations stay O(1)
    through the 94 layers, and BatchNorm statistics away from the identity so they count."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in FIDInceptionV3().state_dict().items():
        if k.endswith("conv.weight"):
            state[k] = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
        elif k.endswith("bn.weight") or k.endswith("running_var"):
            state[k] = 1.0 + 0.2 * torch.rand(v.shape, generator=g)
        elif k.endswith("bn.bias") or k.endswith("running_mean"):
            state[k] = 0.1 * torch.randn(v.shape, generator=g)
        elif k.startswith("fc."):
            state[k] = 0.01 * torch.randn(v.shape, generator=g)
        else:
            state[k] = v  # num_batches_tracked
    return state


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inception") / inc.WEIGHTS_NAME
    torch.save(_random_state(), path)
    return path


def _images(n: int = 8, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    mask = (yy - (size - 1) / 2) ** 2 + (xx - (size - 1) / 2) ** 2 < (0.45 * size) ** 2
    images = (rng.integers(0, 256, (n, size, size, 3)) * mask[..., None]).astype(np.uint8)
    return images, mask


def test_state_dict_has_the_published_files_keys_and_shapes() -> None:
    import torchvision

    model = FIDInceptionV3()
    sd = model.state_dict()
    assert len(sd) == PUBLISHED_TENSORS
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMETERS
    for k, shape in PUBLISHED_SHAPES.items():
        assert tuple(sd[k].shape) == shape, k
    assert not any(k.startswith("AuxLogits") for k in sd)
    # torchvision's own Inception3 (what pytorch-fid loads the file into) names every tensor alike
    tv = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    assert {k: tuple(v.shape) for k, v in tv.state_dict().items()} == {k: tuple(v.shape) for k, v in sd.items()}


def _torchvision_fid_features(tv: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """pytorch-fid's forward, written on torchvision's modules: its four pooling patches."""

    def tf_avg(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, 3, stride=1, padding=1, count_include_pad=False)

    def block_a(b, t):  # type: ignore[no-untyped-def]
        return torch.cat([b.branch1x1(t), b.branch5x5_2(b.branch5x5_1(t)),
                          b.branch3x3dbl_3(b.branch3x3dbl_2(b.branch3x3dbl_1(t))), b.branch_pool(tf_avg(t))], 1)

    def block_c(b, t):  # type: ignore[no-untyped-def]
        d = t
        for m in (b.branch7x7dbl_1, b.branch7x7dbl_2, b.branch7x7dbl_3, b.branch7x7dbl_4, b.branch7x7dbl_5):
            d = m(d)
        return torch.cat([b.branch1x1(t), b.branch7x7_3(b.branch7x7_2(b.branch7x7_1(t))), d,
                          b.branch_pool(tf_avg(t))], 1)

    def block_e(b, t, pool):  # type: ignore[no-untyped-def]
        a = b.branch3x3_1(t)
        d = b.branch3x3dbl_2(b.branch3x3dbl_1(t))
        return torch.cat([b.branch1x1(t), b.branch3x3_2a(a), b.branch3x3_2b(a), b.branch3x3dbl_3a(d),
                          b.branch3x3dbl_3b(d), b.branch_pool(pool(t))], 1)

    t = tv.maxpool1(tv.Conv2d_2b_3x3(tv.Conv2d_2a_3x3(tv.Conv2d_1a_3x3(x))))
    t = tv.maxpool2(tv.Conv2d_4a_3x3(tv.Conv2d_3b_1x1(t)))
    t = block_a(tv.Mixed_5d, block_a(tv.Mixed_5c, block_a(tv.Mixed_5b, t)))
    t = tv.Mixed_6a(t)
    for b in (tv.Mixed_6b, tv.Mixed_6c, tv.Mixed_6d, tv.Mixed_6e):
        t = block_c(b, t)
    t = tv.Mixed_7a(t)
    t = block_e(tv.Mixed_7b, t, tf_avg)
    t = block_e(tv.Mixed_7c, t, lambda u: F.max_pool2d(u, 3, stride=1, padding=1))
    return t.mean(dim=(2, 3))


@torch.no_grad()
def test_forward_matches_torchvision_with_pytorch_fids_patches() -> None:
    import torchvision

    state = _random_state(1)
    ours = FIDInceptionV3().eval()
    ours.load_state_dict(state)
    tv = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    tv.load_state_dict(state)
    tv.eval()
    # Any size from 75 px runs through; 160 keeps the test fast and every padding in play.
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    got, want = ours(x), _torchvision_fid_features(tv, x)
    assert got.shape == (2, 2048)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())
    # ...and the patches matter: torchvision's unpatched blocks give other features.
    t = x
    for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                 "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                 "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
        t = getattr(tv, name)(t)
    plain = t.mean(dim=(2, 3))
    assert (plain - want).abs().max() > 1e-2 * want.abs().max()


def test_features_are_2048_d_deterministic_and_inside_the_field_of_view(weights_file: Path) -> None:
    images, mask = _images(8)
    ext = InceptionFeatures(weights_file, batch=3)
    assert ext.fingerprint == ext.sha256 == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    f = ext(images, mask)
    assert f.shape == (8, 2048) and f.dtype == np.float64 and np.isfinite(f).all()
    assert (f >= 0).all()  # means of ReLU outputs
    assert np.ptp(f, axis=0).max() > 1e-3  # images differ, so do their features
    np.testing.assert_array_equal(f, ext(images, mask))
    # another instance, other batches: the same numbers
    np.testing.assert_allclose(f[:4], InceptionFeatures(weights_file, batch=32)(images[:4], mask), rtol=1e-5,
                               atol=1e-6)
    # Outside the field of view nothing counts; inside, everything does.
    noisy = images[:2].copy()
    noisy[:, ~mask] = 255
    np.testing.assert_array_equal(ext(noisy, mask), f[:2])
    changed = images[:2].copy()
    changed[:, mask] //= 2
    assert np.abs(ext(changed, mask) - f[:2]).max() > 1e-3


@torch.no_grad()
def test_input_is_scaled_to_minus_one_one_like_pytorch_fid(weights_file: Path) -> None:
    # At 299 px the bilinear resize is the identity, so the features must be the network's
    # output on x / 127.5 - 1.
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (1, 299, 299, 3)).astype(np.uint8)
    ext = InceptionFeatures(weights_file)
    want = ext.model(torch.from_numpy(img).permute(0, 3, 1, 2).float() / 127.5 - 1).double().numpy()
    np.testing.assert_allclose(ext(img), want, rtol=1e-5, atol=1e-6)


def test_missing_weights_say_where_to_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(inc.WEIGHTS_ENV, raising=False)
    with pytest.raises(FundusError) as e:
        resolve_weights(None)
    msg = str(e.value)
    assert inc.WEIGHTS_URL in msg and "--weights" in msg and inc.WEIGHTS_ENV in msg
    with pytest.raises(FundusError) as e:
        resolve_weights(tmp_path / "nope.pth")
    assert str(tmp_path / "nope.pth") in str(e.value) and inc.WEIGHTS_URL in str(e.value)
    # the environment variable, and a folder holding the standard file name
    (tmp_path / inc.WEIGHTS_NAME).write_bytes(b"x")
    monkeypatch.setenv(inc.WEIGHTS_ENV, str(tmp_path))
    assert resolve_weights(None) == tmp_path / inc.WEIGHTS_NAME
    assert resolve_weights(tmp_path / inc.WEIGHTS_NAME) == tmp_path / inc.WEIGHTS_NAME


class _Payload:
    """A pickled object: what weights_only loading must refuse (it could run code)."""


@pytest.mark.parametrize("kind", ["truncated", "not-torch", "renamed-and-reshaped", "list", "pickled-object",
                                  "nan"])
def test_bad_weights_files_give_a_clear_error(kind: str, weights_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / f"{kind}.pth"
    if kind == "truncated":
        data = weights_file.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
        expect = "truncated"
    elif kind == "not-torch":
        bad.write_text("<html>404 Not Found</html>")
        expect = "cannot be read"
    elif kind == "renamed-and-reshaped":
        state = _random_state()
        state["Mixed_6b.branch1x1.conv.weights"] = state.pop("Mixed_6b.branch1x1.conv.weight")
        state["fc.weight"] = torch.zeros(1000, 2048)
        torch.save(state, bad)
        expect = "1 missing (e.g. Mixed_6b.branch1x1.conv.weight); 1 unexpected (e.g. Mixed_6b.branch1x1.conv.weights)"
    elif kind == "list":
        torch.save([torch.zeros(3)], bad)
        expect = "not a state dict"
    elif kind == "pickled-object":
        torch.save({"model": _Payload()}, bad)
        expect = "cannot be read"
    else:
        state = _random_state()
        state["Mixed_7c.branch1x1.bn.running_var"][0] = float("nan")
        torch.save(state, bad)
        expect = "NaN"
    with pytest.raises(FundusError) as e:
        load_inception(bad)
    msg = str(e.value)
    assert msg.startswith(str(bad)) and expect in msg and inc.WEIGHTS_URL in msg, msg
    if kind == "renamed-and-reshaped":
        assert "fc.weight (1000, 2048) (expected (1008, 2048))" in msg


def test_files_without_batchnorm_counters_load(weights_file: Path, tmp_path: Path) -> None:
    # Weights saved by PyTorch before 0.4.1 have no num_batches_tracked; inference needs none.
    state = {k: v for k, v in torch.load(weights_file, weights_only=True).items()
             if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    images, mask = _images(1)
    np.testing.assert_array_equal(InceptionFeatures(path)(images, mask), InceptionFeatures(weights_file)(images, mask))


def test_evaluate_command_with_inception_features(tiny_data: Path, weights_file: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(inc.WEIGHTS_ENV, raising=False)
    runner = CliRunner()
    # The 10 training images on both sides (the 2 holdout images are too few to resample), no baseline.
    base = ["evaluate", "--real", str(tiny_data / "train.h5"), "--synthetic", str(tiny_data / "train.h5"),
            "--train", str(tmp_path / "no-train.h5"), "--metrics", "fid,kid", "--n-boot", "3", "--no-usefulness"]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "rep"), "--features", "inception", "--weights",
                              str(weights_file)])
    assert res.exit_code == 0, res.stderr
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    feats = report["features"]
    assert feats["name"] == "inception" and feats["dim"] == 2048
    assert feats["weights_sha256"] == feats["fingerprint"] == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    assert feats["weights"] == str(weights_file) and report["settings"]["weights"] == str(weights_file)
    # synthetic = real: identical features, so FID is zero up to rounding
    assert abs(report["realism"]["overall"]["synthetic"]["fid"]["value"]) < 1e-6

    # Every way to get the weights wrong: exit 2, one line naming the file and the fix, no traceback.
    data = weights_file.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 3])
    cases = [(["--features", "inception"], [inc.WEIGHTS_URL, "--weights", inc.WEIGHTS_ENV]),
             (["--features", "inception", "--weights", str(tmp_path / "absent.pth")],
              [str(tmp_path / "absent.pth"), "no such file", inc.WEIGHTS_URL]),
             (["--features", "inception", "--weights", str(tmp_path / "cut.pth")],
              [str(tmp_path / "cut.pth"), "truncated", inc.WEIGHTS_URL]),
             (["--weights", str(weights_file)], ["only with --features inception"])]
    for i, (extra, expected) in enumerate(cases):
        res = runner.invoke(app, [*base, "--out", str(tmp_path / f"bad{i}"), *extra])
        assert res.exit_code == 2, (extra, res.stderr)
        assert "Traceback" not in res.output + res.stderr
        for text in expected:
            assert text in res.stderr.replace("\n", ""), (text, res.stderr)
        assert not (tmp_path / f"bad{i}").exists()
