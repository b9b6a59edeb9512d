"""Edge sharpness: the task transfer function (TTF) of AAPM TG-233 from an edge.

Each pixel near an edge gets its signed distance to the edge (a circle of known centre and
radius, as a phantom rod, or an iso-contour of a reference image, as the body outline
against air). Binning pixel values by that distance in sub-pixel bins gives an oversampled
edge spread function (ESF); its derivative, Hann-windowed, is the line spread function
(LSF); the magnitude of the LSF's Fourier transform, normalised at zero frequency, is the
TTF. For a nonlinear denoiser it depends on the edge's contrast and the noise around it,
hence "task" transfer function. Written here because no library at hand computes a TTF.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree


@dataclass
class TaskTransferFunction:
    """A TTF and the numbers read off it."""

    frequency: np.ndarray  # mm^-1 (pixel^-1 when the spacing is unknown), up to 2x Nyquist
    ttf: np.ndarray
    f50: float  # where the TTF first falls to 0.5 (NaN if it never does)
    f10: float  # ... to 0.1
    contrast: float  # HU: the ESF's step, inside minus outside
    distance: np.ndarray  # px: ESF bin centres (positive outwards)
    esf: np.ndarray  # HU
    pixel_spacing: float
    n_pixels: int

    def to_dict(self, curve: bool = True) -> dict:
        out = {
            "f50": _num(self.f50),
            "f10": _num(self.f10),
            "contrast_hu": self.contrast,
            "n_pixels": self.n_pixels,
            "pixel_spacing_mm": self.pixel_spacing,
        }
        if curve:  # up to Nyquist, at most about 128 points: enough to plot, small to store
            keep = np.flatnonzero(self.frequency <= 0.5 / self.pixel_spacing * 1.0001)
            keep = keep[:: max(1, -(-len(keep) // 128))]
            out["frequency"] = [round(float(f), 5) for f in self.frequency[keep]]
            out["ttf"] = [round(float(v), 5) for v in self.ttf[keep]]
        return out


def _num(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def edge_sums(
    image: np.ndarray,
    distance: np.ndarray,
    low: float,
    high: float,
    bin_px: float = 0.1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin centres, sum of values, pixel count) per bin of distance in [low, high) px:
    what several images' ESFs pool by."""
    use = np.isfinite(distance) & (distance >= low) & (distance < high)
    n_bins = round((high - low) / bin_px)
    index = np.minimum(((distance[use] - low) / bin_px).astype(np.int64), n_bins - 1)
    counts = np.bincount(index, minlength=n_bins).astype(np.float64)
    sums = np.bincount(index, weights=np.asarray(image, dtype=np.float64)[use], minlength=n_bins)
    return low + (np.arange(n_bins) + 0.5) * bin_px, sums, counts


def esf_from_sums(centres: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean value per bin; empty bins (fine bins near a small rod) take the linear
    interpolation of their neighbours, so the derivative stays defined."""
    filled = counts > 0
    if filled.sum() < 2:
        raise ValueError("too few pixels near the edge to measure its spread")
    return np.interp(centres, centres[filled], sums[filled] / counts[filled])


def edge_spread(
    image: np.ndarray, distance: np.ndarray, low: float, high: float, bin_px: float = 0.1
) -> tuple[np.ndarray, np.ndarray, int]:
    """(bin centres, ESF, pixels used) of one image over distances in [low, high) px."""
    centres, sums, counts = edge_sums(image, distance, low, high, bin_px)
    return centres, esf_from_sums(centres, sums, counts), int(counts.sum())


def crossing(frequency: np.ndarray, curve: np.ndarray, level: float) -> float:
    """The first frequency where ``curve`` falls to ``level`` (linear between samples)."""
    below = np.flatnonzero(curve <= level)
    if below.size == 0 or below[0] == 0:
        return float("nan")
    i = int(below[0])
    f0, f1, c0, c1 = frequency[i - 1], frequency[i], curve[i - 1], curve[i]
    return float(f0 + (c0 - level) * (f1 - f0) / (c0 - c1))


def ttf_from_esf(
    distance: np.ndarray, esf: np.ndarray, spacing: float = 1.0, n_pixels: int = 0
) -> TaskTransferFunction:
    """ESF (equally spaced bins, the edge at distance 0) -> Hann-windowed LSF -> TTF.

    The window is centred on the edge and reaches the nearer end of the ESF, so the noisy
    tails, which carry no edge, are weighed down before the transform; keep the ESF at
    least three LSF widths long on each side."""
    step = float(distance[1] - distance[0])
    lsf = np.gradient(esf, step)
    half_width = min(-distance[0], distance[-1])
    # Tukey window: flat over the inner half, a cosine taper over the outer half, so the
    # LSF itself is not narrowed (a full Hann window would raise the TTF of a wide LSF)
    taper = np.clip((np.abs(distance) - half_width / 2) / (half_width / 2), 0.0, 1.0)
    window = 0.5 * (1 + np.cos(np.pi * taper))
    n_fft = max(8192, 1 << int(np.ceil(np.log2(8 * len(lsf)))))
    spectrum = np.abs(np.fft.rfft(lsf * window, n_fft))
    frequency = np.fft.rfftfreq(n_fft, d=step) / spacing  # cycles / mm
    keep = frequency <= 1.0 / spacing  # up to twice the Nyquist frequency
    ttf = spectrum[keep] / spectrum[0] if spectrum[0] > 0 else np.full(keep.sum(), np.nan)
    f = frequency[keep]
    n_edge = max(1, len(esf) // 8)
    contrast = float(esf[:n_edge].mean() - esf[-n_edge:].mean())
    return TaskTransferFunction(
        f,
        ttf,
        crossing(f, ttf, 0.5),
        crossing(f, ttf, 0.1),
        contrast,
        distance,
        esf,
        float(spacing),
        n_pixels,
    )


def circular_distance(
    shape: tuple[int, int], centre: tuple[float, float], radius: float
) -> np.ndarray:
    """Signed distance (px, positive outside) of every pixel centre to a circle."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.hypot(rows - centre[0], cols - centre[1]) - radius


def circular_edge_ttf(
    image: np.ndarray,
    centre: tuple[float, float],
    radius: float,
    spacing: float = 1.0,
    reach: float = 10.0,
    bin_px: float | None = None,
) -> TaskTransferFunction:
    """TTF of a circular edge (a rod, a phantom's outline) of known centre and radius (px).

    The ESF spans ``reach`` px on either side (inside at most to the centre). Without
    ``bin_px``, bins are as fine as 0.1 px while each still holds about 10 pixels."""
    inside = min(reach, radius)
    if bin_px is None:
        bin_px = float(np.clip(10.0 / (2 * np.pi * radius), 0.1, 0.5))
    distance = circular_distance(image.shape, centre, radius)
    d, esf, n = edge_spread(image, distance, -inside, reach, bin_px)
    return ttf_from_esf(d, esf, spacing, n)


def contour_distance(
    reference: np.ndarray,
    level: float = -500.0,
    reach: float = 8.0,
    outside_max: float = -800.0,
    inside_min: float = -400.0,
) -> np.ndarray:
    """Signed distance (px, positive towards lower values) of pixels within ``reach`` of the
    ``level`` iso-contour of ``reference`` that outlines the body (against air); NaN
    elsewhere. Stretches of the edge with something other than air outside (the table, an
    arm) or other than tissue inside (lung reaching the skin) are left out, so only a clean
    air / soft-tissue step is measured. The contour is sub-pixel (contourpy, matplotlib's
    own contouring), which is what makes the ESF oversampled."""
    import contourpy

    reference = np.asarray(reference, dtype=np.float64)
    out = np.full(reference.shape, np.nan)
    outline = _outline_only(reference, level)
    if outline is None:
        return out
    lines = contourpy.contour_generator(z=outline, line_type="Separate").lines(level)
    if not lines:
        return out
    line = max(lines, key=len)  # (x = column, y = row) vertices
    if len(line) < 16:
        return out
    points = _densified(line)[:, ::-1]  # (row, col)
    normal = _normals_towards_air(reference, points)
    rows, cols = np.mgrid[0 : reference.shape[0], 0 : reference.shape[1]]
    pixels = np.stack([rows.ravel(), cols.ravel()], axis=1).astype(np.float64)
    gap, nearest = cKDTree(points).query(pixels, distance_upper_bound=reach * 1.5)
    near = np.isfinite(gap)
    signed = np.full(len(pixels), np.nan)
    signed[near] = np.einsum(
        "ij,ij->i", pixels[near] - points[nearest[near]], normal[nearest[near]]
    )
    within = near & (np.abs(signed) <= reach)
    bad = _unclean_vertices(
        len(points), reference.ravel(), signed, nearest, within, outside_max, inside_min
    )
    keep = within & ~bad[np.where(near, nearest, 0)]
    out.ravel()[keep] = signed[keep]
    return out


def _densified(line: np.ndarray, step: float = 0.1) -> np.ndarray:
    """The polyline's vertices every ``step`` px at most, so the nearest vertex is the foot
    of the perpendicular to half a step."""
    seg = np.diff(line, axis=0)
    steps = np.maximum(np.ceil(np.hypot(seg[:, 0], seg[:, 1]) / step).astype(int), 1)
    t = np.concatenate([np.arange(n) / n for n in steps])
    start = np.repeat(np.arange(len(seg)), steps)
    return line[start] + seg[start] * t[:, None]


def _normals_towards_air(reference: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Unit normals at ``points`` (row, col) pointing down the smoothed image's gradient,
    that is from tissue towards air."""
    gy, gx = np.gradient(ndimage.gaussian_filter(reference, 2.0))
    gradient = np.stack(
        [
            ndimage.map_coordinates(gy, points.T, order=1),
            ndimage.map_coordinates(gx, points.T, order=1),
        ],
        axis=1,
    )
    return -gradient / np.maximum(np.linalg.norm(gradient, axis=1, keepdims=True), 1e-9)


def _unclean_vertices(
    n_vertices: int,
    values: np.ndarray,
    signed: np.ndarray,
    nearest: np.ndarray,
    within: np.ndarray,
    outside_max: float,
    inside_min: float,
) -> np.ndarray:
    """Per contour vertex: True where the edge is not a clean air / tissue step, that is a
    pixel more than 2 px outside is not air or one more than 2 px inside is not tissue."""
    bad = np.zeros(n_vertices, dtype=bool)
    outside = within & (signed > 2.0)
    inside = within & (signed < -2.0)
    bad[nearest[outside & (values > outside_max)]] = True
    bad[nearest[inside & (values < inside_min)]] = True
    # a stretch is bad if any vertex within 2 px of it is: widen by the densified step count
    return ndimage.binary_dilation(bad, iterations=20) if bad.any() else bad


def _outline_only(reference: np.ndarray, level: float, band: int = 3) -> np.ndarray | None:
    """The image with everything but a thin band around the body's outline flattened: the
    body is the largest region above ``level`` once thin things (the table, tubes) are
    opened away; inside it is set high and outside low, so the only ``level`` contour left
    is the outline (not the lungs, the table or the edge of the scan field)."""
    above = ndimage.binary_opening(reference > level, structure=np.ones((5, 5)))
    labels, n = ndimage.label(above)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    body = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    inner = ndimage.binary_erosion(body, iterations=band)
    near = ndimage.binary_dilation(body, iterations=band) & ~inner
    high, low = max(float(reference.max()), level + 1), min(float(reference.min()), level - 1)
    return np.where(inner, high, np.where(near, reference, low))


def contour_edge_ttf(
    image: np.ndarray,
    distance: np.ndarray,
    spacing: float = 1.0,
    reach: float = 8.0,
    bin_px: float = 0.1,
) -> TaskTransferFunction:
    """TTF of an edge whose signed distance map comes from ``contour_distance``."""
    d, esf, n = edge_spread(image, distance, -reach, reach, bin_px)
    return ttf_from_esf(d, esf, spacing, n)
