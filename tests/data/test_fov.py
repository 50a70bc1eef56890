"""Field-of-view detection and cropping: synthetic discs with known circles, degenerate
images, exact crop geometry, and the DRIVE ground-truth masks when ../shared is present."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fundus_cli.data.fov import Circle, crop_to_fov, detect_fov, fov_fraction, fov_mask

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


# ----------------------------------------------------------------------------- helpers


def synthetic_fundus(
    shape: tuple[int, int],
    circle: Circle,
    *,
    seed: int,
    brightness: float = 1.0,
    border: float = 0.0,
    border_noise: float = 0.0,
    notch: str | None = None,
    label: bool = False,
    vignette: float = 0.55,
    optic_at: float = 0.72,
) -> np.ndarray:
    """An orange disc with blotchy texture, vessels, a bright optic disc near the rim and
    a vignette, on a (possibly grey, noisy) border; the edge is anti-aliased so that the
    50% level lies exactly on the circle."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = np.hypot(xx - circle.cx, yy - circle.cy)
    rel = d / circle.r

    blotches = cv2.resize(rng.uniform(0.8, 1.2, (6, 6)).astype(np.float32), (w, h),
                          interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(1.0, 0.04, (h, w)).astype(np.float32)
    shade = blotches * fine * np.clip(1.0 - vignette * rel**2, 0.1, 1.0)
    disc = np.stack([200 * shade, 95 * shade, 35 * shade], axis=-1)

    # Vessels: dark wiggly lines from near the centre outwards.
    vessels = np.zeros((h, w), np.float32)
    for _ in range(8):
        angle = rng.uniform(0, 2 * np.pi)
        pts = [(circle.cx + t * circle.r * np.cos(angle + 0.3 * np.sin(5 * t)),
                circle.cy + t * circle.r * np.sin(angle + 0.3 * np.sin(5 * t)))
               for t in np.linspace(0.05, 1.2, 30)]
        cv2.polylines(vessels, [np.round(np.array(pts) * 4).astype(np.int32)], False, 1.0,
                      thickness=max(1, round(circle.r / 60)), lineType=cv2.LINE_AA, shift=2)
    disc *= (1.0 - 0.45 * vessels)[..., None]
    # Optic disc: a bright patch whose edge sits close to the rim, a decoy for the rim step.
    a = rng.uniform(0, 2 * np.pi)
    ox, oy = circle.cx + optic_at * circle.r * np.cos(a), circle.cy + optic_at * circle.r * np.sin(a)
    optic = np.clip((0.14 * circle.r - np.hypot(xx - ox, yy - oy)) / 2.0 + 0.5, 0, 1)
    disc = disc * (1 - optic[..., None]) + optic[..., None] * np.array([250, 230, 160])

    disc *= brightness
    coverage = np.clip(circle.r - d + 0.5, 0.0, 1.0)[..., None]
    if notch is not None:
        a = rng.uniform(0, 2 * np.pi)
        if notch == "square":
            # A dark square bite into the rim, like the mask notch of many cameras.
            nx, ny = circle.cx + circle.r * np.cos(a), circle.cy + circle.r * np.sin(a)
            half = 0.06 * circle.r
            bite = (np.abs(xx - nx) < half) & (np.abs(yy - ny) < half)
            coverage[bite] = 0.0
        else:  # "chord": a flat side 3% of r deep, spanning about 28 degrees of rim
            along = (xx - circle.cx) * np.cos(a) + (yy - circle.cy) * np.sin(a)
            coverage *= np.clip(0.97 * circle.r - along + 0.5, 0.0, 1.0)[..., None]
    back = border + rng.normal(0.0, border_noise, (h, w, 1)) if border_noise else np.full((h, w, 1), border)
    image = coverage * disc + (1 - coverage) * back
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    if label:
        # Burnt-in white text in a corner, as cameras stamp dates and eye sides.
        cv2.putText(image, "OD 2019-03-04", (4, h - 8), cv2.FONT_HERSHEY_SIMPLEX,
                    h / 700, (255, 255, 255), max(1, h // 300))
    return image


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())


def random_circle(rng: np.random.Generator, shape: tuple[int, int], r_frac: tuple[float, float]) -> Circle:
    h, w = shape
    r = rng.uniform(*r_frac) * min(h, w)
    return Circle(cx=w / 2 + rng.uniform(-0.03, 0.03) * w, cy=h / 2 + rng.uniform(-0.03, 0.03) * h, r=r)


# (name, shape (H, W), radius as a fraction of min(H, W), synthetic_fundus options)
CASES = [
    ("full", (480, 500), (0.42, 0.48), {}),
    ("cut_off", (400, 600), (0.55, 0.62), {}),
    # Only two 60-degree arcs of rim visible; the border is a small part of the image.
    ("wide_cut_off", (300, 640), (0.85, 1.0), {}),
    ("notch", (480, 520), (0.42, 0.47), {"notch": "square"}),
    ("dark", (450, 480), (0.42, 0.47), {"brightness": 0.33}),
    ("very_dark", (450, 480), (0.42, 0.47), {"brightness": 0.15, "border_noise": 1.5}),
    ("grey_noisy_border", (450, 480), (0.42, 0.47), {"border": 30.0, "border_noise": 10.0}),
    ("bright_border", (450, 480), (0.42, 0.47), {"border": 70.0, "border_noise": 5.0}),
    ("strong_vignette", (450, 480), (0.42, 0.47), {"vignette": 0.85}),
    ("optic_disc_on_rim", (450, 480), (0.42, 0.47), {"optic_at": 0.9}),
    ("label_in_border", (500, 620), (0.43, 0.47), {"label": True, "border": 8.0, "border_noise": 3.0}),
    ("small_64", (64, 64), (0.40, 0.47), {}),
    ("small_cut_off", (48, 72), (0.55, 0.6), {}),
    ("large_1500", (1000, 1500), (0.52, 0.58), {"notch": "square", "border_noise": 4.0}),
]


# ------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name,shape,r_frac,options", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("seed", [0, 1])
def test_detects_synthetic_discs(name, shape, r_frac, options, seed):
    rng = np.random.default_rng(1000 * seed + len(name))
    truth = random_circle(rng, shape, r_frac)
    image = synthetic_fundus(shape, truth, seed=seed, **options)
    if name == "dark":
        assert 20 < image[fov_mask(shape, truth)].mean() < 30  # underexposed, as the brief's ~25

    found = detect_fov(image)

    assert found is not None
    tol = 0.015 * truth.r
    assert abs(found.cx - truth.cx) <= tol
    assert abs(found.cy - truth.cy) <= tol
    assert abs(found.r - truth.r) <= tol
    assert iou(fov_mask(shape, found), fov_mask(shape, truth)) >= 0.98


@pytest.mark.parametrize("seed", [3, 4])
def test_flattened_rim_does_not_pull_the_fit(seed):
    # A flat side 8 px deep over 16% of the rim stays inside the fine search window, so
    # only the robust fit keeps it out: plain least squares would move the centre ~2 px.
    shape = (600, 600)
    truth = Circle(cx=301.3, cy=298.7, r=270.2)
    found = detect_fov(synthetic_fundus(shape, truth, seed=seed, notch="chord"))
    assert found is not None
    assert np.hypot(found.cx - truth.cx, found.cy - truth.cy) < 0.6
    assert abs(found.r - truth.r) < 0.6


def test_channel_order_and_grayscale_do_not_matter():
    shape = (300, 320)
    truth = Circle(cx=160.0, cy=150.0, r=135.0)
    rgb = synthetic_fundus(shape, truth, seed=4)
    a, b = detect_fov(rgb), detect_fov(rgb[..., ::-1].copy())
    assert a is not None and a == b
    gray = detect_fov(rgb.max(axis=2))
    assert gray is not None and abs(gray.r - truth.r) < 0.015 * truth.r


@pytest.mark.parametrize(
    "image",
    [
        np.full((200, 240, 3), 128, np.uint8),
        np.zeros((200, 240, 3), np.uint8),
        np.random.default_rng(0).integers(0, 256, (200, 240, 3), dtype=np.uint8),
        np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8),
        # A bright picture with no border: left-to-right ramp, and a bright square.
        np.broadcast_to(np.linspace(0, 255, 240).astype(np.uint8)[None, :, None], (200, 240, 3)).copy(),
        np.pad(np.full((100, 100, 3), 200, np.uint8), ((50, 50), (70, 70), (0, 0))),
        # A smooth picture of something else: blotches everywhere, no border.
        np.clip(cv2.resize(np.random.default_rng(2).uniform(0, 255, (5, 5, 3)).astype(np.float32),
                           (240, 200), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8),
    ],
    ids=["uniform_grey", "black", "noise", "small_noise", "ramp", "square", "blotches"],
)
def test_no_disc_gives_none(image):
    assert detect_fov(image) is None


def test_rejects_wrong_dtype():
    with pytest.raises(ValueError, match="uint8"):
        detect_fov(np.zeros((50, 50, 3), np.uint16))


def test_circle_scaled_maps_pixel_centres():
    c = Circle(cx=10.0, cy=20.0, r=8.0)
    # Pixel 0 of a 2x-upscaled image covers [-0.5, 1.5] of it, i.e. [-0.5, 0.5] here,
    # so the source pixel centre 0 maps to 0.5, not 0.
    assert c.scaled(2.0) == Circle(cx=20.5, cy=40.5, r=16.0)
    back = c.scaled(4.0).scaled(0.25)
    assert back.cx == pytest.approx(c.cx) and back.cy == pytest.approx(c.cy) and back.r == pytest.approx(c.r)


def test_detection_is_consistent_across_scales():
    shape = (800, 1200)
    truth = Circle(cx=590.3, cy=402.8, r=455.0)
    image = synthetic_fundus(shape, truth, seed=5)
    full = detect_fov(image)
    small = detect_fov(cv2.resize(image, (300, 200), interpolation=cv2.INTER_AREA))
    assert full is not None and small is not None
    back = small.scaled(4.0)
    assert abs(back.cx - full.cx) < 2.0 and abs(back.cy - full.cy) < 2.0 and abs(back.r - full.r) < 2.0


def test_fov_mask_and_fraction():
    mask = fov_mask((5, 7), Circle(cx=3.0, cy=2.0, r=1.0))
    expected = np.zeros((5, 7), bool)
    expected[2, 2:5] = True
    expected[1:4, 3] = True
    assert np.array_equal(mask, expected)
    big = Circle(cx=499.5, cy=499.5, r=400.0)
    assert fov_fraction((1000, 1000), big) == pytest.approx(np.pi * 0.16, rel=1e-3)


@pytest.mark.parametrize("size,interpolation", [(128, cv2.INTER_AREA), (128, cv2.INTER_LINEAR),
                                                (700, cv2.INTER_AREA), (700, cv2.INTER_CUBIC)])
def test_crop_maps_circle_to_centred_disc(size, interpolation):
    # A flat white disc with an exactly anti-aliased edge at a sub-pixel position: after
    # the crop its centroid must be the output centre and its area the output disc's.
    shape = (400, 500)
    truth = Circle(cx=251.37, cy=196.81, r=170.6)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    coverage = np.clip(truth.r - np.hypot(xx - truth.cx, yy - truth.cy) + 0.5, 0, 1)
    image = np.repeat(np.round(coverage * 250).astype(np.uint8)[..., None], 3, axis=2)

    out, mask, out_circle = crop_to_fov(image, truth, size=size, interpolation=interpolation)

    assert out.shape == (size, size, 3) and out.dtype == np.uint8 and mask.shape == (size, size)
    assert out_circle == Circle(cx=(size - 1) / 2, cy=(size - 1) / 2, r=size / 2)
    assert np.array_equal(mask, fov_mask((size, size), out_circle))  # disc lies inside the image
    assert not out[~mask].any()
    weight = out[..., 0].astype(np.float64)
    oy, ox = np.mgrid[0:size, 0:size]
    assert (weight * ox).sum() / weight.sum() == pytest.approx((size - 1) / 2, abs=0.02)
    assert (weight * oy).sum() / weight.sum() == pytest.approx((size - 1) / 2, abs=0.02)
    # The disc fills the square: the mean of the white disc over the square is pi/4.
    assert weight.sum() / (250 * size * size) == pytest.approx(np.pi / 4, abs=0.01)
    # Any source point lands where the exact affine map puts it: a small blob off centre.
    bx, by = 301.7, 150.2
    blob = np.clip(6.0 - np.hypot(xx - bx, yy - by) + 0.5, 0, 1)
    blob_image = np.repeat(np.round(blob * 250).astype(np.uint8)[..., None], 3, axis=2)
    moved, _, _ = crop_to_fov(blob_image, truth, size=size, interpolation=interpolation)
    step = 2 * truth.r / size
    bw = moved[..., 0].astype(np.float64)
    assert (bw * ox).sum() / bw.sum() == pytest.approx((bx - truth.cx + truth.r) / step - 0.5, abs=0.03)
    assert (bw * oy).sum() / bw.sum() == pytest.approx((by - truth.cy + truth.r) / step - 0.5, abs=0.03)


def test_crop_of_cut_off_disc_has_flat_mask():
    shape = (400, 600)
    truth = Circle(cx=300.0, cy=199.5, r=240.0)  # 40 px beyond the frame at top and bottom
    image = synthetic_fundus(shape, truth, seed=6)
    size = 240  # 2 source px per output px: the 40 px cut-offs become 20 rows

    out, mask, _ = crop_to_fov(image, truth, size=size)

    rows = np.flatnonzero(mask.any(axis=1))
    assert rows[0] == 20 and rows[-1] == size - 21
    assert not out[:20].any() and not out[-20:].any()
    # Flat: the first row that is disc is a wide chord, not the tip of a circle.
    assert mask[20].sum() > 0.5 * size
    assert not out[~mask].any()
    assert out[mask].mean() > 40
    # The crop of a detected circle is a centred disc again.
    again = detect_fov(out)
    assert again is not None
    assert abs(again.cx - (size - 1) / 2) < 1.0 and abs(again.r - size / 2) < 1.5


# --------------------------------------------------------------- real data (optional)


def _drive_pairs() -> list[tuple[Path, Path]]:
    pairs = []
    for image in sorted((SHARED / "drive").glob("*/images/*.tif")):
        pairs.append((image, image.parent.parent / "mask" / f"{image.stem}_mask.gif"))
    return pairs


def test_drive_ground_truth_masks():
    pairs = _drive_pairs()
    if not pairs:
        pytest.skip(f"DRIVE not found under {SHARED.resolve()} (a fresh clone has no ../shared)")
    scores = {}
    for image_path, mask_path in pairs:
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)[..., ::-1]
        truth = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if truth is None:  # some OpenCV builds cannot imread GIF, but can decode it as video
            ok, frame = cv2.VideoCapture(str(mask_path)).read()
            assert ok, mask_path
            truth = frame[..., 0]
        circle = detect_fov(np.ascontiguousarray(image))
        scores[image_path.name] = 0.0 if circle is None else iou(fov_mask(truth.shape, circle), truth > 127)
    worst = min(scores, key=scores.get)
    assert len(scores) == 40
    assert scores[worst] >= 0.97, f"{worst}: IoU {scores[worst]:.4f}"


def test_idrid_photos_at_reduced_scale():
    paths = sorted((SHARED / "idrid" / "images").glob("*.jpg"))[::16]
    if not paths:
        pytest.skip(f"IDRiD not found under {SHARED.resolve()} (a fresh clone has no ../shared)")
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_REDUCED_COLOR_4)[..., ::-1]
        h, w = image.shape[:2]
        circle = detect_fov(np.ascontiguousarray(image))
        assert circle is not None, path
        # Checked visually: the aperture is centred a little left of the middle, about 0.4 of
        # the width in radius, and cut off at top and bottom (r > h / 2).
        assert 0.44 * w < circle.cx < 0.48 * w, path
        assert 0.48 * h < circle.cy < 0.51 * h, path
        assert 0.38 * w < circle.r < 0.42 * w and circle.r > 0.55 * h, path
