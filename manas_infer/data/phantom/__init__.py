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

Layout, one idea a module (a package rather than one long module, because the tissue table,
the drawn patient, the slice's anatomy and the lesion placement change for different
reasons and each reads on its own): ``tissues`` (HU table), ``geometry`` (mm to pixels and
slices), ``shapes`` (ellipses, 3D blobs, rasterisation), ``patient`` (what a seed draws),
``anatomy`` (one slice as shapes in painting order), ``lesions`` (placement per seed, discs
per slice). This module is the public face: slices, volumes and the lesions they hold.
"""

from __future__ import annotations

import numpy as np

from manas_infer.data.phantom.anatomy import scene
from manas_infer.data.phantom.geometry import (
    BODY_LENGTH_MM,
    pixel_centres_mm,
    pixel_spacing_mm,
    slice_positions,
    slice_spacing_mm,
)
from manas_infer.data.phantom.lesions import Lesion, lesion_discs
from manas_infer.data.phantom.patient import Patient, patient
from manas_infer.data.phantom.shapes import render
from manas_infer.data.phantom.tissues import TEXTURE_AMPLITUDE, TEXTURE_HU

__all__ = [
    "BODY_LENGTH_MM",
    "Lesion",
    "lesions",
    "phantom_slice",
    "phantom_volume",
    "pixel_spacing_mm",
    "slice_positions",
    "slice_spacing_mm",
]


def _check(size: int, z: float, fov_mm: float, seed: int = 0) -> None:
    """Refuse arguments that would give no image or a wrong one, naming the argument."""
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if int(size) < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    if not 0.0 <= float(z) <= 1.0:
        raise ValueError(f"z must lie in [0, 1], got {z}")
    if not float(fov_mm) > 0.0:
        raise ValueError(f"fov_mm must be positive, got {fov_mm}")


def _texture(pat: Patient, size: int, fov_mm: float, zz: float) -> np.ndarray:
    """Unit-variance smooth random field at anatomical level zz: a sum of plane waves,
    evaluated as small matrix products because each wave separates in x and y."""
    centres = pixel_centres_mm(size, fov_mm)
    kx, ky, kz = pat.tex_k[:, 0], pat.tex_k[:, 1], pat.tex_k[:, 2]
    phase_rows = np.outer(centres, ky) + kz * zz + pat.tex_phase  # [size, K]
    phase_cols = np.outer(kx, centres)  # [K, size]
    # Re(e^{i a} e^{i b}) = cos a cos b - sin a sin b, as real products: faster than complex.
    cos_rows = (pat.tex_w * np.cos(phase_rows)).astype(np.float32)
    sin_rows = (pat.tex_w * np.sin(phase_rows)).astype(np.float32)
    cos_cols = np.cos(phase_cols).astype(np.float32)
    sin_cols = np.sin(phase_cols).astype(np.float32)
    return cos_rows @ cos_cols - sin_rows @ sin_cols


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
    pat = patient(int(seed))
    z_mm = float(z) * BODY_LENGTH_MM
    shapes = scene(pat, z_mm, table)
    shapes += [disc for _, disc in lesion_discs(int(seed), z_mm)]
    img = render(shapes, int(size), float(fov_mm))
    if texture:
        amplitude = np.interp(img, TEXTURE_HU, TEXTURE_AMPLITUDE).astype(np.float32)
        img += amplitude * _texture(pat, int(size), float(fov_mm), z_mm + pat.dz)
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
    for lesion, disc in lesion_discs(int(seed), float(z) * BODY_LENGTH_MM):
        out.append(
            Lesion(
                row=(disc.cy + half) / spacing - 0.5,
                col=(disc.cx + half) / spacing - 0.5,
                radius_px=disc.a / spacing,
                contrast_hu=lesion.contrast,
                radius_mm=disc.a,
                organ=lesion.organ,
            )
        )
    return out
