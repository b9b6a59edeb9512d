"""What one CT instance's header must hold before its pixels become HU and take a place in
space: a plausible rescale, a finite position, orthonormal orientation cosines and positive
pixel spacing. The series reader checks every slice with these; the DICOM node's intake and
the derived-series writer check single instances with the same functions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from manas_infer.errors import InputProblem

# A CT slope outside this (in magnitude) maps the stored range to nothing a body holds: the
# fuzzed 1e300 of issue 16, or a slope that rounds every HU to one stored value.
SLOPE_RANGE = (1e-6, 1e4)
# Cosines of a unit vector, and of two orthogonal ones, to this tolerance (headers store
# them as decimal strings of at most 16 characters).
ORIENTATION_TOLERANCE = 1e-3


def _numbers(ds: Dataset, keyword: str, count: int, path: Path) -> np.ndarray | None:
    """A multi-valued decimal attribute as ``count`` finite floats; None when absent or
    empty; InputProblem when malformed or not finite."""
    raw = ds.get(keyword)
    if raw is None or raw == "" or (hasattr(raw, "__len__") and len(raw) == 0):
        return None
    single = isinstance(raw, str | bytes) or not hasattr(raw, "__iter__")
    values = [raw] if single else list(raw)
    try:
        out = np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputProblem(path, f"{keyword} is not numeric") from None
    if out.shape != (count,):
        raise InputProblem(path, f"{keyword} has {out.size} values, expected {count}")
    if not np.all(np.isfinite(out)):
        raise InputProblem(path, f"{keyword} is not finite")
    return out


def rescale_of(ds: Dataset, path: Path) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept), checked: both finite, the slope non-zero and of a
    plausible size. Both absent is read as stored values already in HU (slope 1,
    intercept 0), but only for signed pixels (unsigned ones cannot hold air's -1000); one
    without the other is refused. A header value of 0 is never read as 1."""
    slope = _numbers(ds, "RescaleSlope", 1, path)
    intercept = _numbers(ds, "RescaleIntercept", 1, path)
    if slope is None and intercept is None:
        if int(ds.get("PixelRepresentation", 0) or 0) == 1:
            return 1.0, 0.0
        raise InputProblem(path, "no RescaleSlope/Intercept (unsigned pixels are not HU)")
    if slope is None or intercept is None:
        missing = "RescaleSlope" if slope is None else "RescaleIntercept"
        raise InputProblem(path, f"{missing} missing")
    low, high = SLOPE_RANGE
    if slope[0] == 0:
        raise InputProblem(path, "RescaleSlope is 0")
    if not low <= abs(float(slope[0])) <= high:
        raise InputProblem(path, f"RescaleSlope {float(slope[0]):g} not plausible")
    return float(slope[0]), float(intercept[0])


def check_geometry(ds: Dataset, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(unit slice normal, ImagePositionPatient), checked: the position finite, the
    orientation two orthonormal direction cosines, PixelSpacing two positive values."""
    missing = [
        keyword
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
        if not ds.get(keyword)
    ]
    if missing:
        raise InputProblem(path, f"missing geometry ({', '.join(missing)})")
    ipp = _numbers(ds, "ImagePositionPatient", 3, path)
    iop = _numbers(ds, "ImageOrientationPatient", 6, path)
    spacing = _numbers(ds, "PixelSpacing", 2, path)
    assert ipp is not None and iop is not None and spacing is not None  # checked above
    row, col = iop[:3], iop[3:]
    tol = ORIENTATION_TOLERANCE
    if abs(np.linalg.norm(row) - 1) > tol or abs(np.linalg.norm(col) - 1) > tol:
        raise InputProblem(path, "ImageOrientationPatient not unit vectors")
    if abs(float(np.dot(row, col))) > tol:
        raise InputProblem(path, "ImageOrientationPatient not orthogonal")
    if not np.all(spacing > 0):
        raise InputProblem(path, "PixelSpacing not positive")
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal), ipp


def check_header(ds: Dataset, path: Path) -> None:
    """Every header value the HU conversion and the derived series depend on (rescale,
    position, orientation, spacing); InputProblem naming the first bad one. The node's
    intake runs this on each instance and ``scan`` on each slice, so such a file is
    refused at the door and never reaches a PACS, whichever way it came in."""
    rescale_of(ds, path)
    check_geometry(ds, path)
