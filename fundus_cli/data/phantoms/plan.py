"""Who the phantom patients are: class, eye, camera, field of view and every random choice of each
photograph, drawn from one seed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fundus_cli.errors import FundusError


CLASS_NAMES = ("healthy", "diabetic_retinopathy", "amd")


_CLASS_P = (0.5, 0.3, 0.2)


@dataclass(frozen=True, kw_only=True)
class PhantomSpec:
    """Everything needed to render one image; lengths in fractions of fov_r unless noted."""

    width: int  # image size, pixels
    height: int
    fov_cx: float  # true field-of-view circle, pixels of the full image
    fov_cy: float
    fov_r: float
    label: int  # index into CLASS_NAMES; 0 renders no lesions
    patient: int
    eye: str  # "left" (disc on the image's left) or "right" (mirrored)
    notch: str  # "none" | "rect" | "triangle": camera mark cut into the rim
    notch_angle: float  # radians, image coordinates (0 = right, pi/2 = down)
    notch_size: float
    colour: tuple[float, float, float]  # RGB reflectance of the posterior pole, 0..1
    brightness: float  # exposure gain; below ~0.7 the photograph looks dark
    vignette: float  # radial fall-off towards the rim, 0..1
    illum_angle: float  # direction of the smooth illumination gradient, radians
    illum_strength: float  # its amplitude across one radius
    texture_seed: int  # choroidal texture
    texture_strength: float
    disc_x: float  # optic disc centre, canonical (left-eye) coordinates
    disc_y: float
    disc_r: float  # horizontal disc radius
    disc_aspect: float  # vertical / horizontal disc radius
    cup_ratio: float  # cup radius / disc radius
    disc_pallor: float  # 0 = orange-pink rim, 1 = pale yellow
    macula_dd: float  # disc-to-fovea distance in disc diameters
    fovea_dy: float  # fovea sits slightly below the disc centre
    macula_darkness: float
    fovea_reflex: float  # 0 = no foveal light reflex
    vessel_seed: int  # trunks and first branches: shared by both eyes of a patient
    vessel_detail_seed: int  # finer branches: per eye
    vessel_contrast: float
    lesion_seed: int
    severity: float  # 0..1, number and size of lesions (ignored when label is 0)
    halo: float  # yellowish crescent of stray light along the rim, 0 = none
    blur: float  # Gaussian sigma
    noise: float  # sensor noise sigma on the 0..1 scale
    noise_seed: int
    background: float  # level of the near-black surround, 0..255


def plan_phantoms(*, n: int, seed: int) -> list[PhantomSpec]:
    """Specs for n images of about n/2 patients, left eye then right eye of each.

    Patient k's specs depend only on (seed, k), so a smaller n gives a prefix of a larger one.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise FundusError(f"phantoms: n must be a positive whole number, got {n!r}; pass e.g. n=200")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise FundusError(f"phantoms: seed must be a whole number >= 0, got {seed!r}")
    specs: list[PhantomSpec] = []
    for patient in range((n + 1) // 2):
        eyes = ("left", "right") if 2 * patient + 1 < n else ("left",)
        specs.extend(_plan_patient(np.random.default_rng([seed, patient]), patient, eyes))
    return specs


def _camera(rng: np.random.Generator) -> dict[str, Any]:
    """Image size, field-of-view circle (sometimes wider than the frame is tall) and notch."""
    u = rng.uniform
    cut = rng.random() < 0.3
    width = int(u(600, 2000))
    aspect = u(1.3, 1.5) if cut else u(1.0, 1.5)
    height = int(round(width / aspect))
    if cut:  # circle wider than the frame is tall: flat top and bottom
        r = height / 2 * u(1.06, 1.2)
        cy = height / 2 + u(-0.02, 0.02) * height
    else:
        r = min(width, height) / 2 * u(0.86, 0.97)
        cy = height / 2 + u(-1, 1) * min(0.02 * height, height / 2 - r - 2)
    cx = width / 2 + u(-1, 1) * min(0.02 * width, max(0.0, width / 2 - r - 2))
    notch = str(rng.choice(["rect", "triangle"])) if rng.random() < 0.2 else "none"
    notch_angle = float(rng.choice([-0.25, -0.75, 0.25, 0.75]) * math.pi + u(-0.2, 0.2))
    notch_size = float(u(0.025, 0.05))
    return {"width": width, "height": height, "fov_cx": round(float(cx), 2), "fov_cy": round(float(cy), 2),
            "fov_r": round(float(r), 2), "notch": notch, "notch_angle": notch_angle, "notch_size": notch_size}


def _plan_patient(rng: np.random.Generator, patient: int, eyes: tuple[str, ...]) -> list[PhantomSpec]:
    u = rng.uniform
    label = int(rng.choice(len(CLASS_NAMES), p=_CLASS_P))
    severity = float(u(0.25, 1.0))

    camera = _camera(rng)  # one per patient: both eyes share image size, circle and notch

    red = u(0.62, 0.95)
    green = red * u(0.32, 0.62)
    blue = green * u(0.15, 0.65)
    brightness = float(np.clip(math.exp(rng.normal(math.log(0.9), 0.18)), 0.45, 1.2))
    disc_r = u(0.11, 0.15)
    disc_x = -u(0.52, 0.68)
    disc_y = u(-0.06, 0.06)
    disc_aspect = u(1.0, 1.15)
    cup_ratio = u(0.25, 0.5)
    disc_pallor = u(0.0, 1.0)
    macula_dd = u(2.0, 2.4)
    fovea_dy = u(0.0, 0.05)
    vessel_seed = int(rng.integers(2**31))
    vessel_contrast = u(0.8, 1.1)

    specs = []
    for eye in eyes:
        specs.append(
            PhantomSpec(
                **camera,
                label=label,
                patient=patient,
                eye=eye,
                colour=(float(red), float(green), float(blue)),
                brightness=float(brightness * u(0.92, 1.08)),
                vignette=float(u(0.15, 0.45)),
                illum_angle=float(u(0, 2 * math.pi)),
                illum_strength=float(u(0.0, 0.22)),
                texture_seed=int(rng.integers(2**31)),
                texture_strength=float(u(0.035, 0.1)),
                disc_x=float(disc_x + rng.normal(0, 0.01)),
                disc_y=float(disc_y + rng.normal(0, 0.01)),
                disc_r=float(disc_r * u(0.97, 1.03)),
                disc_aspect=float(disc_aspect),
                cup_ratio=float(cup_ratio * u(0.9, 1.1)),
                disc_pallor=float(disc_pallor),
                macula_dd=float(macula_dd),
                fovea_dy=float(fovea_dy),
                macula_darkness=float(u(0.15, 0.4)),
                fovea_reflex=float(0.0 if rng.random() < 0.5 else u(0.1, 0.35)),
                vessel_seed=vessel_seed,
                vessel_detail_seed=int(rng.integers(2**31)),
                vessel_contrast=float(vessel_contrast),
                lesion_seed=int(rng.integers(2**31)),
                severity=severity,
                halo=float(0.0 if rng.random() < 0.6 else u(0.05, 0.25)),
                blur=float(u(0.001, 0.003)),
                noise=float(u(0.004, 0.012)),
                noise_seed=int(rng.integers(2**31)),
                background=float(u(0.0, 6.0)),
            )
        )
    return specs
