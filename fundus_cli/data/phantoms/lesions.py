"""The lesions of the diabetic-retinopathy and AMD phantoms: haemorrhages, exudates, drusen."""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from fundus_cli.data.phantoms.plan import PhantomSpec


class _Canvas:
    """One lesion layer per kind (uint8 coverage, drawn at 8x sub-pixel precision), and the seeded
    draws that place lesions inside the field of view and off the disc."""

    sh = 8  # cv2's shift: coordinates in 1/8 px

    def __init__(self, shape: tuple[int, int], spec: PhantomSpec, to_px: Callable, ri: float,
                 disc: np.ndarray) -> None:
        self.rng = np.random.default_rng(spec.lesion_seed)
        self.layers: dict[str, np.ndarray] = {}
        self.shape, self.spec, self.to_px, self.ri, self.disc = shape, spec, to_px, ri, disc

    def layer(self, name: str) -> np.ndarray:
        if name not in self.layers:
            self.layers[name] = np.zeros(self.shape, np.uint8)
        return self.layers[name]

    def centre(self, p: np.ndarray) -> tuple[int, int]:
        q = self.to_px(p[None, :])[0]
        return int(round(q[0] * self.sh)), int(round(q[1] * self.sh))

    def spot(self, name: str, p: np.ndarray, rad: float, val: float) -> None:
        cv2.circle(self.layer(name), self.centre(p), max(1, int(round(rad * self.ri * self.sh))), int(val), -1,
                   cv2.LINE_AA, shift=3)

    def blob(self, name: str, p: np.ndarray, ax: float, ay: float, ang: float, val: float) -> None:
        axes = (max(1, int(round(ax * self.ri * self.sh))), max(1, int(round(ay * self.ri * self.sh))))
        cv2.ellipse(self.layer(name), self.centre(p), axes, ang, 0, 360, int(val), -1, cv2.LINE_AA, shift=3)

    def sample(self, k: int, centre_: np.ndarray, sigma: float) -> np.ndarray:
        """k points around centre_, inside the FOV and off the disc."""
        pts = np.empty((0, 2))
        while len(pts) < k:
            cand = centre_ + self.rng.normal(0, sigma, size=(2 * k + 8, 2))
            ok = (np.hypot(cand[:, 0], cand[:, 1]) < 0.93) & (np.hypot(*(cand - self.disc).T) > 1.3 * self.spec.disc_r)
            pts = np.concatenate([pts, cand[ok]])
        return pts[:k]


def lesions(refl: np.ndarray, spec: PhantomSpec, to_px: Callable, ri: float,
             disc: tuple[float, float], fovea: tuple[float, float]) -> None:
    """Draw the lesions of the phantom's class into the reflectance image `refl` (in place)."""
    D = np.asarray(disc)
    F = np.asarray(fovea)
    c = _Canvas(refl.shape[:2], spec, to_px, ri, D)
    if spec.label == 1:  # diabetic retinopathy
        _retinopathy(c, spec.severity, D, F)
    elif spec.label == 2:  # age-related macular degeneration
        _macular_degeneration(c, spec.severity, D, F)
    _composite(refl, c.layers, ri)


def _retinopathy(cn: _Canvas, sev: float, D: np.ndarray, F: np.ndarray) -> None:
    """Microaneurysms, blot and flame haemorrhages, hard exudates and (severe) cotton-wool spots."""
    pole = (D + 2 * F) / 3
    for p in cn.sample(int(4 + 40 * sev * cn.rng.uniform(0.5, 1.0)), pole, 0.33):  # microaneurysms
        cn.spot("haem", p, cn.rng.uniform(0.0028, 0.006), cn.rng.uniform(190, 255))
    for p in cn.sample(int(cn.rng.poisson(1 + 16 * sev**1.5)), pole, 0.38):  # blot haemorrhages
        size = cn.rng.uniform(0.008, 0.028) * (0.6 + 0.6 * sev)
        val = cn.rng.uniform(150, 235)
        for _ in range(cn.rng.integers(4, 9)):  # irregular: a clump of overlapping ellipses
            q = p + cn.rng.normal(0, 0.55 * size, 2)
            ax, ay = size * cn.rng.uniform(0.3, 0.7), size * cn.rng.uniform(0.3, 0.7)
            cn.blob("blot", q, ax, ay, cn.rng.uniform(0, 180), val * cn.rng.uniform(0.75, 1.0))
    for p in cn.sample(int(cn.rng.poisson(3 * sev)), pole, 0.3):  # flame haemorrhages along nerve fibres
        d = p - D
        ang = math.degrees(math.atan2(d[1], d[0]))
        size = cn.rng.uniform(0.01, 0.02)
        u_ = d / max(float(np.hypot(*d)), 1e-6)
        for k in range(int(cn.rng.integers(3, 6))):  # feathered streaks along the fibres
            q = p + u_ * cn.rng.normal(0, 1.2 * size) + u_[::-1] * np.array([1, -1]) * cn.rng.normal(0, 0.4 * size)
            cn.blob("blot", q, size * cn.rng.uniform(1.5, 2.5), size * cn.rng.uniform(0.2, 0.4), ang,
                    cn.rng.uniform(110, 190))
    n_clusters = int(cn.rng.poisson(0.3 + 5 * sev)) if cn.rng.random() < 0.8 else 0
    for _ in range(n_clusters):  # hard exudates: clusters, often ringing the macula
        a = cn.rng.uniform(0, 2 * math.pi)
        c = F + cn.rng.uniform(0.06, 0.4) * np.array([math.cos(a), math.sin(a)])
        spread = cn.rng.uniform(0.01, 0.045)
        for _ in range(int(cn.rng.integers(3, 25))):
            q = c + cn.rng.normal(0, spread, 2)
            rad = cn.rng.uniform(0.003, 0.009)
            ax, ay = rad * cn.rng.uniform(0.7, 1.3), rad * cn.rng.uniform(0.7, 1.3)
            cn.blob("exu", q, ax, ay, cn.rng.uniform(0, 180), cn.rng.uniform(190, 255))
    if sev > 0.5:
        for p in cn.sample(int(cn.rng.poisson(3 * (sev - 0.4))), D * 0.6 + F * 0.4, 0.25):  # cotton-wool spots
            size = cn.rng.uniform(0.015, 0.03)
            cn.blob("cws", p, size * cn.rng.uniform(1.0, 1.8), size, cn.rng.uniform(0, 180), cn.rng.uniform(120, 200))


def _macular_degeneration(cn: _Canvas, sev: float, D: np.ndarray, F: np.ndarray) -> None:
    """Drusen, (moderate) pigment clumps and (severe) geographic atrophy around the fovea."""
    sigma = cn.rng.uniform(0.07, 0.15)
    for p in cn.sample(int(15 + 130 * sev * cn.rng.uniform(0.5, 1.0)), F, sigma):  # drusen
        big = cn.rng.random() < 0.15 * sev
        rad = cn.rng.uniform(0.011, 0.02) if big else cn.rng.uniform(0.003, 0.009)
        cn.spot("drusen", p, rad, cn.rng.uniform(90, 190))
    if sev > 0.45:
        for p in cn.sample(int(cn.rng.poisson(8 * sev)), F, 0.06):  # pigment clumps
            ax, ay = cn.rng.uniform(0.004, 0.012), cn.rng.uniform(0.004, 0.01)
            cn.blob("pig", p, ax, ay, cn.rng.uniform(0, 180), cn.rng.uniform(120, 220))
    if sev > 0.75 and cn.rng.random() < 0.5:  # geographic atrophy
        for _ in range(int(cn.rng.integers(1, 4))):
            q = F + cn.rng.normal(0, 0.03, 2)
            s_ = cn.rng.uniform(0.03, 0.07)
            cn.blob("atrophy", q, s_ * cn.rng.uniform(0.8, 1.2), s_ * cn.rng.uniform(0.8, 1.2),
                    cn.rng.uniform(0, 180), 120)


def _composite(refl: np.ndarray, layers: dict[str, np.ndarray], ri: float) -> None:
    """Blur each lesion layer and blend it into the reflectance with its colour and mode."""
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
