"""The vessel tree of a phantom: arteries and veins sprouting from the optic disc, branching and
narrowing."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from fundus_cli.data.phantoms.plan import PhantomSpec


_W_MIN = 0.0022  # thinnest vessel drawn (fraction of fov_r)


_MAX_DEPTH = 3


@dataclass
class _Sprout:
    x: float
    y: float
    theta: float  # heading, radians, canonical image coordinates (y down)
    w: float  # width, fraction of fov_r
    depth: int
    artery: bool
    kind: str  # "arcade" | "nasal" | "macular" | "out" | "in"
    side: int = 0  # arcades: -1 superior, +1 inferior
    bend: float = 0.3  # arcades: distance over which the heading relaxes ...
    final: float = 0.3  # ... from its start to this angle off the horizontal (diverging)


def _vessel_tree(
    spec: PhantomSpec, disc: tuple[float, float], fovea: tuple[float, float]
) -> list[tuple[list, list, bool]]:
    """Grow arteries and veins from the disc as smooth random walks that branch and thin.

    Returns (points, widths, is_artery) per vessel in canonical coordinates.
    """
    main = random.Random(spec.vessel_seed)
    detail = random.Random(spec.vessel_detail_seed)
    Dx, Dy = disc
    Fx, Fy = fovea
    rho0 = math.hypot(Fx - Dx, Fy - Dy)
    dr = spec.disc_r
    w_vein = main.uniform(0.026, 0.031)
    w_art = w_vein * main.uniform(0.68, 0.78)

    stack: list[_Sprout] = []
    for side in (-1, 1):  # four main arcades: artery and vein, above and below the macula
        for artery in (True, False):
            stack.append(
                _Sprout(
                    Dx + main.gauss(0, 0.15) * dr,
                    Dy + main.gauss(0, 0.15) * dr,
                    side * main.uniform(1.1, 1.45),
                    (w_art if artery else w_vein) * main.uniform(0.95, 1.05),
                    0,
                    artery,
                    "arcade",
                    side,
                    bend=main.uniform(0.25, 0.45),
                    final=main.uniform(-0.05, 0.25),
                )
            )
        for artery in (True, False):  # nasal trunks
            th = math.pi + side * main.uniform(0.5, 1.2)
            stack.append(
                _Sprout(Dx, Dy, th, (w_art if artery else w_vein) * main.uniform(0.55, 0.8), 0, artery, "nasal")
            )
    for _ in range(main.randint(2, 4)):  # small papillomacular vessels towards the fovea
        th = main.uniform(-0.5, 0.5)
        stack.append(
            _Sprout(Dx + 0.8 * dr, Dy + main.uniform(-0.6, 0.6) * dr, th, main.uniform(0.004, 0.007), 1,
                    main.random() < 0.5, "macular")
        )
    stack.reverse()

    fav = 0.06 + 0.6 * dr  # foveal avascular zone: no vessel enters
    out: list[tuple[list, list, bool]] = []
    while stack:
        sp = stack.pop()
        rng = main if sp.depth <= 1 else detail
        out.append(_grow(sp, rng, stack, (Dx, Dy), (Fx, Fy), rho0, fav))
    return out


def _grow(sp: _Sprout, rng: random.Random, stack: list[_Sprout], D: tuple[float, float],
          F: tuple[float, float], rho0: float, fav: float) -> tuple[list, list, bool]:
    """One vessel from its sprout to where it leaves the field of view, thins out or reaches the
    fovea; its side branches go on `stack`. Returns (points, widths, artery)."""
    Fx, Fy = F
    x, y, th, w = sp.x, sp.y, sp.theta, sp.w
    pts = [(x, y)]
    ws = [w]
    thick = w > 0.012
    step = 0.01 if thick else 0.016
    # Curvature is an Ornstein-Uhlenbeck process: smooth bends, tortuous small vessels.
    ell = 0.12
    sig = (1.8 if thick else 2.0 + 200 * max(0.0, 0.008 - w)) * (1.0 if sp.kind != "macular" else 1.5)
    decay = math.exp(-step / ell)
    kick = sig * math.sqrt(1 - decay * decay)
    kappa = rng.gauss(0, sig)
    taper = math.exp(-step * (0.35 if sp.depth == 0 else 1.2))
    gain = {"arcade": 9.0, "nasal": 1.5, "macular": 5.0, "out": 2.0, "in": 5.0}[sp.kind]
    interval = (0.1, 0.2, 0.3, 0.4)[sp.depth]
    next_branch = 0.02 + rng.expovariate(1 / interval) if sp.kind != "macular" else 1e9
    if sp.kind == "arcade":
        next_branch += 0.5 * rho0 * 0.3
    travelled = 0.0
    for _ in range(600):
        ddx, ddy = _heading(sp, x, y, travelled, D, F)
        diff = (math.atan2(ddy, ddx) - th + math.pi) % (2 * math.pi) - math.pi
        th += diff * min(1.0, gain * step)
        kappa = kappa * decay + kick * rng.gauss(0, 1)
        th += kappa * step
        x += step * math.cos(th)
        y += step * math.sin(th)
        w *= taper
        travelled += step
        pts.append((x, y))
        ws.append(w)
        if x * x + y * y > 1.06 or w < _W_MIN:
            break
        if (x - Fx) ** 2 + (y - Fy) ** 2 < fav * fav:
            break
        if travelled >= next_branch:
            next_branch = travelled + 0.02 + rng.expovariate(1 / interval)
            w, th = _branch(sp, rng, stack, x, y, th, w, F)
    return pts, ws, sp.artery


def _heading(sp: _Sprout, x: float, y: float, travelled: float, D: tuple[float, float],
             F: tuple[float, float]) -> tuple[float, float]:
    """The direction a vessel wants to go (not normalised) at (x, y)."""
    Dx, Dy = D
    Fx, Fy = F
    if sp.kind == "arcade":
        # Leave the disc steeply, then flatten out above / below the macula while still
        # diverging, so the two arcades never meet at the temporal raphe.
        a = sp.final + (abs(sp.theta) - sp.final) * math.exp(-travelled / sp.bend)
        ddx, ddy = math.cos(a), sp.side * math.sin(a)
    elif sp.kind in ("macular", "in"):
        ddx, ddy = Fx - x, Fy - y
    else:  # away from the posterior pole: from the disc nearby, from the fovea further out
        ax, ay = x - Dx, y - Dy
        bx, by = x - Fx, y - Fy
        na = max(ax * ax + ay * ay, 1e-4)
        nb = max(bx * bx + by * by, 1e-4)
        ddx, ddy = ax / na + 0.8 * bx / nb, ay / na + 0.8 * by / nb
        if sp.kind == "nasal":
            ddx -= 2.0  # nasal trunks keep heading nasally
    return ddx, ddy


def _branch(sp: _Sprout, rng: random.Random, stack: list[_Sprout], x: float, y: float, th: float, w: float,
            F: tuple[float, float]) -> tuple[float, float]:
    """Maybe give off a side branch at (x, y) (pushed on `stack`); the parent's width and heading after it."""
    Fx, Fy = F
    if sp.depth >= _MAX_DEPTH:
        return w, th
    inward = sp.kind == "arcade" and rng.random() < 0.3
    if inward:
        c = rng.uniform(0.25, 0.45)
    elif sp.depth == 0:  # trunks give off mostly small side branches and stay wide
        c = rng.uniform(0.25, 0.65)
    else:
        c = rng.uniform(0.35, 0.8)
    cw = w * c
    if cw < _W_MIN * 1.3:
        return w, th
    angle = rng.uniform(0.45, 1.1)
    # Pick the side that points away from (or, for inward branches, towards) the fovea.
    ox, oy = x - Fx, y - Fy
    s_plus = math.cos(th + angle) * ox + math.sin(th + angle) * oy
    s_minus = math.cos(th - angle) * ox + math.sin(th - angle) * oy
    if sp.kind == "arcade":
        sgn = 1 if (s_plus > s_minus) != inward else -1
    else:
        sgn = rng.choice((-1, 1))
    stack.append(_Sprout(x, y, th + sgn * angle, cw, sp.depth + 1, sp.artery, "in" if inward else "out"))
    w *= (1 - c**3) ** (1 / 3)
    th -= sgn * angle * c * c * 0.5  # the parent is deflected the other way
    return w, th


def vessels(refl: np.ndarray, spec: PhantomSpec, to_px: Callable, ri: float,
             disc: tuple[float, float], fovea: tuple[float, float]) -> None:
    tree = _vessel_tree(spec, disc, fovea)
    ih, iw = refl.shape[:2]
    ss = 2  # draw supersampled, then average down: sub-pixel widths
    masks = {True: np.zeros((ih * ss, iw * ss), np.uint8), False: np.zeros((ih * ss, iw * ss), np.uint8)}
    runs = []
    for pts, ws, artery in tree:
        if len(pts) < 2:
            continue
        P = np.rint(to_px(np.asarray(pts, np.float64), ss) * 8).astype(np.int32)
        wpx = np.asarray(ws) * ri * ss
        thick = np.maximum(1, np.rint(wpx)).astype(np.int64)
        # Thin vessels are also shallower: less contrast as well as less width.
        contrast = np.clip(0.2 + 0.8 * np.asarray(ws) / 0.014, 0.25, 1.0)
        fade = np.minimum(1.0, np.arange(len(pts))[::-1] / 4.0)  # vessel ends fade out
        val = np.rint(np.minimum(1.0, wpx) * contrast * fade * 12).astype(np.int64)
        key = thick * 100 + val
        cuts = np.concatenate([[0], np.flatnonzero(np.diff(key[:-1])) + 1, [len(pts) - 1]])
        for a, b in zip(cuts[:-1], cuts[1:]):
            if b > a and val[a] > 0:
                runs.append((int(val[a]), int(thick[a]), artery, P[a : b + 1]))
    runs.sort(key=lambda t: (t[0], t[1]))
    for val, thick, artery, poly in runs:
        cv2.polylines(masks[artery], [poly], False, min(255, round(val * 255 / 12)), thick, cv2.LINE_AA, shift=3)
    sig = max(0.4, 0.7 * ri / 360)
    am, vm = (
        cv2.GaussianBlur(cv2.resize(masks[k], (iw, ih), interpolation=cv2.INTER_AREA), (0, 0), sig).astype(np.float32)
        * np.float32(1 / 255)
        for k in (True, False)
    )
    # Vessels dive into the optic cup: fade them towards the disc centre.
    cup = to_px(np.array([disc]))[0]
    jj = np.arange(iw, dtype=np.float32)[None, :] - cup[0]
    ii = np.arange(ih, dtype=np.float32)[:, None] - cup[1]
    s_cup = 0.35 * spec.disc_r * ri
    fade = min(1.0, spec.vessel_contrast) * (1.0 - 0.75 * np.exp(-(jj * jj + ii * ii) / (2 * s_cup * s_cup)))
    am *= fade
    vm *= fade
    # Blood absorbs green far more than red: vessels look dark red, not brown.
    vein = (0.72, 0.4, 0.55)
    art = (0.88, 0.65, 0.75)
    for ch in range(3):
        # Arteries cross over veins.
        refl[..., ch] *= (1 - am) * (1 - vm * (1 - vein[ch])) + am * art[ch]
