"""A series' own noise, measured in soft tissue, robustly, in a second or less.

A real scan's dose is not one of a simulator's 10 / 5 / 2.5 %: the automatic choice
(``choice.py``) needs the noise the series actually carries. The estimate:

- soft tissue: pixels whose 2-pixel Gaussian-smoothed value lies in -100..150 HU (the
  smoothing keeps a 2.5 %-dose image's noise from tearing the mask apart), eroded by
  4 pixels so no window below reaches fat, air or bone;
- a high-pass residual, the pixel less the mean of its 7 x 7 window. A wide window, not a
  Laplacian, because CT noise is correlated: a 3 x 3 Laplacian returned 45 % of the true SD
  on real FBP noise (the LCD phantom), the 7 x 7 mean residual 99 %. FBP noise has almost
  no power at low frequency, so the window mean holds almost none of it, while for white
  noise the residual's variance is exactly (1 - 1/49) of the noise's, corrected below;
- the SD of the residual as 1.4826 x its median absolute deviation, so vessels, organ
  borders and lesions in the mask do not count as noise.

Measured (tests/test_noise_choice.py, bench/results/noise-choice.md): white noise within
1 %, real FBP noise (LCD phantom, 10-100 % dose) within 2 %, simulated low-dose noise on
real anatomy within 10 % of SD(low - normal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from manas_infer.data.series import CTSeries

SOFT_TISSUE_HU = (-100.0, 150.0)
MASK_SMOOTHING_PX = 2.0
MASK_EROSION_PX = 4
WINDOW_PX = 7
# Var(x - mean_7x7(x)) = (1 - 1/49) Var(x) for white noise; FBP noise needs no more.
WHITE_CORRECTION = 1.0 / np.sqrt(1.0 - 1.0 / WINDOW_PX**2)
MAD_TO_SD = 1.4826
MIN_PIXELS = 1500  # fewer soft-tissue pixels in a slice: no estimate from it
SLICES = 5  # slices read per series, spread over its middle 80 %


def soft_tissue_mask(hu: np.ndarray) -> np.ndarray:
    """Soft tissue of one slice [H, W], away from its borders with anything else."""
    smooth = ndi.gaussian_filter(np.asarray(hu, dtype=np.float32), MASK_SMOOTHING_PX)
    low, high = SOFT_TISSUE_HU
    mask = (smooth > low) & (smooth < high)
    square = np.ones((3, 3), dtype=bool)
    return ndi.binary_erosion(mask, structure=square, iterations=MASK_EROSION_PX)


def slice_noise(hu: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    """The noise SD (HU) of one slice in soft tissue, or None when it has too little."""
    hu = np.asarray(hu, dtype=np.float32)
    mask = soft_tissue_mask(hu) if mask is None else mask
    if int(mask.sum()) < MIN_PIXELS:
        return None
    residual = (hu - ndi.uniform_filter(hu, WINDOW_PX, mode="reflect"))[mask]
    mad = float(np.median(np.abs(residual - np.median(residual))))
    return MAD_TO_SD * WHITE_CORRECTION * mad


@dataclass(frozen=True)
class NoiseEstimate:
    """A series' noise: the median over the slices measured, and what went into it."""

    sd_hu: float | None  # None: no slice had enough soft tissue
    per_slice: tuple[float | None, ...]
    slices: tuple[int, ...]  # 0-based indices of the slices read

    def describe(self) -> str:
        if self.sd_hu is None:
            return f"no soft tissue to measure noise in ({len(self.slices)} slices tried)"
        used = sum(value is not None for value in self.per_slice)
        return f"measured noise {self.sd_hu:.1f} HU (soft tissue, {used} slices)"


def sample_indices(n_slices: int, count: int = SLICES) -> list[int]:
    """``count`` slices spread over the middle 80 % of a series (ends are often partial)."""
    if n_slices <= count:
        return list(range(n_slices))
    at = np.linspace(0.1 * (n_slices - 1), 0.9 * (n_slices - 1), count)
    return sorted({round(float(i)) for i in at})


def volume_noise(slices: np.ndarray, indices: list[int] | None = None) -> NoiseEstimate:
    """The estimate over slices [S, H, W] already in memory (all of them by default)."""
    indices = list(range(len(slices))) if indices is None else indices
    values = tuple(slice_noise(slice_hu) for slice_hu in slices)
    found = [value for value in values if value is not None]
    sd = float(np.median(found)) if found else None
    return NoiseEstimate(sd, values, tuple(indices))


def series_noise(series: CTSeries, count: int = SLICES) -> NoiseEstimate:
    """The estimate of a series from ``count`` of its slices (read here, a few at most)."""
    indices = sample_indices(series.n_slices, count)
    slices = np.stack([series.read_slice_hu(i) for i in indices])
    return volume_noise(slices, indices)
