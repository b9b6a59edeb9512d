"""The phantom's building blocks and how they become pixels.

A ``Shape`` is a 2D (super)ellipse in mm; a ``Blob`` is a 3D body whose cross-section at a
level is a ``Shape``. ``render`` paints shapes in order onto air with a one-pixel edge ramp
(the only partial-volume effect the phantom has), each touching only its bounding box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from manas_infer.data.phantom.geometry import pixel_centres_mm, pixel_spacing_mm
from manas_infer.data.phantom.tissues import AIR


@dataclass(frozen=True)
class Shape:
    """A 2D (super)ellipse in mm: painted over the image, or added to it (``add``)."""

    cx: float
    cy: float
    a: float  # semi-axis along the rotated x
    b: float
    value: float
    angle: float = 0.0  # radians, rotation of the a-axis from +x toward +y
    exponent: float = 2.0  # superellipse exponent; 2 is an ellipse
    name: str = ""
    clip: Shape | None = None  # coverage is multiplied by the clip shape's coverage
    add: bool = False

    def half_extent(self) -> tuple[float, float]:
        """Half width and half height of the bounding box, in mm."""
        if self.angle == 0.0:
            return self.a, self.b
        if self.exponent != 2.0:
            radius = math.hypot(self.a, self.b)
            return radius, radius
        cos_a, sin_a = math.cos(self.angle), math.sin(self.angle)
        return (
            math.hypot(self.a * cos_a, self.b * sin_a),
            math.hypot(self.a * sin_a, self.b * cos_a),
        )


@dataclass(frozen=True)
class Blob:
    """A 3D body: an ellipse section that is constant over [z0, z1] with ellipsoidal caps
    of length ``cap`` at both ends (z0 == z1 gives an ellipsoid), drifting in-plane by
    (vx, vy) mm per mm of z around the middle. Slicing it gives a ``Shape``."""

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
        past_end = (self.z0 - z) if z < self.z0 else (z - self.z1)
        if self.cap <= 0.0 or past_end >= self.cap:
            return 0.0
        return math.sqrt(1.0 - (past_end / self.cap) ** 2)

    def section(self, z: float, clip: Shape | None = None) -> Shape | None:
        """The cross-section at z (mm), or None when it is empty or negligibly small."""
        scale = self.scale_at(z)
        if scale * min(self.a, self.b) < 0.05:
            return None
        from_middle = z - 0.5 * (self.z0 + self.z1)
        return Shape(
            self.x + self.vx * from_middle,
            self.y + self.vy * from_middle,
            self.a * scale,
            self.b * scale,
            self.value,
            self.angle,
            name=self.name,
            clip=clip,
        )


def z_extents(blobs: list[Blob]) -> np.ndarray:
    """[N, 2] array of the z ranges the blobs occupy."""
    return np.array([(blob.z0 - blob.cap, blob.z1 + blob.cap) for blob in blobs], dtype=np.float64)


def cut_by(extents: np.ndarray, zz: float) -> np.ndarray:
    """Indices of the blobs (by their ``z_extents``) whose z range contains zz."""
    return np.flatnonzero((extents[:, 0] < zz) & (zz < extents[:, 1]))


def signed_distance(shape: Shape, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Approximate signed distance (mm, negative inside) to the shape's boundary.

    First order, (f - 1) / |grad f| for the implicit function f = 1 on the boundary: exact
    on the boundary, which is all a one-pixel edge ramp needs.
    """
    ddx = x - np.float32(shape.cx)
    ddy = y - np.float32(shape.cy)
    if shape.angle != 0.0:
        cos_a, sin_a = np.float32(math.cos(shape.angle)), np.float32(math.sin(shape.angle))
        ddx, ddy = cos_a * ddx + sin_a * ddy, cos_a * ddy - sin_a * ddx
    u = ddx * np.float32(1.0 / shape.a)
    v = ddy * np.float32(1.0 / shape.b)
    if shape.exponent == 2.0:
        r2 = u * u + v * v
        f = np.sqrt(r2)
        den = (u * u) * np.float32(1.0 / shape.a**2) + (v * v) * np.float32(1.0 / shape.b**2)
        tiny = np.float32(1e-12)
        # f / |grad f| lies between the semi-axes; at the centre take the smaller one.
        ratio = np.sqrt((r2 + tiny) / (den + tiny / np.float32(min(shape.a, shape.b) ** 2)))
        return (f - 1.0) * ratio
    power = shape.exponent
    au, av = np.abs(u), np.abs(v)
    f = np.maximum((au**power + av**power) ** (1.0 / power), np.float32(1e-6))
    gu = (au / f) ** (power - 1.0) / shape.a
    gv = (av / f) ** (power - 1.0) / shape.b
    return (f - 1.0) / np.sqrt(gu * gu + gv * gv)


def coverage(shape: Shape, x: np.ndarray, y: np.ndarray, spacing: float) -> np.ndarray:
    """Fraction of a pixel of side ``spacing`` covered by the shape (a linear edge ramp)."""
    covered = np.clip(0.5 - signed_distance(shape, x, y) / np.float32(spacing), 0.0, 1.0)
    if shape.clip is not None:
        covered = covered * coverage(shape.clip, x, y, spacing)
    return covered


def render(shapes: list[Shape], size: int, fov_mm: float) -> np.ndarray:
    """Paint shapes in order onto an air background; each touches only its bounding box."""
    spacing = pixel_spacing_mm(size, fov_mm)
    img = np.full((size, size), AIR, dtype=np.float32)
    coords = pixel_centres_mm(size, fov_mm).astype(np.float32)
    half = fov_mm / 2
    for shape in shapes:
        hx, hy = shape.half_extent()
        c0 = max(0, math.floor((shape.cx - hx + half) / spacing - 1.0))
        c1 = min(size, math.ceil((shape.cx + hx + half) / spacing + 1.0))
        r0 = max(0, math.floor((shape.cy - hy + half) / spacing - 1.0))
        r1 = min(size, math.ceil((shape.cy + hy + half) / spacing + 1.0))
        if c0 >= c1 or r0 >= r1:
            continue
        covered = coverage(shape, coords[None, c0:c1], coords[r0:r1, None], spacing)
        view = img[r0:r1, c0:c1]
        if shape.add:
            view += np.float32(shape.value) * covered
        else:
            view += covered * (np.float32(shape.value) - view)
    return img
