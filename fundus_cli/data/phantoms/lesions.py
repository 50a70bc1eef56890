"""The lesions of the diabetic-retinopathy and AMD phantoms: haemorrhages, exudates, drusen."""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from fundus_cli.data.phantoms.plan import PhantomSpec


def lesions(refl: np.ndarray, spec: PhantomSpec, to_px: Callable, ri: float,
             disc: tuple[float, float], fovea: tuple[float, float]) -> None:
    rng = np.random.default_rng(spec.lesion_seed)
    sev = spec.severity
    ih, iw = refl.shape[:2]
    layers: dict[str, np.ndarray] = {}
    sh = 8

    def layer(name: str) -> np.ndarray:
        if name not in layers:
            layers[name] = np.zeros((ih, iw), np.uint8)
        return layers[name]

    def centre(p: np.ndarray) -> tuple[int, int]:
        q = to_px(p[None, :])[0]
        return int(round(q[0] * sh)), int(round(q[1] * sh))

    def spot(name: str, p: np.ndarray, rad: float, val: float) -> None:
        cv2.circle(layer(name), centre(p), max(1, int(round(rad * ri * sh))), int(val), -1, cv2.LINE_AA, shift=3)

    def blob(name: str, p: np.ndarray, ax: float, ay: float, ang: float, val: float) -> None:
        axes = (max(1, int(round(ax * ri * sh))), max(1, int(round(ay * ri * sh))))
        cv2.ellipse(layer(name), centre(p), axes, ang, 0, 360, int(val), -1, cv2.LINE_AA, shift=3)

    D = np.asarray(disc)
    F = np.asarray(fovea)
    pole = (D + 2 * F) / 3

    def sample(k: int, centre_: np.ndarray, sigma: float) -> np.ndarray:
        """k points around centre_, inside the FOV and off the disc."""
        pts = np.empty((0, 2))
        while len(pts) < k:
            cand = centre_ + rng.normal(0, sigma, size=(2 * k + 8, 2))
            ok = (np.hypot(cand[:, 0], cand[:, 1]) < 0.93) & (np.hypot(*(cand - D).T) > 1.3 * spec.disc_r)
            pts = np.concatenate([pts, cand[ok]])
        return pts[:k]

    if spec.label == 1:  # diabetic retinopathy
        for p in sample(int(4 + 40 * sev * rng.uniform(0.5, 1.0)), pole, 0.33):  # microaneurysms
            spot("haem", p, rng.uniform(0.0028, 0.006), rng.uniform(190, 255))
        for p in sample(int(rng.poisson(1 + 16 * sev**1.5)), pole, 0.38):  # blot haemorrhages
            size = rng.uniform(0.008, 0.028) * (0.6 + 0.6 * sev)
            val = rng.uniform(150, 235)
            for _ in range(rng.integers(4, 9)):  # irregular: a clump of overlapping ellipses
                q = p + rng.normal(0, 0.55 * size, 2)
                ax, ay = size * rng.uniform(0.3, 0.7), size * rng.uniform(0.3, 0.7)
                blob("blot", q, ax, ay, rng.uniform(0, 180), val * rng.uniform(0.75, 1.0))
        for p in sample(int(rng.poisson(3 * sev)), pole, 0.3):  # flame haemorrhages along nerve fibres
            d = p - D
            ang = math.degrees(math.atan2(d[1], d[0]))
            size = rng.uniform(0.01, 0.02)
            u_ = d / max(float(np.hypot(*d)), 1e-6)
            for k in range(int(rng.integers(3, 6))):  # feathered streaks along the fibres
                q = p + u_ * rng.normal(0, 1.2 * size) + u_[::-1] * np.array([1, -1]) * rng.normal(0, 0.4 * size)
                blob("blot", q, size * rng.uniform(1.5, 2.5), size * rng.uniform(0.2, 0.4), ang, rng.uniform(110, 190))
        n_clusters = int(rng.poisson(0.3 + 5 * sev)) if rng.random() < 0.8 else 0
        for _ in range(n_clusters):  # hard exudates: clusters, often ringing the macula
            a = rng.uniform(0, 2 * math.pi)
            c = F + rng.uniform(0.06, 0.4) * np.array([math.cos(a), math.sin(a)])
            spread = rng.uniform(0.01, 0.045)
            for _ in range(int(rng.integers(3, 25))):
                q = c + rng.normal(0, spread, 2)
                rad = rng.uniform(0.003, 0.009)
                ax, ay = rad * rng.uniform(0.7, 1.3), rad * rng.uniform(0.7, 1.3)
                blob("exu", q, ax, ay, rng.uniform(0, 180), rng.uniform(190, 255))
        if sev > 0.5:
            for p in sample(int(rng.poisson(3 * (sev - 0.4))), D * 0.6 + F * 0.4, 0.25):  # cotton-wool spots
                size = rng.uniform(0.015, 0.03)
                blob("cws", p, size * rng.uniform(1.0, 1.8), size, rng.uniform(0, 180), rng.uniform(120, 200))
    elif spec.label == 2:  # age-related macular degeneration
        sigma = rng.uniform(0.07, 0.15)
        for p in sample(int(15 + 130 * sev * rng.uniform(0.5, 1.0)), F, sigma):  # drusen
            big = rng.random() < 0.15 * sev
            rad = rng.uniform(0.011, 0.02) if big else rng.uniform(0.003, 0.009)
            spot("drusen", p, rad, rng.uniform(90, 190))
        if sev > 0.45:
            for p in sample(int(rng.poisson(8 * sev)), F, 0.06):  # pigment clumps
                ax, ay = rng.uniform(0.004, 0.012), rng.uniform(0.004, 0.01)
                blob("pig", p, ax, ay, rng.uniform(0, 180), rng.uniform(120, 220))
        if sev > 0.75 and rng.random() < 0.5:  # geographic atrophy
            for _ in range(int(rng.integers(1, 4))):
                q = F + rng.normal(0, 0.03, 2)
                s_ = rng.uniform(0.03, 0.07)
                blob("atrophy", q, s_ * rng.uniform(0.8, 1.2), s_ * rng.uniform(0.8, 1.2), rng.uniform(0, 180), 120)

    # name: (blur in internal px at r=360, mode, colour)
    looks = {
        "haem": (0.7, "red", (0.6, 0.1, 0.07)),
        "blot": (1.6, "red", (0.62, 0.12, 0.08)),
        "pig": (1.2, "mul", (0.6, 0.45, 0.42)),
        "exu": (0.7, "mix", (1.0, 0.82, 0.3)),
        "drusen": (1.8, "mix", (0.98, 0.78, 0.42)),
        "cws": (3.0, "mix", (0.95, 0.86, 0.7)),
        "atrophy": (4.0, "mix", (0.95, 0.66, 0.42)),
    }
    for name, m in layers.items():
        blur, mode, col = looks[name]
        a = cv2.GaussianBlur(m.astype(np.float32) / 255, (0, 0), max(0.3, blur * ri / 360))
        red = refl[..., 0].copy()
        for ch in range(3):
            if mode == "mul":
                refl[..., ch] *= 1 - a * (1 - col[ch])
            elif mode == "red":  # blood: dark red relative to the local red reflectance
                refl[..., ch] += a * (col[ch] * red - refl[..., ch])
            else:
                refl[..., ch] += a * (col[ch] - refl[..., ch])
