"""One patient drawn from a seed: body size and shape, fat, organ positions and sizes, lung
vessels, bowel loops and the texture's plane waves.

The draws happen in one fixed order from one generator, so a seed always gives the same
patient; any change to that order changes every phantom (tests/test_phantom.py notices).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from manas_infer.data.phantom.shapes import Blob, z_extents
from manas_infer.data.phantom.tissues import (
    AIR,
    BLOOD,
    BOWEL_WALL,
    CANCELLOUS,
    CORTICAL,
    FECES,
    FLUID,
    KIDNEY,
    LIVER,
    LUNG,
    MUSCLE,
    SPLEEN,
    URINE,
    VISCERAL_FAT,
)

# The standard patient's organs, before the seed scales and moves them: centre (x, y) and
# semi-axes (a, b) in mm, HU, level of the centre along the body and cap length (mm),
# rotation (degrees) and how far the seed may move the centre in-plane (mm).
STANDARD_ORGANS = (
    # name, x, y, a, b, value, z centre, cap, angle, jitter
    ("lung_r", -74, 2, 62, 88, LUNG, -30, 160, 0.0, 6.0),
    ("lung_l", 76, 2, 58, 86, LUNG, -30, 150, 0.0, 6.0),
    ("pericardium", 18, -38, 64, 51, VISCERAL_FAT, 25, 80, 30, 6.0),
    ("liver", -55, -8, 78, 70, LIVER, 160, 105, -10, 6.0),
    ("liver_left", 12, -52, 50, 26, LIVER, 125, 60, 15, 6.0),
    ("gallbladder", -42, -48, 13, 19, FLUID, 215, 30, 20, 6.0),
    ("spleen", 76, 42, 27, 46, SPLEEN, 150, 55, -35, 6.0),
    ("stomach", 42, -22, 40, 31, BOWEL_WALL, 150, 55, 20, 6.0),
    ("perirenal_l", 72, 40, 34, 42, VISCERAL_FAT, 220, 65, -25, 4),
    ("perirenal_r", -72, 44, 34, 42, VISCERAL_FAT, 235, 65, 25, 4),
    ("bladder", 0, -40, 42, 36, URINE, 385, 60, 0.0, 6.0),
    ("iliac_l", 82, 40, 42, 13, CORTICAL, 385, 95, -40, 3),
    ("iliac_r", -82, 40, 42, 13, CORTICAL, 385, 95, 40, 3),
    ("psoas_l", 40, 42, 15, 17, MUSCLE, 390, 180, 0, 2),
    ("psoas_r", -40, 42, 15, 17, MUSCLE, 390, 180, 0, 2),
)

N_TEXTURE_WAVES = 24


@dataclass(frozen=True)
class Patient:
    """Everything the seed decides. Cached per seed; scenes are cut from it per slice."""

    scale: float  # overall in-plane size factor
    body_ax: float  # extra lateral / AP factors of the body outline
    body_ay: float
    bx: float  # body centre offset, mm
    by: float
    fat: float  # subcutaneous fat thickness, mm
    dz: float  # shift of all organ levels along z, mm
    rib_phase: float
    disc_phase: float
    organs: dict[str, Blob]
    lung_vessels: tuple[tuple[Blob, str], ...]
    bowel: tuple[tuple[Blob, Blob], ...]  # (wall, lumen)
    # z extents [N, 2] of the many small blobs, to skip those a slice misses in one go.
    vessel_z: np.ndarray = field(repr=False)
    bowel_z: np.ndarray = field(repr=False)
    tex_k: np.ndarray = field(repr=False)  # [K, 3] wave vectors, rad/mm
    tex_phase: np.ndarray = field(repr=False)  # [K]
    tex_w: np.ndarray = field(repr=False)  # [K]


class _Draws:
    """The seed's random generator, with the one kind of draw the patient uses most."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng([seed, 0x9E3779B9])

    def uniform(self, low: float, high: float) -> float:
        return float(self.rng.uniform(low, high))


@lru_cache(maxsize=32)
def patient(seed: int) -> Patient:
    """Draw one patient from the seed. Standard-patient numbers are scaled by it."""
    draws = _Draws(seed)
    scale = draws.uniform(0.9, 1.08)
    organs = _organs(draws, scale)
    vessels = _lung_vessels(draws, organs)
    bowel = _bowel(draws, scale)
    tex_k, tex_w = _texture_waves(draws)
    uniform = draws.uniform
    return Patient(
        scale=scale,
        body_ax=uniform(0.95, 1.05),
        body_ay=uniform(0.95, 1.05),
        bx=uniform(-5, 5),
        by=uniform(-6, 4),
        fat=uniform(8, 28),
        dz=uniform(-15, 15),
        rib_phase=uniform(0, 1),
        disc_phase=uniform(0, 1),
        organs=organs,
        lung_vessels=tuple(vessels),
        bowel=tuple(bowel),
        vessel_z=z_extents([vessel for vessel, _ in vessels]),
        bowel_z=z_extents([wall for wall, _ in bowel]),
        tex_k=tex_k,
        tex_phase=draws.rng.uniform(0, 2 * math.pi, N_TEXTURE_WAVES),
        tex_w=tex_w,
    )


def _organ(
    draws: _Draws,
    scale: float,
    name: str,
    x: float,
    y: float,
    a: float,
    b: float,
    value: float,
    z_centre: float,
    cap: float,
    angle_deg: float,
    jitter: float,
) -> Blob:
    """One standard organ, resized, moved and turned a little for this patient."""
    size = draws.uniform(0.9, 1.1)
    z_centre += draws.uniform(-8, 8)
    x = scale * x + draws.uniform(-jitter, jitter)
    y = scale * y + draws.uniform(-jitter, jitter)
    angle = math.radians(angle_deg + draws.uniform(-8, 8))
    cap_mm = cap * draws.uniform(0.92, 1.08)
    return Blob(
        name, x, y, scale * a * size, scale * b * size, value, z_centre, z_centre, cap_mm, angle
    )


def _organs(draws: _Draws, scale: float) -> dict[str, Blob]:
    """The standard organs, then those that sit inside another: the heart in its
    pericardium, kidneys in their fat, the stomach's lumen and gas cap in its wall, the
    iliac wings' cancellous core."""
    organs = {row[0]: _organ(draws, scale, *row) for row in STANDARD_ORGANS}
    pericardium = organs["pericardium"]
    organs["heart"] = replace(
        pericardium, name="heart", a=pericardium.a - 5, b=pericardium.b - 5, value=BLOOD
    )
    for side in "lr":
        fat = organs[f"perirenal_{side}"]
        organs[f"kidney_{side}"] = replace(
            fat, name=f"kidney_{side}", a=fat.a * 0.72, b=fat.b * 0.8, value=KIDNEY
        )
    stomach = organs["stomach"]
    organs["stomach_lumen"] = replace(
        stomach, name="stomach_lumen", a=stomach.a - 5, b=stomach.b - 5, value=FLUID
    )
    organs["stomach_gas"] = replace(
        stomach,
        name="stomach_gas",
        y=stomach.y - 0.55 * stomach.b,
        a=stomach.a * 0.6,
        b=stomach.b * 0.35,
        value=AIR,
    )
    for side in "lr":
        wing = organs[f"iliac_{side}"]
        organs[f"iliac_core_{side}"] = replace(
            wing, name=f"iliac_core_{side}", a=wing.a - 3, b=wing.b - 3, value=CANCELLOUS
        )
    return organs


def _lung_vessels(draws: _Draws, organs: dict[str, Blob]) -> list[tuple[Blob, str]]:
    """Thin oblique tubes, 50 in the right lung and 50 in the left, so the lungs are not
    flat black; each is paired with the name of the lung that clips it."""
    uniform = draws.uniform
    vessels: list[tuple[Blob, str]] = []
    for side in ("lung_r", "lung_l"):
        lung = organs[side]
        while len(vessels) < (50 if side == "lung_r" else 100):
            off_x, off_y, off_z = draws.rng.uniform(-1, 1, 3)
            if off_x * off_x + off_y * off_y + off_z * off_z > 0.85:
                continue
            radius, z_centre = uniform(1.0, 3.5), lung.z0 + off_z * lung.cap
            vessel = Blob(
                f"{side}_vessel", lung.x + off_x * lung.a, lung.y + off_y * lung.b, radius,
                radius * uniform(1, 1.6), BLOOD, z_centre, z_centre, cap=uniform(15, 45),
                angle=uniform(0, math.pi), vx=uniform(-0.4, 0.4), vy=uniform(-0.4, 0.4),
            )  # fmt: skip
            vessels.append((vessel, side))
    return vessels


def _bowel(draws: _Draws, scale: float) -> list[tuple[Blob, Blob]]:
    """Colon along both flanks plus random small-bowel loops, each a (wall, lumen) pair whose
    lumen holds fluid, faeces or gas."""
    uniform = draws.uniform
    bowel = []
    for flank in (-1.0, 1.0):
        wall = Blob(
            "colon", scale * 100 * flank + uniform(-8, 8), scale * 5 + uniform(-8, 8),
            20 * scale, 22 * scale, BOWEL_WALL, z0=uniform(200, 230), z1=400, cap=20,
            vx=uniform(-0.15, 0.15), vy=uniform(-0.1, 0.1),
        )  # fmt: skip
        content = AIR if flank > 0 else FECES
        bowel.append((wall, replace(wall, a=wall.a - 4, b=wall.b - 4, value=content)))
    for _ in range(120):
        radius, z_centre = uniform(9, 18) * scale, uniform(200, 400)
        wall = Blob(
            "bowel", scale * uniform(-95, 95), scale * uniform(-85, 30), radius,
            radius * uniform(0.7, 1.0), BOWEL_WALL, z_centre, z_centre, cap=uniform(18, 45),
            angle=uniform(0, math.pi), vx=uniform(-0.6, 0.6), vy=uniform(-0.6, 0.6),
        )  # fmt: skip
        content = float(draws.rng.choice([FLUID, FLUID, AIR, FECES]))
        bowel.append((wall, replace(wall, a=wall.a - 3, b=wall.b - 3, value=content)))
    return bowel


def _texture_waves(draws: _Draws) -> tuple[np.ndarray, np.ndarray]:
    """(wave vectors [K, 3] in rad/mm, weights [K]) of a few random 3D plane waves,
    wavelengths 20-80 mm, whose sum has unit variance. Their phases are drawn last."""
    directions = draws.rng.normal(size=(N_TEXTURE_WAVES, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavelengths = np.exp(draws.rng.uniform(math.log(20.0), math.log(80.0), N_TEXTURE_WAVES))
    wave_vectors = directions * (2 * math.pi / wavelengths)[:, None]
    weights = np.full(N_TEXTURE_WAVES, math.sqrt(2.0 / N_TEXTURE_WAVES))
    return wave_vectors, weights
