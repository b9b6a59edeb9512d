"""A synthetic, roughly anthropomorphic CT phantom in Hounsfield units.

Why it exists: tests, examples and the offline demo must run with no patient data at all,
yet exercise the code on images that look like CT (air, fat, soft tissue, organs, lung,
bone, bowel gas) and carry small low-contrast lesions whose positions are known, so that
denoising can be judged on the details radiologists care about.

What it is not: a physical model. There are no projections, no beam hardening, scatter,
photon starvation, metal or noise; the only partial-volume effect is a one-pixel edge
ramp for anti-aliasing. Tissues are textbook HU values, homogeneous apart from a faint
texture, and organs are ellipsoids. Claims about image quality need real data.

Geometry. Every shape is defined in millimetres, so the anatomy does not depend on the
matrix size: ``x`` runs to the image right (patient left), ``y`` down the image
(posterior), origin at the centre of a square field of view ``fov_mm`` wide. Pixel
``(row, col)`` has its centre at ``x = (col + 0.5) * spacing - fov_mm / 2`` (same for
``y`` and rows). ``z`` in [0, 1] runs along the body over ``BODY_LENGTH_MM``, from the
mid-thorax (``z = 0``, lungs and heart) through the upper abdomen (liver, spleen,
stomach, kidneys) to the pelvis (``z = 1``, iliac wings, bladder). Organs are 3D
ellipsoids or capsules, so consecutive ``z`` give a smooth series. The ``seed`` draws a
patient: body size and shape, fat thickness, organ positions and sizes, bowel loops,
lung vessels and the lesions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

#: Length of body that z in [0, 1] spans, in mm (mid-thorax to pelvis).
BODY_LENGTH_MM = 360.0

# Tissue values in HU. Typical unenhanced adult values, not measurements of anyone.
AIR = -1000.0
LUNG = -850.0
FAT = -100.0  # subcutaneous
VISCERAL_FAT = -90.0  # mesenteric, perirenal, pericardial
FECES = -150.0  # bowel content mixed with gas
MUSCLE = 50.0
BLOOD = 40.0  # heart, aorta, IVC without contrast
LIVER = 60.0
SPLEEN = 45.0
KIDNEY = 32.0
BOWEL_WALL = 35.0
FLUID = 10.0  # bowel fluid, bile
URINE = 8.0
CANAL = 25.0  # spinal canal: cord and CSF
DISC = 90.0  # intervertebral disc
CANCELLOUS = 250.0
CORTICAL = 1100.0
RIB_CORTEX = 1000.0
ARCH_BONE = 900.0  # posterior vertebral elements, a cortical/cancellous mix
TABLE_SHELL = 200.0
TABLE_CORE = -850.0

# Texture amplitude (HU, standard deviation) as a function of the local HU value: soft
# tissue and fat get 1.5 HU, lung parenchyma 20, air and bone none, so that outside
# air stays exactly -1000 and lesion contrast is barely disturbed.
_TEX_HU = (-1000.0, -980.0, -850.0, -700.0, -160.0, -100.0, -40.0, 0.0, 150.0, 220.0)
_TEX_AMP = (0.0, 0.0, 20.0, 0.0, 0.0, 1.5, 0.0, 1.5, 1.5, 0.0)


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
class _Shape:
    """A 2D (super)ellipse in mm: painted over the image, or added to it (``add``)."""

    cx: float
    cy: float
    a: float  # semi-axis along the rotated x
    b: float
    value: float
    angle: float = 0.0  # radians, rotation of the a-axis from +x toward +y
    p: float = 2.0  # superellipse exponent; 2 is an ellipse
    name: str = ""
    clip: _Shape | None = None  # coverage is multiplied by the clip shape's coverage
    add: bool = False

    def half_extent(self) -> tuple[float, float]:
        """Half width and half height of the bounding box, in mm."""
        if self.angle == 0.0:
            return self.a, self.b
        if self.p != 2.0:
            r = math.hypot(self.a, self.b)
            return r, r
        c, s = math.cos(self.angle), math.sin(self.angle)
        return math.hypot(self.a * c, self.b * s), math.hypot(self.a * s, self.b * c)


@dataclass(frozen=True)
class _Blob:
    """A 3D body: an ellipse section that is constant over [z0, z1] with ellipsoidal caps
    of length ``cap`` at both ends (z0 == z1 gives an ellipsoid), drifting in-plane by
    (vx, vy) mm per mm of z around the middle. Slicing it gives a ``_Shape``."""

    name: str
    x: float
    y: float
    a: float
    b: float
    value: float
    z0: float
    z1: float
    cap: float
    angle: float = 0.0
    vx: float = 0.0
    vy: float = 0.0

    def scale_at(self, z: float) -> float:
        """Section scale in [0, 1] at z (mm); 0 means the slice misses the body."""
        if self.z0 <= z <= self.z1:
            return 1.0
        d = (self.z0 - z) if z < self.z0 else (z - self.z1)
        if self.cap <= 0.0 or d >= self.cap:
            return 0.0
        return math.sqrt(1.0 - (d / self.cap) ** 2)

    def section(self, z: float, clip: _Shape | None = None) -> _Shape | None:
        """The cross-section at z (mm), or None when it is empty or negligibly small."""
        k = self.scale_at(z)
        if k * min(self.a, self.b) < 0.05:
            return None
        dz = z - 0.5 * (self.z0 + self.z1)
        return _Shape(
            self.x + self.vx * dz,
            self.y + self.vy * dz,
            self.a * k,
            self.b * k,
            self.value,
            self.angle,
            name=self.name,
            clip=clip,
        )


@dataclass(frozen=True)
class _Patient:
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
    organs: dict[str, _Blob]
    lung_vessels: tuple[tuple[_Blob, str], ...]
    bowel: tuple[tuple[_Blob, _Blob], ...]  # (wall, lumen)
    # z extents [N, 2] of the many small blobs, to skip those a slice misses in one go.
    vessel_z: np.ndarray = field(repr=False)
    bowel_z: np.ndarray = field(repr=False)
    tex_k: np.ndarray = field(repr=False)  # [K, 3] wave vectors, rad/mm
    tex_phase: np.ndarray = field(repr=False)  # [K]
    tex_w: np.ndarray = field(repr=False)  # [K]


def pixel_spacing_mm(size: int = 512, fov_mm: float = 400.0) -> float:
    """In-plane pixel spacing, mm: the field of view is square and spans ``size`` pixels."""
    return float(fov_mm) / int(size)


def slice_positions(n_slices: int, z_start: float = 0.0, z_stop: float = 1.0) -> np.ndarray:
    """The z values (in [0, 1]) of the slices of ``phantom_volume``, evenly spaced."""
    return np.linspace(z_start, z_stop, int(n_slices))


def slice_spacing_mm(n_slices: int, z_start: float = 0.0, z_stop: float = 1.0) -> float:
    """Distance between consecutive slices of ``phantom_volume``, mm (for DICOM headers)."""
    if n_slices < 2:
        return abs(z_stop - z_start) * BODY_LENGTH_MM or 1.0
    return abs(z_stop - z_start) * BODY_LENGTH_MM / (n_slices - 1)


# --------------------------------------------------------------------------------------
# Rasterisation


def _signed_distance(sh: _Shape, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Approximate signed distance (mm, negative inside) to the shape's boundary.

    First order, (f - 1) / |grad f| for the implicit function f = 1 on the boundary: exact
    on the boundary, which is all a one-pixel edge ramp needs.
    """
    ddx = x - np.float32(sh.cx)
    ddy = y - np.float32(sh.cy)
    if sh.angle != 0.0:
        c, s = np.float32(math.cos(sh.angle)), np.float32(math.sin(sh.angle))
        ddx, ddy = c * ddx + s * ddy, c * ddy - s * ddx
    u = ddx * np.float32(1.0 / sh.a)
    v = ddy * np.float32(1.0 / sh.b)
    if sh.p == 2.0:
        r2 = u * u + v * v
        f = np.sqrt(r2)
        den = (u * u) * np.float32(1.0 / sh.a**2) + (v * v) * np.float32(1.0 / sh.b**2)
        tiny = np.float32(1e-12)
        # f / |grad f| lies between the semi-axes; at the centre take the smaller one.
        ratio = np.sqrt((r2 + tiny) / (den + tiny / np.float32(min(sh.a, sh.b) ** 2)))
        return (f - 1.0) * ratio
    p = sh.p
    au, av = np.abs(u), np.abs(v)
    f = np.maximum((au**p + av**p) ** (1.0 / p), np.float32(1e-6))
    gu = (au / f) ** (p - 1.0) / sh.a
    gv = (av / f) ** (p - 1.0) / sh.b
    return (f - 1.0) / np.sqrt(gu * gu + gv * gv)


def _coverage(sh: _Shape, x: np.ndarray, y: np.ndarray, spacing: float) -> np.ndarray:
    """Fraction of a pixel of side ``spacing`` covered by the shape (a linear edge ramp)."""
    cov = np.clip(0.5 - _signed_distance(sh, x, y) / np.float32(spacing), 0.0, 1.0)
    if sh.clip is not None:
        cov = cov * _coverage(sh.clip, x, y, spacing)
    return cov


def _render(shapes: list[_Shape], size: int, fov_mm: float) -> np.ndarray:
    """Paint shapes in order onto an air background; each touches only its bounding box."""
    spacing = pixel_spacing_mm(size, fov_mm)
    img = np.full((size, size), AIR, dtype=np.float32)
    coords = ((np.arange(size, dtype=np.float64) + 0.5) * spacing - fov_mm / 2).astype(np.float32)
    half = fov_mm / 2
    for sh in shapes:
        hx, hy = sh.half_extent()
        c0 = max(0, math.floor((sh.cx - hx + half) / spacing - 1.0))
        c1 = min(size, math.ceil((sh.cx + hx + half) / spacing + 1.0))
        r0 = max(0, math.floor((sh.cy - hy + half) / spacing - 1.0))
        r1 = min(size, math.ceil((sh.cy + hy + half) / spacing + 1.0))
        if c0 >= c1 or r0 >= r1:
            continue
        cov = _coverage(sh, coords[None, c0:c1], coords[r0:r1, None], spacing)
        view = img[r0:r1, c0:c1]
        if sh.add:
            view += np.float32(sh.value) * cov
        else:
            view += cov * (np.float32(sh.value) - view)
    return img


# --------------------------------------------------------------------------------------
# The patient


def _smooth_interp(z: float, zs: tuple[float, ...], vs: tuple[float, ...]) -> float:
    """Interpolate with smoothstep between knots, so body dimensions have no kinks in z."""
    if z <= zs[0]:
        return vs[0]
    for i in range(len(zs) - 1):
        if z <= zs[i + 1]:
            t = (z - zs[i]) / (zs[i + 1] - zs[i])
            t = t * t * (3.0 - 2.0 * t)
            return vs[i] + (vs[i + 1] - vs[i]) * t
    return vs[-1]


def _z_extents(blobs: list[_Blob]) -> np.ndarray:
    """[N, 2] array of the z ranges the blobs occupy."""
    return np.array([(b.z0 - b.cap, b.z1 + b.cap) for b in blobs], dtype=np.float64)


def _cut(extents: np.ndarray, zz: float) -> np.ndarray:
    """Indices of the blobs whose z range contains zz."""
    return np.flatnonzero((extents[:, 0] < zz) & (zz < extents[:, 1]))


@lru_cache(maxsize=32)
def _patient(seed: int) -> _Patient:
    """Draw one patient from the seed. Standard-patient numbers below are scaled by it."""
    rng = np.random.default_rng([seed, 0x9E3779B9])
    s = float(rng.uniform(0.9, 1.08))

    def u(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    def organ(
        name: str,
        x: float,
        y: float,
        a: float,
        b: float,
        value: float,
        zc: float,
        c: float,
        angle_deg: float = 0.0,
        jitter: float = 6.0,
    ) -> _Blob:
        k = u(0.9, 1.1)
        zc += u(-8, 8)
        x, y = s * x + u(-jitter, jitter), s * y + u(-jitter, jitter)
        angle = math.radians(angle_deg + u(-8, 8))
        return _Blob(name, x, y, s * a * k, s * b * k, value, zc, zc, c * u(0.92, 1.08), angle)

    organs = {
        "lung_r": organ("lung_r", -74, 2, 62, 88, LUNG, -30, 160),
        "lung_l": organ("lung_l", 76, 2, 58, 86, LUNG, -30, 150),
        "pericardium": organ("pericardium", 18, -38, 64, 51, VISCERAL_FAT, 25, 80, 30),
        "liver": organ("liver", -55, -8, 78, 70, LIVER, 160, 105, -10),
        "liver_left": organ("liver_left", 12, -52, 50, 26, LIVER, 125, 60, 15),
        "gallbladder": organ("gallbladder", -42, -48, 13, 19, FLUID, 215, 30, 20),
        "spleen": organ("spleen", 76, 42, 27, 46, SPLEEN, 150, 55, -35),
        "stomach": organ("stomach", 42, -22, 40, 31, BOWEL_WALL, 150, 55, 20),
        "perirenal_l": organ("perirenal_l", 72, 40, 34, 42, VISCERAL_FAT, 220, 65, -25, 4),
        "perirenal_r": organ("perirenal_r", -72, 44, 34, 42, VISCERAL_FAT, 235, 65, 25, 4),
        "bladder": organ("bladder", 0, -40, 42, 36, URINE, 385, 60),
        "iliac_l": organ("iliac_l", 82, 40, 42, 13, CORTICAL, 385, 95, -40, 3),
        "iliac_r": organ("iliac_r", -82, 40, 42, 13, CORTICAL, 385, 95, 40, 3),
        "psoas_l": organ("psoas_l", 40, 42, 15, 17, MUSCLE, 390, 180, 0, 2),
        "psoas_r": organ("psoas_r", -40, 42, 15, 17, MUSCLE, 390, 180, 0, 2),
    }
    organs["heart"] = replace(
        organs["pericardium"],
        name="heart",
        a=organs["pericardium"].a - 5,
        b=organs["pericardium"].b - 5,
        value=BLOOD,
    )
    # Kidneys sit in their fat; the stomach's lumen and gas cap are inside its wall.
    for side in "lr":
        fat = organs[f"perirenal_{side}"]
        organs[f"kidney_{side}"] = replace(
            fat, name=f"kidney_{side}", a=fat.a * 0.72, b=fat.b * 0.8, value=KIDNEY
        )
    st = organs["stomach"]
    organs["stomach_lumen"] = replace(st, name="stomach_lumen", a=st.a - 5, b=st.b - 5, value=FLUID)
    organs["stomach_gas"] = replace(
        st, name="stomach_gas", y=st.y - 0.55 * st.b, a=st.a * 0.6, b=st.b * 0.35, value=AIR
    )
    for side in "lr":
        il = organs[f"iliac_{side}"]
        organs[f"iliac_core_{side}"] = replace(
            il, name=f"iliac_core_{side}", a=il.a - 3, b=il.b - 3, value=CANCELLOUS
        )

    # Lung vessels: thin oblique tubes, so the lungs are not flat black.
    vessels = []
    for side in ("lung_r", "lung_l"):
        lung = organs[side]
        while len(vessels) < (50 if side == "lung_r" else 100):
            px, py, pz = rng.uniform(-1, 1, 3)
            if px * px + py * py + pz * pz > 0.85:
                continue
            r, zc = u(1.0, 3.5), lung.z0 + pz * lung.cap
            vessel = _Blob(
                f"{side}_vessel", lung.x + px * lung.a, lung.y + py * lung.b, r, r * u(1, 1.6),
                BLOOD, zc, zc, cap=u(15, 45), angle=u(0, math.pi), vx=u(-0.4, 0.4),
                vy=u(-0.4, 0.4),
            )  # fmt: skip
            vessels.append((vessel, side))

    # Bowel: colon along both flanks plus random small-bowel loops, each a wall and a lumen
    # holding fluid, faeces or gas.
    bowel = []
    for x in (-1.0, 1.0):
        wall = _Blob(
            "colon", s * 100 * x + u(-8, 8), s * 5 + u(-8, 8), 20 * s, 22 * s, BOWEL_WALL,
            z0=u(200, 230), z1=400, cap=20, vx=u(-0.15, 0.15), vy=u(-0.1, 0.1),
        )  # fmt: skip
        lumen = replace(wall, a=wall.a - 4, b=wall.b - 4, value=AIR if x > 0 else FECES)
        bowel.append((wall, lumen))
    for _ in range(120):
        r, zc = u(9, 18) * s, u(200, 400)
        wall = _Blob(
            "bowel", s * u(-95, 95), s * u(-85, 30), r, r * u(0.7, 1.0), BOWEL_WALL, zc, zc,
            cap=u(18, 45), angle=u(0, math.pi), vx=u(-0.6, 0.6), vy=u(-0.6, 0.6),
        )  # fmt: skip
        content = float(rng.choice([FLUID, FLUID, AIR, FECES]))
        lumen = replace(wall, a=wall.a - 3, b=wall.b - 3, value=content)
        bowel.append((wall, lumen))

    # Texture: a few random 3D plane waves, wavelengths 20-80 mm, unit variance.
    n_waves = 24
    d = rng.normal(size=(n_waves, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    lam = np.exp(rng.uniform(math.log(20.0), math.log(80.0), n_waves))
    tex_k = d * (2 * math.pi / lam)[:, None]
    tex_w = np.full(n_waves, math.sqrt(2.0 / n_waves))

    return _Patient(
        scale=s,
        body_ax=u(0.95, 1.05),
        body_ay=u(0.95, 1.05),
        bx=u(-5, 5),
        by=u(-6, 4),
        fat=u(8, 28),
        dz=u(-15, 15),
        rib_phase=u(0, 1),
        disc_phase=u(0, 1),
        organs=organs,
        lung_vessels=tuple(vessels),
        bowel=tuple(bowel),
        vessel_z=_z_extents([v for v, _ in vessels]),
        bowel_z=_z_extents([w for w, _ in bowel]),
        tex_k=tex_k,
        tex_phase=rng.uniform(0, 2 * math.pi, n_waves),
        tex_w=tex_w,
    )


def _scene(pat: _Patient, z_mm: float, table: bool = False) -> list[_Shape]:
    """The shapes of the slice z_mm (mm along the imaged length), in painting order."""
    s = pat.scale
    zz = z_mm + pat.dz
    org = pat.organs
    shapes: list[_Shape] = []

    def add(blob_name: str, clip: _Shape | None = None) -> _Shape | None:
        sh = org[blob_name].section(zz, clip)
        if sh is not None:
            shapes.append(sh)
        return sh

    # Body wall: subcutaneous fat, the muscle layer, the visceral cavity.
    zr = zz / BODY_LENGTH_MM
    a = s * pat.body_ax * _smooth_interp(zr, (0.0, 0.35, 0.6, 1.0), (165, 158, 150, 168))
    b = s * pat.body_ay * _smooth_interp(zr, (0.0, 0.35, 0.6, 1.0), (112, 112, 106, 110))
    f = pat.fat
    wall = 14.0 * s
    body = _Shape(pat.bx, pat.by, a, b, FAT, name="body")
    muscle = _Shape(pat.bx, pat.by + 0.2 * f, a - f, b - 0.8 * f, MUSCLE, name="muscle")
    cavity = _Shape(
        pat.bx, muscle.cy - 0.2 * wall, muscle.a - wall, muscle.b - 0.8 * wall, VISCERAL_FAT
    )
    if table:
        top = pat.by + b + 1.0
        shapes.append(_Shape(0.0, top + 9.0, 230.0, 9.0, TABLE_SHELL, p=6.0, name="table"))
        shapes.append(_Shape(0.0, top + 9.0, 226.0, 6.5, TABLE_CORE, p=6.0, name="table"))
    shapes += [body, muscle, cavity]

    # Bowel first, so that solid organs painted later push it aside.
    for i in _cut(pat.bowel_z, zz):
        wall_b, lumen_b = pat.bowel[i]
        w = wall_b.section(zz, clip=cavity)
        if w is not None:
            shapes.append(w)
            lu = lumen_b.section(zz, clip=cavity)
            if lu is not None:
                shapes.append(lu)

    # Thorax.
    lungs = {side: add(side, clip=cavity) for side in ("lung_r", "lung_l")}
    for i in _cut(pat.vessel_z, zz):
        vessel, side = pat.lung_vessels[i]
        lung = lungs[side]
        if lung is not None:
            v = vessel.section(zz, clip=lung)
            if v is not None:
                shapes.append(v)
    add("pericardium", clip=cavity)
    add("heart", clip=cavity)

    # Upper abdomen and pelvis.
    for name in ("liver", "liver_left", "gallbladder", "spleen", "stomach"):
        add(name, clip=cavity)
    stomach_lumen = add("stomach_lumen", clip=cavity)
    if stomach_lumen is not None:
        add("stomach_gas", clip=stomach_lumen)
    for name in ("perirenal_l", "perirenal_r", "kidney_l", "kidney_r", "bladder"):
        add(name, clip=cavity)

    # Great vessels and oesophagus, relative to the spine.
    # Vessels taper in and out over 20 mm so that the series stays smooth.
    spine_y = pat.by + 45.0 * s
    x0 = pat.bx

    def tube(x: float, y: float, a: float, b: float, value: float, k: float) -> None:
        k = min(1.0, k)
        if k * min(a, b) > 0.05:
            shapes.append(_Shape(x, y, a * k, b * k, value))

    tube(x0 + 14 * s, spine_y - 28 * s, 11.5 * s, 11.5 * s, BLOOD, (330 - zz) / 20)  # aorta
    spread = 14 + 0.25 * max(0.0, zz - 330)  # the iliac arteries diverge below the bifurcation
    for side in (-1.0, 1.0):
        tube(x0 + side * spread * s, spine_y - 26 * s, 7 * s, 7 * s, BLOOD, (zz - 300) / 20)
    tube(x0 - 22 * s, spine_y - 28 * s, 11 * s, 9 * s, BLOOD, (zz - 60) / 20)  # IVC
    tube(x0 - 2 * s, spine_y - 32 * s, 7 * s, 6 * s, BOWEL_WALL, (130 - zz) / 20)  # oesophagus
    tube(x0 - 2 * s, spine_y - 32 * s, 2 * s, 1.5 * s, AIR, (130 - zz) / 20)

    # Back muscles, then the spine on top of them.
    for side, name in ((-1.0, "paraspinal_r"), (1.0, "paraspinal_l")):
        shapes.append(
            _Shape(
                pat.bx + side * 33 * s,
                spine_y + 40 * s,
                25 * s,
                21 * s,
                MUSCLE + 5.0,
                name=name,
                clip=muscle,
            )
        )
    add("psoas_l")
    add("psoas_r")
    shapes += _spine(pat, zz, spine_y)
    shapes += _ribs(pat, zz, muscle, wall)
    for side in "lr":
        add(f"iliac_{side}")
        add(f"iliac_core_{side}")
    return shapes


def _spine(pat: _Patient, zz: float, y0: float) -> list[_Shape]:
    """A vertebra: posterior arch around the canal, spinous and transverse processes and a
    body of cortical shell and cancellous core that gives way to a disc periodically."""
    s, x0 = pat.scale, pat.bx
    zr = zz / BODY_LENGTH_MM
    lumbar = _smooth_interp(zr, (0.3, 0.7), (0.0, 1.0))
    period = 28.0 + 6.0 * lumbar
    phase = (zz / period + pat.disc_phase) % 1.0
    d = min(phase, 1.0 - phase) * period  # distance to the nearest disc centre, mm
    disc = 0.5 * (1.0 - math.tanh((d - 3.5) / 1.0))
    cortex = CORTICAL + (DISC - CORTICAL) * disc
    core = CANCELLOUS + (DISC - CANCELLOUS) * disc
    va, vb = (16 + 5 * lumbar) * s, (14 + 3 * lumbar) * s
    canal_y = y0 + vb + 9.0 * s
    shapes = [
        _Shape(x0, canal_y, 17 * s, 14 * s, ARCH_BONE, name="arch"),
        _Shape(x0, canal_y + 20 * s, 4.5 * s, 13 * s, ARCH_BONE, name="spinous"),
        _Shape(x0 - 24 * s, canal_y, 13 * s, 4.5 * s, ARCH_BONE, math.radians(-15), name="tp"),
        _Shape(x0 + 24 * s, canal_y, 13 * s, 4.5 * s, ARCH_BONE, math.radians(15), name="tp"),
        _Shape(x0, canal_y, 9 * s, 8.5 * s, CANAL, name="canal"),
        _Shape(x0, y0, va, vb, cortex, name="vertebra"),
        _Shape(x0, y0, va - 2.5, vb - 2.5, core, name="vertebra_core"),
    ]
    return shapes


def _ribs(pat: _Patient, zz: float, muscle: _Shape, wall: float) -> list[_Shape]:
    """Rib sections sliding along the chest wall with z, fading out below the costal
    margin; plus the sternum."""
    shapes: list[_Shape] = []
    s = pat.scale
    ra, rb = muscle.a - 0.5 * wall, muscle.b - 0.5 * wall
    lo, hi = 0.45, 2.65  # angle from posterior, radians
    n = 7
    shift = zz / (26.0 * s) + pat.rib_phase
    for i in range(n):
        t = ((i + shift) % n) / n  # 0 at the back, 1 at the front
        phi = lo + t * (hi - lo)
        end = 215.0 - 55.0 * t  # anterior ribs stop higher: the costal margin
        fade = min(1.0, max(0.0, (end - zz) / 25.0)) * math.sqrt(math.sin(math.pi * t))
        if fade < 0.05:
            continue
        for side in (-1.0, 1.0):
            x = muscle.cx + side * ra * math.sin(phi)
            y = muscle.cy + rb * math.cos(phi)
            ang = math.atan2(-rb * math.sin(phi), side * ra * math.cos(phi))
            ra_, rb_ = 7.0 * s * fade, 4.5 * s * fade
            shapes.append(_Shape(x, y, ra_, rb_, RIB_CORTEX, ang, name="rib"))
            if rb_ > 2.5:
                shapes.append(_Shape(x, y, ra_ - 1.8, rb_ - 1.8, CANCELLOUS, ang, name="rib"))
    if zz < 130:
        fade = min(1.0, (130 - zz) / 20.0)
        y = muscle.cy - muscle.b + 0.5 * wall
        shapes.append(_Shape(muscle.cx, y, 14 * s * fade, 5.5 * s * fade, RIB_CORTEX))
        if fade > 0.6:
            shapes.append(_Shape(muscle.cx, y, 14 * s * fade - 2, 5.5 * s * fade - 2, CANCELLOUS))
    return shapes


# --------------------------------------------------------------------------------------
# Lesions


@dataclass(frozen=True)
class _Lesion3D:
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
        d = max(self.z0 - zz, zz - self.z1, 0.0)
        return math.sqrt(max(self.radius**2 - d * d, 0.0))


# Host tissue and how many lesions each gets. Hosts are homogeneous regions big enough to
# hold a lesion with a ring of the same tissue around it.
_LESION_HOSTS = (
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


def _clearance(radius: float) -> float:
    """Radius around a lesion centre (mm) kept free of anything but its host tissue, so a
    measuring ring from r + 1 mm to r + max(r, 3 mm) sees only background."""
    return radius + max(radius, 3.0) + 2.0


class _Scenes:
    """Slice scenes at integer anatomical levels, memoised while one seed's lesions are
    placed (candidates revisit the same levels) and dropped afterwards."""

    def __init__(self, pat: _Patient) -> None:
        self.pat = pat
        self.cache: dict[int, list[_Shape]] = {}

    def at(self, zz: float) -> list[_Shape]:
        key = round(zz)
        if key not in self.cache:
            self.cache[key] = _scene(self.pat, key - self.pat.dz)
        return self.cache[key]


def _owned(scene: list[_Shape], host: str, x: float, y: float, radius: float) -> bool:
    """True when a disc of ``radius`` mm at (x, y) shows only the host in the final image."""
    idx = next((i for i, sh in enumerate(scene) if sh.name == host), None)
    if idx is None:
        return False
    ang = np.linspace(0.0, 2 * math.pi, 24, endpoint=False)
    rad = np.array([0.0, 0.25, 0.5, 0.75, 1.0]) * radius
    px = (x + rad[:, None] * np.cos(ang)[None, :]).astype(np.float32).ravel()
    py = (y + rad[:, None] * np.sin(ang)[None, :]).astype(np.float32).ravel()
    if not np.all(_coverage(scene[idx], px, py, 1e-3) >= 1.0):
        return False
    for sh in scene[idx + 1 :]:
        hx, hy = sh.half_extent()
        if abs(sh.cx - x) > hx + radius or abs(sh.cy - y) > hy + radius:
            continue
        if np.any(_coverage(sh, px, py, 1e-3) > 0.0):
            return False
    return True


def _host_z_range(pat: _Patient, host: str) -> tuple[float, float]:
    """Anatomical z range (mm) over which a host exists inside the imaged body length."""
    lo, hi = pat.dz, BODY_LENGTH_MM + pat.dz
    blob = pat.organs.get(host)
    if blob is not None:
        lo, hi = max(lo, blob.z0 - blob.cap), min(hi, blob.z1 + blob.cap)
    return lo, hi


def _host_section(scenes: _Scenes, host: str, zz: float) -> _Shape | None:
    """The host's shape in the slice at anatomical level zz, if the slice cuts it."""
    return next((sh for sh in scenes.at(zz) if sh.name == host), None)


@lru_cache(maxsize=32)
def _lesions3d(seed: int) -> tuple[_Lesion3D, ...]:
    """Place the seed's lesions by rejection sampling: each sits inside its host with its
    clearance disc free of other tissue and of other lesions at every level it spans.
    A host's lesions are stratified along z, so every slice through it tends to have some."""
    pat = _patient(seed)
    rng = np.random.default_rng([seed, 0x51ED])
    scenes = _Scenes(pat)
    placed: list[_Lesion3D] = []
    for host, count in _LESION_HOSTS:
        zlo, zhi = _host_z_range(pat, host)
        for i in range(count):
            for _ in range(40):
                r = float(rng.uniform(2.5, 6.0))
                length = float(rng.uniform(6.0, 24.0))
                # The lesion's middle lies in the i-th of `count` equal bands of the host.
                lo, hi = zlo + r + 3.0 + length / 2, zhi - r - 3.0 - length / 2
                if hi <= lo:
                    continue
                zm = lo + (hi - lo) * (i + float(rng.uniform())) / count
                z0, z1 = zm - length / 2, zm + length / 2
                sec = _host_section(scenes, host, zm)
                clear = _clearance(r)
                if sec is None or min(sec.a, sec.b) <= clear:
                    continue
                # A uniform point in the host's section shrunk by the clearance.
                rad = math.sqrt(float(rng.uniform()))
                th = float(rng.uniform(0, 2 * math.pi))
                u = rad * (sec.a - clear) * math.cos(th)
                v = rad * (sec.b - clear) * math.sin(th)
                c, sn = math.cos(sec.angle), math.sin(sec.angle)
                x, y = sec.cx + c * u - sn * v, sec.cy + sn * u + c * v
                if any(
                    math.hypot(o.x - x, o.y - y) < clear + _clearance(o.radius)
                    and z0 - r - 4.0 < o.z1 + o.radius
                    and o.z0 - o.radius - 4.0 < z1 + r
                    for o in placed
                ):
                    continue
                levels = np.unique(np.round(np.linspace(z0 - r, z1 + r, 2 + int(length // 3))))
                if all(_owned(scenes.at(zz), host, x, y, clear) for zz in levels):
                    contrast = float(rng.integers(5, 21))
                    placed.append(_Lesion3D(host, x, y, r, z0, z1, contrast))
                    break
    return tuple(placed)


def _lesion_shapes(seed: int, z_mm: float) -> list[tuple[_Lesion3D, _Shape]]:
    """The lesions cut by the slice at z_mm, as additive discs."""
    pat = _patient(seed)
    zz = z_mm + pat.dz
    out = []
    for les in _lesions3d(seed):
        r = les.radius_at(zz)
        if r > 0.0:
            out.append((les, _Shape(les.x, les.y, r, r, les.contrast, name="lesion", add=True)))
    return out


# --------------------------------------------------------------------------------------
# Public API


def _check(size: int, z: float, fov_mm: float, seed: int = 0) -> None:
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if int(size) < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    if not 0.0 <= float(z) <= 1.0:
        raise ValueError(f"z must lie in [0, 1], got {z}")
    if not float(fov_mm) > 0.0:
        raise ValueError(f"fov_mm must be positive, got {fov_mm}")


def _texture(pat: _Patient, size: int, fov_mm: float, zz: float) -> np.ndarray:
    """Unit-variance smooth random field at anatomical level zz: a sum of plane waves,
    evaluated as small matrix products because each wave separates in x and y."""
    spacing = pixel_spacing_mm(size, fov_mm)
    c = (np.arange(size) + 0.5) * spacing - fov_mm / 2
    kx, ky, kz = pat.tex_k[:, 0], pat.tex_k[:, 1], pat.tex_k[:, 2]
    ph_rows = np.outer(c, ky) + kz * zz + pat.tex_phase  # [size, K]
    ph_cols = np.outer(kx, c)  # [K, size]
    # Re(e^{i a} e^{i b}) = cos a cos b - sin a sin b, as real products: faster than complex.
    cos_r = (pat.tex_w * np.cos(ph_rows)).astype(np.float32)
    sin_r = (pat.tex_w * np.sin(ph_rows)).astype(np.float32)
    cos_c, sin_c = np.cos(ph_cols).astype(np.float32), np.sin(ph_cols).astype(np.float32)
    return cos_r @ cos_c - sin_r @ sin_c


def phantom_slice(
    size: int = 512,
    z: float = 0.5,
    seed: int = 0,
    fov_mm: float = 400.0,
    *,
    table: bool = False,
    texture: bool = True,
) -> np.ndarray:
    """One axial slice in HU, float32 [size, size].

    ``z`` in [0, 1] goes from mid-thorax to pelvis; ``seed`` (>= 0) picks the patient;
    ``lesions`` with the same arguments says where the low-contrast lesions are. ``table``
    adds a patient table under the body. ``texture`` adds a faint smooth tissue texture
    (1.5 HU in soft tissue, 20 HU in lung) so that a perfectly flat output is not the
    ideal answer for a denoiser.
    """
    _check(size, z, fov_mm, seed)
    pat = _patient(int(seed))
    z_mm = float(z) * BODY_LENGTH_MM
    shapes = _scene(pat, z_mm, table)
    shapes += [sh for _, sh in _lesion_shapes(int(seed), z_mm)]
    img = _render(shapes, int(size), float(fov_mm))
    if texture:
        amp = np.interp(img, _TEX_HU, _TEX_AMP).astype(np.float32)
        img += amp * _texture(pat, int(size), float(fov_mm), z_mm + pat.dz)
    return img


def phantom_volume(
    n_slices: int = 32,
    size: int = 512,
    seed: int = 0,
    fov_mm: float = 400.0,
    *,
    z_start: float = 0.0,
    z_stop: float = 1.0,
    table: bool = False,
    texture: bool = True,
) -> np.ndarray:
    """A series of slices, float32 [n_slices, size, size], evenly spaced in z from
    ``z_start`` to ``z_stop``, for code that works on whole series (readers, writers, 2.5D
    models). ``slice_positions`` gives each slice's z, ``slice_spacing_mm`` the spacing."""
    if int(n_slices) < 1:
        raise ValueError(f"n_slices must be at least 1, got {n_slices}")
    zs = slice_positions(n_slices, z_start, z_stop)
    vol = np.empty((len(zs), int(size), int(size)), dtype=np.float32)
    for i, z in enumerate(zs):
        vol[i] = phantom_slice(size, float(z), seed, fov_mm, table=table, texture=texture)
    return vol


def lesions(size: int = 512, z: float = 0.5, seed: int = 0, fov_mm: float = 400.0) -> list[Lesion]:
    """The low-contrast lesions that ``phantom_slice(size, z, seed, fov_mm)`` contains.

    Lesions are short rods with rounded ends, so a slice near an end cuts a smaller disc;
    filter on ``radius_px`` for what is measurable at a given resolution.
    """
    _check(size, z, fov_mm, seed)
    spacing = pixel_spacing_mm(size, fov_mm)
    half = float(fov_mm) / 2
    out = []
    for les, sh in _lesion_shapes(int(seed), float(z) * BODY_LENGTH_MM):
        out.append(
            Lesion(
                row=(sh.cy + half) / spacing - 0.5,
                col=(sh.cx + half) / spacing - 0.5,
                radius_px=sh.a / spacing,
                contrast_hu=les.contrast,
                radius_mm=sh.a,
                organ=les.organ,
            )
        )
    return out
