"""Low-contrast lesions: placed once per seed in anatomical coordinates, cut per slice.

Each lesion is a short rod with rounded ends inside a homogeneous host organ, with a ring
of host tissue around it that nothing else enters, so the contrast a test measures is the
contrast the phantom states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from manas_infer.data.phantom.anatomy import scene
from manas_infer.data.phantom.geometry import BODY_LENGTH_MM
from manas_infer.data.phantom.patient import Patient, patient
from manas_infer.data.phantom.shapes import Shape, coverage

# Host tissue and how many lesions each gets. Hosts are homogeneous regions big enough to
# hold a lesion with a ring of the same tissue around it.
LESION_HOSTS = (
    ("liver", 18),
    ("spleen", 4),
    ("kidney_l", 2),
    ("kidney_r", 2),
    ("heart", 3),
    ("psoas_l", 1),
    ("psoas_r", 1),
    ("paraspinal_l", 1),
    ("paraspinal_r", 1),
)
# Placement tries per lesion before the host gets one fewer.
_TRIES = 40


@dataclass(frozen=True)
class Lesion:
    """A low-contrast lesion as it appears in one slice: a disc added to its background.

    ``contrast_hu`` is the HU added on top of the host tissue. The ring from
    ``radius_mm + 1`` to ``radius_mm + max(radius_mm, 3)`` mm around the centre is kept
    free of anything but the host, so the mean inside minus the mean of that ring is
    ``contrast_hu``, to about 1.5 HU with the faint texture and exactly without it.
    """

    row: float  # centre, in pixels (fractional)
    col: float
    radius_px: float  # radius of the disc in this slice
    contrast_hu: float
    radius_mm: float
    organ: str  # host tissue, e.g. "liver"


@dataclass(frozen=True)
class Lesion3D:
    """A lesion in anatomical coordinates: a capsule along z with hemispherical ends."""

    organ: str
    x: float
    y: float
    radius: float
    z0: float  # anatomical z (mm) where the constant-radius part starts and ends
    z1: float
    contrast: float

    def radius_at(self, zz: float) -> float:
        """Radius of the disc the slice at anatomical level zz cuts, mm (0: not cut)."""
        past_end = max(self.z0 - zz, zz - self.z1, 0.0)
        return math.sqrt(max(self.radius**2 - past_end * past_end, 0.0))


def _clearance(radius: float) -> float:
    """Radius around a lesion centre (mm) kept free of anything but its host tissue, so a
    measuring ring from r + 1 mm to r + max(r, 3 mm) sees only background."""
    return radius + max(radius, 3.0) + 2.0


class _Scenes:
    """Slice scenes at integer anatomical levels, memoised while one seed's lesions are
    placed (candidates revisit the same levels) and dropped afterwards."""

    def __init__(self, pat: Patient) -> None:
        self.pat = pat
        self.cache: dict[int, list[Shape]] = {}

    def at(self, zz: float) -> list[Shape]:
        key = round(zz)
        if key not in self.cache:
            self.cache[key] = scene(self.pat, key - self.pat.dz)
        return self.cache[key]


def _owned(shapes: list[Shape], host: str, x: float, y: float, radius: float) -> bool:
    """True when a disc of ``radius`` mm at (x, y) shows only the host in the final image."""
    index = next((i for i, shape in enumerate(shapes) if shape.name == host), None)
    if index is None:
        return False
    angles = np.linspace(0.0, 2 * math.pi, 24, endpoint=False)
    radii = np.array([0.0, 0.25, 0.5, 0.75, 1.0]) * radius
    xs = (x + radii[:, None] * np.cos(angles)[None, :]).astype(np.float32).ravel()
    ys = (y + radii[:, None] * np.sin(angles)[None, :]).astype(np.float32).ravel()
    if not np.all(coverage(shapes[index], xs, ys, 1e-3) >= 1.0):
        return False
    for shape in shapes[index + 1 :]:
        hx, hy = shape.half_extent()
        if abs(shape.cx - x) > hx + radius or abs(shape.cy - y) > hy + radius:
            continue
        if np.any(coverage(shape, xs, ys, 1e-3) > 0.0):
            return False
    return True


def _host_z_range(pat: Patient, host: str) -> tuple[float, float]:
    """Anatomical z range (mm) over which a host exists inside the imaged body length."""
    lo, hi = pat.dz, BODY_LENGTH_MM + pat.dz
    blob = pat.organs.get(host)
    if blob is not None:
        lo, hi = max(lo, blob.z0 - blob.cap), min(hi, blob.z1 + blob.cap)
    return lo, hi


def _host_section(scenes: _Scenes, host: str, zz: float) -> Shape | None:
    """The host's shape in the slice at anatomical level zz, if the slice cuts it."""
    return next((shape for shape in scenes.at(zz) if shape.name == host), None)


def _point_in(rng: np.random.Generator, section: Shape, clear: float) -> tuple[float, float]:
    """A uniform point in the host's section shrunk by the clearance."""
    rad = math.sqrt(float(rng.uniform()))
    theta = float(rng.uniform(0, 2 * math.pi))
    u = rad * (section.a - clear) * math.cos(theta)
    v = rad * (section.b - clear) * math.sin(theta)
    cos_a, sin_a = math.cos(section.angle), math.sin(section.angle)
    return section.cx + cos_a * u - sin_a * v, section.cy + sin_a * u + cos_a * v


def _collides(candidate: Lesion3D, placed: list[Lesion3D]) -> bool:
    """True when the candidate's clearance meets a placed lesion's at a shared level."""
    radius, clear = candidate.radius, _clearance(candidate.radius)
    return any(
        math.hypot(other.x - candidate.x, other.y - candidate.y) < clear + _clearance(other.radius)
        and candidate.z0 - radius - 4.0 < other.z1 + other.radius
        and other.z0 - other.radius - 4.0 < candidate.z1 + radius
        for other in placed
    )


def _try_place(
    rng: np.random.Generator,
    scenes: _Scenes,
    host: str,
    z_range: tuple[float, float],
    band: tuple[int, int],
    placed: list[Lesion3D],
) -> Lesion3D | None:
    """One draw of a lesion (contrast still 0) whose middle lies in the ``band = (i, count)``
    i-th of ``count`` equal bands of the host along z; None when it does not fit."""
    radius = float(rng.uniform(2.5, 6.0))
    length = float(rng.uniform(6.0, 24.0))
    lo = z_range[0] + radius + 3.0 + length / 2
    hi = z_range[1] - radius - 3.0 - length / 2
    if hi <= lo:
        return None
    index, count = band
    middle = lo + (hi - lo) * (index + float(rng.uniform())) / count
    section = _host_section(scenes, host, middle)
    clear = _clearance(radius)
    if section is None or min(section.a, section.b) <= clear:
        return None
    x, y = _point_in(rng, section, clear)
    z0, z1 = middle - length / 2, middle + length / 2
    candidate = Lesion3D(host, x, y, radius, z0, z1, 0.0)
    if _collides(candidate, placed):
        return None
    levels = np.unique(np.round(np.linspace(z0 - radius, z1 + radius, 2 + int(length // 3))))
    if all(_owned(scenes.at(zz), host, x, y, clear) for zz in levels):
        return candidate
    return None


@lru_cache(maxsize=32)
def _lesions3d(seed: int) -> tuple[Lesion3D, ...]:
    """Place the seed's lesions by rejection sampling: each sits inside its host with its
    clearance disc free of other tissue and of other lesions at every level it spans.
    A host's lesions are stratified along z, so every slice through it tends to have some."""
    pat = patient(seed)
    rng = np.random.default_rng([seed, 0x51ED])
    scenes = _Scenes(pat)
    placed: list[Lesion3D] = []
    for host, count in LESION_HOSTS:
        z_range = _host_z_range(pat, host)
        for index in range(count):
            for _ in range(_TRIES):
                found = _try_place(rng, scenes, host, z_range, (index, count), placed)
                if found is not None:
                    placed.append(replace(found, contrast=float(rng.integers(5, 21))))
                    break
    return tuple(placed)


def lesion_discs(seed: int, z_mm: float) -> list[tuple[Lesion3D, Shape]]:
    """The lesions cut by the slice at z_mm, as additive discs."""
    pat = patient(seed)
    zz = z_mm + pat.dz
    out = []
    for lesion in _lesions3d(seed):
        radius = lesion.radius_at(zz)
        if radius > 0.0:
            disc = Shape(
                lesion.x, lesion.y, radius, radius, lesion.contrast, name="lesion", add=True
            )
            out.append((lesion, disc))
    return out
