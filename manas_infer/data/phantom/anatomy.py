"""One slice of the patient as shapes in painting order: later shapes cover earlier ones.

The order is the anatomy's rule: the body wall first, bowel before the solid organs (which
push it aside), great vessels, back muscles, then bone on top of everything.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from manas_infer.data.phantom.geometry import BODY_LENGTH_MM
from manas_infer.data.phantom.patient import Patient
from manas_infer.data.phantom.shapes import Shape, cut_by
from manas_infer.data.phantom.tissues import (
    AIR,
    ARCH_BONE,
    BLOOD,
    BOWEL_WALL,
    CANAL,
    CANCELLOUS,
    CORTICAL,
    DISC,
    FAT,
    MUSCLE,
    RIB_CORTEX,
    TABLE_CORE,
    TABLE_SHELL,
    VISCERAL_FAT,
)


class BodyWall(NamedTuple):
    """Subcutaneous fat, the muscle layer inside it and the visceral cavity inside that."""

    body: Shape
    muscle: Shape
    cavity: Shape
    thickness: float  # of the muscle layer, mm


def scene(pat: Patient, z_mm: float, table: bool = False) -> list[Shape]:
    """The shapes of the slice z_mm (mm along the imaged length), in painting order."""
    zz = z_mm + pat.dz
    wall = _body_wall(pat, zz)
    shapes = _table(pat, wall.body) if table else []
    shapes += [wall.body, wall.muscle, wall.cavity]
    shapes += _bowel(pat, zz, wall.cavity)
    shapes += _thorax(pat, zz, wall.cavity)
    shapes += _abdomen(pat, zz, wall.cavity)
    spine_y = pat.by + 45.0 * pat.scale
    shapes += _great_vessels(pat, zz, spine_y)
    shapes += _back_muscles(pat, zz, spine_y, wall.muscle)
    shapes += _spine(pat, zz, spine_y)
    shapes += _ribs(pat, zz, wall.muscle, wall.thickness)
    shapes += _sections(pat, zz, ("iliac_l", "iliac_core_l", "iliac_r", "iliac_core_r"))
    return shapes


def _smooth_interp(z: float, zs: tuple[float, ...], values: tuple[float, ...]) -> float:
    """Interpolate with smoothstep between knots, so body dimensions have no kinks in z."""
    if z <= zs[0]:
        return values[0]
    for i in range(len(zs) - 1):
        if z <= zs[i + 1]:
            t = (z - zs[i]) / (zs[i + 1] - zs[i])
            t = t * t * (3.0 - 2.0 * t)
            return values[i] + (values[i + 1] - values[i]) * t
    return values[-1]


def _sections(
    pat: Patient, zz: float, names: tuple[str, ...], clip: Shape | None = None
) -> list[Shape]:
    """The named organs' cross-sections at anatomical level zz, those the slice cuts."""
    cut = (pat.organs[name].section(zz, clip) for name in names)
    return [shape for shape in cut if shape is not None]


def _body_wall(pat: Patient, zz: float) -> BodyWall:
    """The body outline, narrower at the waist, with the seed's fat and muscle layers."""
    scale = pat.scale
    zr = zz / BODY_LENGTH_MM
    a = scale * pat.body_ax * _smooth_interp(zr, (0.0, 0.35, 0.6, 1.0), (165, 158, 150, 168))
    b = scale * pat.body_ay * _smooth_interp(zr, (0.0, 0.35, 0.6, 1.0), (112, 112, 106, 110))
    fat = pat.fat
    thickness = 14.0 * scale
    body = Shape(pat.bx, pat.by, a, b, FAT, name="body")
    muscle = Shape(pat.bx, pat.by + 0.2 * fat, a - fat, b - 0.8 * fat, MUSCLE, name="muscle")
    cavity = Shape(
        pat.bx,
        muscle.cy - 0.2 * thickness,
        muscle.a - thickness,
        muscle.b - 0.8 * thickness,
        VISCERAL_FAT,
    )
    return BodyWall(body, muscle, cavity, thickness)


def _table(pat: Patient, body: Shape) -> list[Shape]:
    """A patient table just under the body: a dense shell around a foam core."""
    top = pat.by + body.b + 1.0
    return [
        Shape(0.0, top + 9.0, 230.0, 9.0, TABLE_SHELL, exponent=6.0, name="table"),
        Shape(0.0, top + 9.0, 226.0, 6.5, TABLE_CORE, exponent=6.0, name="table"),
    ]


def _bowel(pat: Patient, zz: float, cavity: Shape) -> list[Shape]:
    """The bowel loops the slice cuts, each a wall and (when cut) its lumen."""
    shapes = []
    for i in cut_by(pat.bowel_z, zz):
        wall_blob, lumen_blob = pat.bowel[i]
        wall = wall_blob.section(zz, clip=cavity)
        if wall is not None:
            shapes.append(wall)
            lumen = lumen_blob.section(zz, clip=cavity)
            if lumen is not None:
                shapes.append(lumen)
    return shapes


def _thorax(pat: Patient, zz: float, cavity: Shape) -> list[Shape]:
    """Lungs with their vessels, then the heart in its pericardium."""
    lungs = {side: pat.organs[side].section(zz, cavity) for side in ("lung_r", "lung_l")}
    shapes = [lung for lung in lungs.values() if lung is not None]
    for i in cut_by(pat.vessel_z, zz):
        vessel, side = pat.lung_vessels[i]
        lung = lungs[side]
        if lung is not None:
            section = vessel.section(zz, clip=lung)
            if section is not None:
                shapes.append(section)
    return shapes + _sections(pat, zz, ("pericardium", "heart"), cavity)


def _abdomen(pat: Patient, zz: float, cavity: Shape) -> list[Shape]:
    """Upper abdomen and pelvis; the stomach's gas cap lies inside its lumen."""
    solid = ("liver", "liver_left", "gallbladder", "spleen", "stomach", "stomach_lumen")
    shapes = _sections(pat, zz, solid, cavity)
    stomach_lumen = next((shape for shape in shapes if shape.name == "stomach_lumen"), None)
    if stomach_lumen is not None:
        shapes += _sections(pat, zz, ("stomach_gas",), stomach_lumen)
    retroperitoneum = ("perirenal_l", "perirenal_r", "kidney_l", "kidney_r", "bladder")
    return shapes + _sections(pat, zz, retroperitoneum, cavity)


def _tube(x: float, y: float, a: float, b: float, value: float, fade: float) -> list[Shape]:
    """A vessel's section, shrunk by ``fade`` (capped at 1) where it tapers in or out."""
    fade = min(1.0, fade)
    if fade * min(a, b) > 0.05:
        return [Shape(x, y, a * fade, b * fade, value)]
    return []


def _great_vessels(pat: Patient, zz: float, spine_y: float) -> list[Shape]:
    """Aorta, iliac arteries, IVC and oesophagus, placed relative to the spine; each tapers
    in and out over 20 mm so that the series stays smooth."""
    scale, x0 = pat.scale, pat.bx
    aorta_x, aorta_y, aorta_fade = x0 + 14 * scale, spine_y - 28 * scale, (330 - zz) / 20
    shapes = _tube(aorta_x, aorta_y, 11.5 * scale, 11.5 * scale, BLOOD, aorta_fade)
    spread = 14 + 0.25 * max(0.0, zz - 330)  # the iliac arteries diverge below the bifurcation
    for side in (-1.0, 1.0):
        iliac_x, iliac_y = x0 + side * spread * scale, spine_y - 26 * scale
        shapes += _tube(iliac_x, iliac_y, 7 * scale, 7 * scale, BLOOD, (zz - 300) / 20)
    ivc_x, ivc_y = x0 - 22 * scale, spine_y - 28 * scale
    shapes += _tube(ivc_x, ivc_y, 11 * scale, 9 * scale, BLOOD, (zz - 60) / 20)
    oesophagus_x, oesophagus_y = x0 - 2 * scale, spine_y - 32 * scale
    oesophagus_fade = (130 - zz) / 20
    shapes += _tube(oesophagus_x, oesophagus_y, 7 * scale, 6 * scale, BOWEL_WALL, oesophagus_fade)
    shapes += _tube(oesophagus_x, oesophagus_y, 2 * scale, 1.5 * scale, AIR, oesophagus_fade)
    return shapes


def _back_muscles(pat: Patient, zz: float, spine_y: float, muscle: Shape) -> list[Shape]:
    """Paraspinal muscles inside the muscle layer, then the psoas muscles."""
    scale = pat.scale
    shapes = [
        Shape(
            pat.bx + side * 33 * scale,
            spine_y + 40 * scale,
            25 * scale,
            21 * scale,
            MUSCLE + 5.0,
            name=name,
            clip=muscle,
        )
        for side, name in ((-1.0, "paraspinal_r"), (1.0, "paraspinal_l"))
    ]
    return shapes + _sections(pat, zz, ("psoas_l", "psoas_r"))


def _spine(pat: Patient, zz: float, y0: float) -> list[Shape]:
    """A vertebra: posterior arch around the canal, spinous and transverse processes and a
    body of cortical shell and cancellous core that gives way to a disc periodically."""
    scale, x0 = pat.scale, pat.bx
    lumbar = _smooth_interp(zz / BODY_LENGTH_MM, (0.3, 0.7), (0.0, 1.0))
    period = 28.0 + 6.0 * lumbar
    phase = (zz / period + pat.disc_phase) % 1.0
    to_disc = min(phase, 1.0 - phase) * period  # distance to the nearest disc centre, mm
    disc = 0.5 * (1.0 - math.tanh((to_disc - 3.5) / 1.0))
    cortex = CORTICAL + (DISC - CORTICAL) * disc
    core = CANCELLOUS + (DISC - CANCELLOUS) * disc
    va, vb = (16 + 5 * lumbar) * scale, (14 + 3 * lumbar) * scale
    canal_y = y0 + vb + 9.0 * scale
    return [
        Shape(x0, canal_y, 17 * scale, 14 * scale, ARCH_BONE, name="arch"),
        Shape(x0, canal_y + 20 * scale, 4.5 * scale, 13 * scale, ARCH_BONE, name="spinous"),
        *(
            Shape(
                x0 + side * 24 * scale,
                canal_y,
                13 * scale,
                4.5 * scale,
                ARCH_BONE,
                math.radians(side * 15),
                name="tp",
            )
            for side in (-1, 1)
        ),
        Shape(x0, canal_y, 9 * scale, 8.5 * scale, CANAL, name="canal"),
        Shape(x0, y0, va, vb, cortex, name="vertebra"),
        Shape(x0, y0, va - 2.5, vb - 2.5, core, name="vertebra_core"),
    ]


def _ribs(pat: Patient, zz: float, muscle: Shape, wall: float) -> list[Shape]:
    """Rib sections sliding along the chest wall with z, fading out below the costal
    margin; plus the sternum."""
    shapes: list[Shape] = []
    scale = pat.scale
    ra, rb = muscle.a - 0.5 * wall, muscle.b - 0.5 * wall
    lo, hi = 0.45, 2.65  # angle from posterior, radians
    n_ribs = 7
    shift = zz / (26.0 * scale) + pat.rib_phase
    for i in range(n_ribs):
        t = ((i + shift) % n_ribs) / n_ribs  # 0 at the back, 1 at the front
        phi = lo + t * (hi - lo)
        end = 215.0 - 55.0 * t  # anterior ribs stop higher: the costal margin
        fade = min(1.0, max(0.0, (end - zz) / 25.0)) * math.sqrt(math.sin(math.pi * t))
        if fade < 0.05:
            continue
        for side in (-1.0, 1.0):
            x = muscle.cx + side * ra * math.sin(phi)
            y = muscle.cy + rb * math.cos(phi)
            angle = math.atan2(-rb * math.sin(phi), side * ra * math.cos(phi))
            rib_a, rib_b = 7.0 * scale * fade, 4.5 * scale * fade
            shapes.append(Shape(x, y, rib_a, rib_b, RIB_CORTEX, angle, name="rib"))
            if rib_b > 2.5:
                shapes.append(Shape(x, y, rib_a - 1.8, rib_b - 1.8, CANCELLOUS, angle, name="rib"))
    if zz < 130:
        fade = min(1.0, (130 - zz) / 20.0)
        y = muscle.cy - muscle.b + 0.5 * wall
        shapes.append(Shape(muscle.cx, y, 14 * scale * fade, 5.5 * scale * fade, RIB_CORTEX))
        if fade > 0.6:
            shapes.append(
                Shape(muscle.cx, y, 14 * scale * fade - 2, 5.5 * scale * fade - 2, CANCELLOUS)
            )
    return shapes
