"""The CT-number bias guard: the very-low-frequency part of what a network removes is bias.

FBP noise has (almost) no power at zero and very low spatial frequency (the ramp filter
takes it out), so whatever a network removes at scales of tens of pixels is not noise: it
is a shift of CT numbers (the first shipped 5 % model moved whole slices by about -7 HU and
the air of a normal-dose head by -8 HU). The guard subtracts a wide Gaussian low-pass of
``removed = input - net(input)`` before the strength is applied, so the mean HU of air,
fat, soft tissue and bone stays where the scanner put it while the noise the network found
is still removed (bench/results/noise-choice.md measures both).

The low-pass ignores scanner padding (pixels far below air, outside the reconstruction
circle), which a network may change by hundreds of HU; it is computed on a 4x decimated
grid (block mean, Gaussian, bilinear back), which is what keeps it at a few milliseconds
a slice: the full-resolution filter took longer than the network itself on a CPU.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from manas_infer.hu import is_padding

# Uniform regions of a normal-dose slice (after a 1.5 px Gaussian), eroded so a region's
# mean is not its border's: where the guard's promise (mean HU kept within 2 HU of the full
# dose) is measured, by bench/bench_noise_choice.py and the tests. (low HU, high HU, erosion)
UNIFORM_REGIONS = {
    "air": (-1100.0, -950.0, 4),
    "fat": (-150.0, -60.0, 3),
    "soft tissue": (20.0, 80.0, 3),
    "bone": (400.0, 3000.0, 2),
}
# Chosen by measurement: bench/results/noise-choice.md (bench/bench_noise_choice.py).
BIAS_GUARD_SIGMA_PX = 12.0
_DECIMATION = 4


def _block_mean(x: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks of [N, H, W] (H and W multiples of factor)."""
    n, h, w = x.shape
    return x.reshape(n, h // factor, factor, w // factor, factor).mean(axis=(2, 4))


def _smooth(x: np.ndarray, sigma_px: float) -> np.ndarray:
    """A Gaussian low-pass of [N, H, W] with ``sigma_px`` (full-resolution pixels)."""
    _, h, w = x.shape
    factor = _DECIMATION if sigma_px >= 2 * _DECIMATION else 1
    pad_h, pad_w = -h % factor, -w % factor
    padded = np.pad(x, ((0, 0), (0, pad_h), (0, pad_w)), mode="edge") if pad_h or pad_w else x
    small = _block_mean(padded, factor) if factor > 1 else padded
    # The block mean itself blurs by a box of factor pixels (variance (factor^2 - 1) / 12).
    inner = float(np.sqrt(max(sigma_px**2 - (factor * factor - 1) / 12.0, 0.25))) / factor
    small = ndi.gaussian_filter(small, (0, inner, inner), mode="reflect", truncate=3.0)
    if factor == 1:
        return small
    return _upsample(_upsample(small, factor, axis=1), factor, axis=2)[:, :h, :w]


def _upsample(x: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """Linear interpolation by ``factor`` along ``axis``, block centres to pixel centres
    (scipy's zoom does the same about a hundred times slower)."""
    n = x.shape[axis]
    at = np.clip((np.arange(n * factor) + 0.5) / factor - 0.5, 0, n - 1)
    low = np.minimum(at.astype(np.int64), n - 2) if n > 1 else np.zeros(n * factor, np.int64)
    weight = (at - low).astype(np.float32) if n > 1 else np.zeros(n * factor, np.float32)
    shape = [1] * x.ndim
    shape[axis] = -1
    weight = weight.reshape(shape)
    below = np.take(x, low, axis=axis)
    above = np.take(x, np.minimum(low + 1, n - 1), axis=axis)
    return below + (above - below) * weight


def low_frequencies(removed: np.ndarray, hu: np.ndarray, sigma_px: float) -> np.ndarray:
    """The Gaussian low-pass (``sigma_px``) of ``removed`` over the pixels that are anatomy.

    ``removed`` and ``hu`` (the network's input) are [N, H, W] or [H, W]. Padding pixels do
    not take part (normalised convolution) and get zero, so a network's change to the
    padding never leaks into the patient.
    """
    single = removed.ndim == 2
    removed_stack = np.asarray(removed[None] if single else removed, dtype=np.float32)
    hu_stack = np.asarray(hu[None] if single else hu, dtype=np.float32)
    valid = (~is_padding(hu_stack)).astype(np.float32)
    weight = _smooth(valid, sigma_px)
    mean = _smooth(removed_stack * valid, sigma_px) / np.maximum(weight, 1e-3)
    mean[weight < 1e-3] = 0.0
    mean *= valid
    return mean[0] if single else mean


def uniform_regions(normal: np.ndarray) -> dict[str, np.ndarray]:
    """Masks of air, fat, soft tissue and bone in normal-dose slices ([H, W] or [S, H, W])."""
    stack = normal[None] if normal.ndim == 2 else normal
    found = {}
    for name, (low, high, erode) in UNIFORM_REGIONS.items():
        masks = []
        for slice_hu in stack:
            smooth = ndi.gaussian_filter(np.asarray(slice_hu, dtype=np.float32), 1.5)
            inside = (smooth > low) & (smooth < high)
            masks.append(ndi.binary_erosion(inside, np.ones((3, 3), bool), iterations=erode))
        found[name] = masks[0] if normal.ndim == 2 else np.stack(masks)
    return found


def without_bias(removed: np.ndarray, hu: np.ndarray, sigma_px: float | None) -> np.ndarray:
    """``removed`` less its very-low-frequency part (``sigma_px`` None or 0: unchanged)."""
    if not sigma_px:
        return removed
    return removed - low_frequencies(removed, hu, sigma_px)
