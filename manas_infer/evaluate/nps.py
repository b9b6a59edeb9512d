"""Noise magnitude and texture: the 2-D noise power spectrum (NPS) of AAPM TG-233.

NPS(fx, fy) = dx dy / (Nx Ny) <|DFT(ROI - trend)|^2>, averaged over ROIs, so that its
integral over frequency equals the pixel variance (Parseval). The radial average gives the
1-D curve whose mean frequency (centroid) and peak say what the noise looks like: a denoiser
that moves them towards zero leaves the blotchy, "waxy" texture radiologists dislike, even
when its noise SD is low. Written here because numpy gives the FFT but no library in this
project's dependencies computes a TG-233 NPS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class NoisePowerSpectrum:
    """A radially averaged NPS and the numbers read off it."""

    frequency: np.ndarray  # mm^-1 (or pixel^-1 when the spacing is unknown), bin centres
    nps: np.ndarray  # HU^2 mm^2, radial average up to the Nyquist frequency
    sd: float  # HU: sqrt of the 2-D NPS integral = pooled SD of the detrended ROIs
    mean_frequency: float  # centroid of the radial NPS
    peak_frequency: float  # where the radial NPS is largest
    n_rois: int
    roi_size: int
    pixel_spacing: float

    def to_dict(self, curve: bool = True) -> dict:
        out = {
            "sd_hu": self.sd,
            "mean_frequency": self.mean_frequency,
            "peak_frequency": self.peak_frequency,
            "n_rois": self.n_rois,
            "roi_size": self.roi_size,
            "pixel_spacing_mm": self.pixel_spacing,
        }
        if curve:
            out["frequency"] = [round(float(frequency), 5) for frequency in self.frequency]
            out["nps"] = [float(f"{value:.5g}") for value in self.nps]
        return out


def detrend(roi: np.ndarray, order: int = 2) -> np.ndarray:
    """The ROI minus its least-squares polynomial surface of ``order`` (0: the mean).

    TG-233 removes slow trends (cupping, residual anatomy) before the FFT so that they do not
    leak into the lowest frequencies as if they were noise."""
    roi = np.asarray(roi, dtype=np.float64)
    if order == 0:
        return roi - roi.mean()
    n_rows, n_cols = roi.shape
    y, x = np.mgrid[0:n_rows, 0:n_cols]
    y = (y - (n_rows - 1) / 2) / n_rows
    x = (x - (n_cols - 1) / 2) / n_cols
    terms = [x**i * y**j for i in range(order + 1) for j in range(order + 1 - i)]
    design = np.stack([t.ravel() for t in terms], axis=1)
    coef, *_ = np.linalg.lstsq(design, roi.ravel(), rcond=None)
    return roi - (design @ coef).reshape(roi.shape)


def nps_2d(
    rois: np.ndarray, spacing: float = 1.0, order: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fy, fx, NPS) of ``rois`` [K, N, M], NPS fftshifted with DC in the middle, HU^2 mm^2."""
    rois = np.asarray(rois, dtype=np.float64)
    if rois.ndim == 2:
        rois = rois[None]
    k, n_rows, n_cols = rois.shape
    power = np.zeros((n_rows, n_cols))
    for roi in rois:
        power += np.abs(np.fft.fft2(detrend(roi, order))) ** 2
    nps = np.fft.fftshift(power / k) * spacing * spacing / (n_rows * n_cols)
    fy = np.fft.fftshift(np.fft.fftfreq(n_rows, d=spacing))
    fx = np.fft.fftshift(np.fft.fftfreq(n_cols, d=spacing))
    return fy, fx, nps


def radial_average(
    fy: np.ndarray, fx: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Average ``values`` [len(fy), len(fx)] over rings one frequency step wide, up to the
    Nyquist frequency (beyond it only the corners of the square contribute)."""
    step = min(abs(fx[1] - fx[0]), abs(fy[1] - fy[0]))
    radius = np.hypot(*np.meshgrid(fy, fx, indexing="ij"))
    index = np.rint(radius / step).astype(np.int64)
    counts = np.bincount(index.ravel())
    sums = np.bincount(index.ravel(), weights=values.ravel())
    n_bins = int(np.floor(min(np.abs(fx).max(), np.abs(fy).max()) / step + 1e-6)) + 1
    frequency = np.arange(n_bins) * step
    return frequency, sums[:n_bins] / np.maximum(counts[:n_bins], 1)


def noise_power_spectrum(
    rois: np.ndarray, spacing: float = 1.0, order: int = 2
) -> NoisePowerSpectrum:
    """The TG-233 NPS of noise-only ROIs [K, N, N] (pixel spacing in mm)."""
    rois = np.asarray(rois, dtype=np.float64)
    if rois.ndim == 2:
        rois = rois[None]
    fy, fx, nps = nps_2d(rois, spacing, order)
    df = (fy[1] - fy[0]) * (fx[1] - fx[0])
    variance = float(nps.sum() * df)
    frequency, radial = radial_average(fy, fx, nps)
    # TG-233's average frequency: the centroid of the 1-D radial curve (Solomon et al. 2012)
    mean_f = float((frequency * radial).sum() / radial.sum()) if radial.sum() > 0 else 0.0
    smooth = ndimage.uniform_filter1d(radial, 3, mode="nearest")  # one noisy bin is no peak
    return NoisePowerSpectrum(
        frequency,
        radial,
        float(np.sqrt(variance)),
        mean_f,
        float(frequency[int(np.argmax(smooth))]),
        int(rois.shape[0]),
        int(rois.shape[1]),
        float(spacing),
    )


def uniform_rois(
    full: np.ndarray,
    size: int,
    hu_range: tuple[float, float] = (-150.0, 200.0),
    max_rois: int = 4,
    sd_factor: float = 1.5,
) -> list[tuple[int, int]]:
    """Top-left corners of up to ``max_rois`` non-overlapping ``size`` x ``size`` windows of a
    full-dose slice that lie wholly in soft tissue (``hu_range``) and are the most uniform:
    their local SD is at most ``sd_factor`` times the lowest found. Why: noise must be
    measured where the anatomy is flat, or structure is counted as noise."""
    full = np.asarray(full, dtype=np.float64)
    if min(full.shape) < size:
        return []
    low, high = hu_range
    lowest, highest = ndimage.minimum_filter(full, size), ndimage.maximum_filter(full, size)
    inside = (lowest >= low) & (highest <= high)
    mean = ndimage.uniform_filter(full, size)
    sd = np.sqrt(np.maximum(ndimage.uniform_filter(full * full, size) - mean * mean, 0.0))
    # the filters are centred; a window's top-left corner is its centre minus size // 2
    half = size // 2
    valid = np.zeros_like(inside)
    valid[half : full.shape[0] - (size - half) + 1, half : full.shape[1] - (size - half) + 1] = True
    candidates = np.flatnonzero((inside & valid).ravel())
    if candidates.size == 0:
        return []
    order = candidates[np.argsort(sd.ravel()[candidates], kind="stable")]
    limit = sd.ravel()[order[0]] * sd_factor
    taken = np.zeros(full.shape, dtype=bool)
    corners: list[tuple[int, int]] = []
    for flat in order:
        if sd.ravel()[flat] > limit or len(corners) == max_rois:
            break
        row, col = divmod(int(flat), full.shape[1])
        row, col = row - half, col - half
        if taken[row : row + size, col : col + size].any():
            continue
        taken[row : row + size, col : col + size] = True
        corners.append((row, col))
    return corners


def crop(image: np.ndarray, corners: list[tuple[int, int]], size: int) -> np.ndarray:
    """The ``size`` x ``size`` ROIs at ``corners`` as one [K, size, size] array."""
    rois = [image[row : row + size, col : col + size] for row, col in corners]
    return np.stack(rois).astype(np.float64)
