"""Validate the fundus statistic `vessel_density` against DRIVE's expert vessel maps and on
vessel-free controls.

    python benchmarks/vessels.py                # 40 DRIVE images at native size, 128 and 64 px
    python benchmarks/vessels.py --quick        # 8 images, 64 px only

DRIVE (../shared/data/drive) gives 40 photographs with a manual vessel map each (and a
second observer's map for the 20 test images). Each photograph and its map go through
the ingest path (decode_image, detect_fov, crop_to_fov: the functions `fundus ingest` uses
per file) at the photograph's own field-of-view diameter ("native", ~535 px) and at 128
and 64 px. Printed per size, for the current detector and for the previous one (a black
top-hat, kept here as the reference):

- expert: Pearson and Spearman correlation of the measured vessel share with the expert's
  across the 40 photographs, and both means. The ceiling is the agreement between two
  experts on the same 20 photographs, printed first: the vessel share varies little between
  DRIVE's photographs (0.09-0.18), and much of that is where an observer stops tracing.
- dose: vessels erased (inpainted along the expert map) in 0-4 of 4 sectors of 8
  photographs, 40 images whose true vessel share spans 0 to the full value: correlation of
  measured with remaining true share. This is the test of "tracks the vessels".
- AUC: per-pixel ROC AUC of the line strength against the expert map (native size).
- controls, which should score near 0: the same photographs with all vessels erased
  (inpainting along the expert map; a morphological closing; a median filter, each at
  native size before resizing), smooth orange discs with an optic disc, the discs with
  isotropic Gaussian noise (sd 4 and 8 grey levels; and sd 8 smoothed over ~1 px, x2.5),
  the discs with a checkerboard of 2- and 4-px period at +-4 and +-8 grey levels (vessels
  at 64 px are ~8 grey levels darker than their surround in green), and vessel-erased
  photographs with a 2-px +-4 checkerboard ("orange discs with texture").
- ms/image, single-threaded.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import scipy.stats

from fundus_cli.data.decode import decode_image
from fundus_cli.data.fov import crop_to_fov, detect_fov
from fundus_cli.commands.ingest.stage import process_file
from fundus_cli.metrics import fundus_stats as fs

DRIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "drive"


def load_drive(root: Path, sizes: list[int | None], *, limit: int | None = None) -> dict:
    """{size: (images, masks, expert maps)} as lists; size None = the FOV's own diameter.

    Expert maps are float (share of each output pixel that the expert traced), cropped and
    area-resized exactly like the photograph."""
    out: dict = {s: ([], [], []) for s in sizes}
    files = sorted((root / "training" / "images").glob("*.tif")) + sorted((root / "test" / "images").glob("*.tif"))
    from PIL import Image

    for path in files[:limit]:
        number = path.name.split("_")[0]
        expert = np.asarray(Image.open(path.parent.parent / "1st_manual" / f"{number}_manual1.gif").convert("L")) > 127
        image = decode_image(path, target=1024, reduced=False).image
        circle = detect_fov(image)
        if circle is None:
            raise SystemExit(f"{path}: no field of view found")
        for s in sizes:
            size = s or int(round(2 * circle.r))
            crop, mask, _ = crop_to_fov(image, circle, size=size)
            traced, _, _ = crop_to_fov(expert.astype(np.float32), circle, size=size)
            out[s][0].append(crop)
            out[s][1].append(mask)
            out[s][2].append(traced.reshape(size, size))
    # The crops are what ingest stores: check on the first photograph.
    s = next((s for s in sizes if s), 64)
    ingested = process_file((str(files[0]), files[0].name, s, True))
    direct, _, _ = crop_to_fov(decode_image(files[0], target=1024, reduced=False).image,
                               detect_fov(decode_image(files[0], target=1024, reduced=False).image), size=s)
    assert ingested["ok"] and np.array_equal(ingested["image"], direct), "benchmark crops differ from ingest's"
    return out


def tophat_reference(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The previous detector (fundus-cli <= b2218e6): black top-hat, 5 % relative contrast."""
    s = image.shape[0]
    inner = fs._inner(mask)
    green = fs._fill_outside(image[..., 1].astype(np.float32), inner)
    green = cv2.GaussianBlur(green, (0, 0), sigmaX=s / 256)
    size = max(3, int(round(s / 25)) | 1)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    closed = cv2.morphologyEx(green, cv2.MORPH_CLOSE, disc, borderType=cv2.BORDER_REPLICATE)
    return ((closed - green) > 0.05 * np.maximum(closed, 1.0)) & inner


def erase_vessels(image: np.ndarray, traced: np.ndarray, how: str) -> np.ndarray:
    """The photograph without its vessels, colour and optic disc kept."""
    if how == "inpaint":
        where = cv2.dilate((traced > 0.5).astype(np.uint8), np.ones((3, 3), np.uint8))
        return cv2.inpaint(image, where, 5, cv2.INPAINT_TELEA)
    k = int(round(image.shape[0] / 25)) | 1  # wider than the widest vessel
    if how == "closing":
        return cv2.morphologyEx(image, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return cv2.medianBlur(image, k)


def disc_mask(s: int) -> np.ndarray:
    yy, xx = np.mgrid[:s, :s]
    return (yy - s / 2 + 0.5) ** 2 + (xx - s / 2 + 0.5) ** 2 < (s / 2 - 1) ** 2


def smooth_disc(s: int, seed: int) -> np.ndarray:
    """Float orange disc with a gradient and a bright optic disc, no vessels (before masking)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:s, :s] / s
    img = np.stack([170 + 40 * xx, 80 + 30 * yy, 30 + 10 * xx], -1).astype(np.float32)
    cy, cx = rng.uniform(0.35, 0.65, 2) * s
    d2 = ((yy * s - cy) ** 2 + (xx * s - cx) ** 2) / (s / 14) ** 2
    return img + np.exp(-d2)[..., None] * np.array([60, 90, 60], np.float32)


def checkerboard(s: int, period: int, amplitude: float) -> np.ndarray:
    yy, xx = np.mgrid[:s, :s] // (period // 2)
    return np.where((yy + xx) % 2 == 0, amplitude, -amplitude).astype(np.float32)[..., None]


def finish(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.clip(img, 0, 255).astype(np.uint8) * mask[..., None].astype(np.uint8)


def resize(img: np.ndarray, s: int) -> np.ndarray:
    return cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA)


def share(detector, image: np.ndarray, mask: np.ndarray) -> float:
    return float(detector(image, mask).sum() / max(1, fs._inner(mask).sum()))


def second_observer(root: Path) -> tuple[float, float, int]:
    from PIL import Image

    a, b = [], []
    for path in sorted((root / "test" / "2nd_manual").glob("*_manual2.gif")):
        n = path.name.split("_")[0]
        fov = np.asarray(Image.open(root / "test" / "mask" / f"{n}_test_mask.gif").convert("L")) > 127
        a.append((np.asarray(Image.open(root / "test" / "1st_manual" / f"{n}_manual1.gif").convert("L")) > 127)[fov].mean())
        b.append((np.asarray(Image.open(path).convert("L")) > 127)[fov].mean())
    return float(scipy.stats.pearsonr(a, b)[0]), float(scipy.stats.spearmanr(a, b)[0]), len(a)


def pixel_auc(strength: np.ndarray, truth: np.ndarray) -> float:
    ranks = scipy.stats.rankdata(strength)
    pos = truth.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def run(sizes: list[int | None], limit: int | None) -> None:
    cv2.setNumThreads(1)
    t0 = time.perf_counter()
    data = load_drive(DRIVE, [None] + [s for s in sizes if s], limit=limit)
    print(f"DRIVE: {len(data[None][0])} photographs loaded through the ingest crop in {time.perf_counter() - t0:.1f} s")
    if limit is None:
        r, rho, n = second_observer(DRIVE)
        print(f"ceiling: expert 1 vs expert 2 vessel share on the {n} test photographs: Pearson {r:.2f}, "
              f"Spearman {rho:.2f}")
    nat_images, nat_masks, nat_traced = data[None]
    n = len(nat_images)
    step = max(1, n // 8)
    aucs = []
    for i in range(0, n, step):
        strength, inner = fs.line_strength(nat_images[i], nat_masks[i])
        aucs.append(pixel_auc(strength[inner], nat_traced[i][inner] > 0.5))
    print(f"per-pixel AUC of the line strength vs the expert map (native, {len(aucs)} photographs): "
          f"{np.mean(aucs):.3f} (min {np.min(aucs):.3f})")

    for detector_name, detector in (("line (current)", fs.vessel_map), ("top-hat (previous)", tophat_reference)):
        print(f"\n== {detector_name}")
        for s in [None] + [s for s in sizes if s]:
            images, masks, traced = data[s]
            label = "native" if s is None else f"{s} px"
            expert = np.array([t[fs._inner(m)].mean() for t, m in zip(traced, masks)])
            t1 = time.perf_counter()
            measured = np.array([share(detector, im, m) for im, m in zip(images, masks)])
            ms = (time.perf_counter() - t1) / n * 1e3
            line = [f"{label:>7}: expert r {scipy.stats.pearsonr(measured, expert)[0]:+.2f} "
                    f"rho {scipy.stats.spearmanr(measured, expert)[0]:+.2f}  mean {measured.mean():.3f} "
                    f"(expert {expert.mean():.3f})  {ms:.1f} ms/image"]
            # Dose-response: erase the vessels of k of 4 angular sectors.
            true_left, found = [], []
            for i in range(0, n, step):
                side = nat_images[i].shape[0]
                yy, xx = np.mgrid[:side, :side] - side / 2
                sector = (np.arctan2(yy, xx) + np.pi) / (2 * np.pi)
                for k in range(5):
                    erased_area = sector < k / 4
                    img = erase_vessels(nat_images[i], nat_traced[i] * erased_area, "inpaint") if k else nat_images[i]
                    left = nat_traced[i] * ~erased_area
                    mask = nat_masks[i]
                    if s is not None:
                        img, mask, left = resize(img, s) * masks[i][..., None], masks[i], resize(left, s)
                    true_left.append(left[fs._inner(mask)].mean())
                    found.append(share(detector, img, mask))
            line.append(f"dose r {scipy.stats.pearsonr(true_left, found)[0]:+.2f} "
                        f"rho {scipy.stats.spearmanr(true_left, found)[0]:+.2f}")
            controls: dict[str, list[float]] = {}
            for i in range(0, n, step):
                for how in ("inpaint", "closing", "median"):
                    img, mask = erase_vessels(nat_images[i], nat_traced[i], how), nat_masks[i]
                    if s is not None:
                        img, mask = resize(img, s) * masks[i][..., None], masks[i]
                    controls.setdefault(f"erased:{how}", []).append(share(detector, img, mask))
                    if how == "inpaint":
                        textured = finish(img.astype(np.float32) + checkerboard(img.shape[0], 2, 4), mask)
                        controls.setdefault("erased+check2/4", []).append(share(detector, textured, mask))
            side = s or 512
            dm = disc_mask(side)
            rng = np.random.default_rng(0)
            for seed in range(4):
                base = smooth_disc(side, seed)
                controls.setdefault("disc", []).append(share(detector, finish(base, dm), dm))
                for sd in (4, 8):
                    noisy = finish(base + rng.normal(0, sd, base.shape), dm)
                    controls.setdefault(f"noise{sd}", []).append(share(detector, noisy, dm))
                blob = cv2.GaussianBlur(rng.normal(0, 8, base.shape).astype(np.float32), (0, 0), 1.0) * 2.5
                controls.setdefault("noise-smooth", []).append(share(detector, finish(base + blob, dm), dm))
                for period in (2, 4):
                    for amp in (4, 8):
                        img = finish(base + checkerboard(side, period, amp), dm)
                        controls.setdefault(f"check{period}/{amp}", []).append(share(detector, img, dm))
            line.append("controls " + " ".join(f"{k} {np.mean(v):.3f}" for k, v in controls.items()))
            print("  ".join(line[:2]) + "\n         " + line[2], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 photographs, 64 px only")
    args = parser.parse_args()
    if not DRIVE.exists():
        raise SystemExit(f"{DRIVE} is absent: the DRIVE photographs live in ../shared beside the repository")
    run([64] if args.quick else [128, 64], 8 if args.quick else None)


if __name__ == "__main__":
    main()
