"""Where the phantom's millimetres fall on pixels and slices.

``x`` runs to the image right (patient left), ``y`` down the image (posterior), origin at
the centre of a square field of view ``fov_mm`` wide; ``z`` in [0, 1] runs along the body
over ``BODY_LENGTH_MM``.
"""

from __future__ import annotations

import numpy as np

#: Length of body that z in [0, 1] spans, in mm (mid-thorax to pelvis).
BODY_LENGTH_MM = 360.0


def pixel_spacing_mm(size: int = 512, fov_mm: float = 400.0) -> float:
    """In-plane pixel spacing, mm: the field of view is square and spans ``size`` pixels."""
    return float(fov_mm) / int(size)


def pixel_centres_mm(size: int, fov_mm: float) -> np.ndarray:
    """Float64 positions of the pixel centres along a row (or column), mm from the centre."""
    spacing = pixel_spacing_mm(size, fov_mm)
    return (np.arange(size, dtype=np.float64) + 0.5) * spacing - fov_mm / 2


def slice_positions(n_slices: int, z_start: float = 0.0, z_stop: float = 1.0) -> np.ndarray:
    """The z values (in [0, 1]) of the slices of ``phantom_volume``, evenly spaced."""
    return np.linspace(z_start, z_stop, int(n_slices))


def slice_spacing_mm(n_slices: int, z_start: float = 0.0, z_stop: float = 1.0) -> float:
    """Distance between consecutive slices of ``phantom_volume``, mm (for DICOM headers)."""
    if n_slices < 2:
        return abs(z_stop - z_start) * BODY_LENGTH_MM or 1.0
    return abs(z_stop - z_start) * BODY_LENGTH_MM / (n_slices - 1)
