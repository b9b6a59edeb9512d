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
real anatomy within 10 % of SD(low - normal), whatever its grain (2-4 % lower for a soft
kernel's grain at the same SD).

The grain: the same estimate over a 3 x 3 window divided by the 7 x 7 one. Both are scaled
to white noise, so fine-grained noise (a sharp kernel, the simulator's ramp filter) gives
about 1 and the coarser mottle of a soft-tissue kernel less: simulated 5 % noise on six real
series 0.91-1.00 at ramp grain and 0.58-0.62 with a soft kernel's (a 0.8-pixel Gaussian
apodization); the series' own normal-dose noise 0.48-0.72 for the standard and soft
kernels, 0.94 for the lung kernel (bench/results/noise-choice.md). The automatic choice
picks the model family taught that grain (``choice.py``).
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
MAD_TO_SD = 1.4826
FINE_WINDOW_PX = 3  # the grain's numerator (see above)
# Grain at or above this is fine (ramp, sharp kernels), below it coarse (soft kernels): the
# middle of the gap between the two measured above.
FINE_GRAIN_FROM = 0.8
MIN_PIXELS = 1500  # fewer soft-tissue pixels in a slice: no estimate from it
SLICES = 5  # slices read per series, spread over its middle 80 %


def soft_tissue_mask(hu: np.ndarray) -> np.ndarray:
    """Soft tissue of one slice [H, W], away from its borders with anything else."""
    smooth = ndi.gaussian_filter(np.asarray(hu, dtype=np.float32), MASK_SMOOTHING_PX)
    low, high = SOFT_TISSUE_HU
    mask = (smooth > low) & (smooth < high)
    square = np.ones((3, 3), dtype=bool)
    return ndi.binary_erosion(mask, structure=square, iterations=MASK_EROSION_PX)


def _residual_sd(hu: np.ndarray, mask: np.ndarray, window: int) -> float:
    """MAD-robust SD of the pixel less its ``window``-square mean, scaled to white noise."""
    residual = (hu - ndi.uniform_filter(hu, window, mode="reflect"))[mask]
    mad = float(np.median(np.abs(residual - np.median(residual))))
    return MAD_TO_SD * mad / float(np.sqrt(1.0 - 1.0 / window**2))


def slice_noise(hu: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    """The noise SD (HU) of one slice in soft tissue, or None when it has too little."""
    hu = np.asarray(hu, dtype=np.float32)
    mask = soft_tissue_mask(hu) if mask is None else mask
    if int(mask.sum()) < MIN_PIXELS:
        return None
    return _residual_sd(hu, mask, WINDOW_PX)


def slice_grain(
    hu: np.ndarray, mask: np.ndarray | None = None, noise_sd: float | None = None
) -> float | None:
    """The noise grain of one slice (about 1 fine, lower coarse), or None (too little soft
    tissue, or no noise to measure). ``noise_sd``: ``slice_noise`` of the same slice and
    mask when the caller has it, so the 7 x 7 estimate is not computed twice."""
    hu = np.asarray(hu, dtype=np.float32)
    mask = soft_tissue_mask(hu) if mask is None else mask
    if int(mask.sum()) < MIN_PIXELS:
        return None
    wide = _residual_sd(hu, mask, WINDOW_PX) if noise_sd is None else noise_sd
    return None if wide <= 0.0 else _residual_sd(hu, mask, FINE_WINDOW_PX) / wide


def grain_name(grain: float | None) -> str | None:
    """``fine`` or ``coarse`` for a measured grain (None: unknown)."""
    if grain is None:
        return None
    return "fine" if grain >= FINE_GRAIN_FROM else "coarse"


@dataclass(frozen=True)
class NoiseEstimate:
    """A series' noise: the median over the slices measured, and what went into it."""

    sd_hu: float | None  # None: no slice had enough soft tissue
    per_slice: tuple[float | None, ...]
    slices: tuple[int, ...]  # 0-based indices of the slices read
    grain: float | None = None  # median over the slices (slice_grain)

    @property
    def grain_name(self) -> str | None:
        return grain_name(self.grain)

    def describe(self) -> str:
        if self.sd_hu is None:
            return f"no soft tissue to measure noise in ({len(self.slices)} slices tried)"
        used = sum(value is not None for value in self.per_slice)
        grain = "" if self.grain is None else f", {self.grain_name} grain {self.grain:.2f}"
        return f"measured noise {self.sd_hu:.1f} HU (soft tissue, {used} slices{grain})"


def sample_indices(n_slices: int, count: int = SLICES) -> list[int]:
    """``count`` slices spread over the middle 80 % of a series (ends are often partial)."""
    if n_slices <= count:
        return list(range(n_slices))
    at = np.linspace(0.1 * (n_slices - 1), 0.9 * (n_slices - 1), count)
    return sorted({round(float(i)) for i in at})


def volume_noise(slices: np.ndarray, indices: list[int] | None = None) -> NoiseEstimate:
    """The estimate over slices [S, H, W] already in memory (all of them by default)."""
    indices = list(range(len(slices))) if indices is None else indices
    masks = [soft_tissue_mask(slice_hu) for slice_hu in slices]
    values = tuple(slice_noise(s, m) for s, m in zip(slices, masks, strict=True))
    found = [value for value in values if value is not None]
    sd = float(np.median(found)) if found else None
    grains = [
        None if sd_one is None else slice_grain(s, m, sd_one)
        for s, m, sd_one in zip(slices, masks, values, strict=True)
    ]
    measured = [value for value in grains if value is not None]
    grain = float(np.median(measured)) if measured else None
    return NoiseEstimate(sd, values, tuple(indices), grain)


def series_noise(series: CTSeries, count: int = SLICES) -> NoiseEstimate:
    """The estimate of a series from ``count`` of its slices (read here, a few at most)."""
    indices = sample_indices(series.n_slices, count)
    slices = np.stack([series.read_slice_hu(i) for i in indices])
    return volume_noise(slices, indices)
