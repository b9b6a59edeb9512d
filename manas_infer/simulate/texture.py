"""The grain of inserted noise: the reconstruction kernel's share of a low-dose image's look.

The simulator (``dose.py``) brings its projection noise back with a plain ramp (Ram-Lak)
filter, the sharpest FBP there is: its noise power spectrum (NPS) rises to the pixel grid's
Nyquist frequency, TG-233 centroid about 0.29 cycles/pixel. A scanner reconstructs with a
kernel, a ramp times an apodization window. A lung kernel leaves the noise about as fine
(the a0001 chest's Philips "L": 0.28; the LCD phantom's sharp FBP: 0.22), but the
soft-tissue kernels that most low-dose series are read in make it a coarse mottle: 0.14-0.19
cycles/pixel in the uniform soft tissue of the B, B30f, B40f and Br38f series here
(bench/results/noise-texture.md). The shipped v3 networks, shown only ramp-grain noise,
leave that mottle almost untouched.

FBP is linear, so reconstructing the noise with an apodized ramp is the same as filtering
the ramp-reconstructed noise image with the window's 2-D filter. A Gaussian window of
``sigma`` pixels is used here: one number spans ramp-sharp (0) to soft-tissue kernels (0.8
gives the soft kernels' 0.15-0.17 cycles/pixel, 1.2 a smoother 0.11-0.13). The filtered
noise is scaled back to its own standard deviation, so the grain changes and the noise
level does not: the level stays the dose's (and the training noise gain's) alone, as the
noise calibration of the automatic choice expects.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Below this a Gaussian leaves the ramp's grain as it is (NPS centroid moved < 1 %): skipped.
MIN_SIGMA_PX = 0.25


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """[B, 1, H, W] -> the same, blurred by a separable Gaussian with reflected borders
    (a few lines of conv2d; no image library works on batched tensors on the device)."""
    radius = max(1, round(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return F.conv2d(x, kernel.view(1, 1, -1, 1))


def apodize(noise: Tensor, sigma_px: Tensor | list[float]) -> Tensor:
    """Noise images [B, 1, H, W], each given the grain of a Gaussian-apodized ramp of its own
    ``sigma_px`` and scaled back to its own standard deviation."""
    out = noise.clone()
    for i, sigma in enumerate(torch.as_tensor(sigma_px, dtype=torch.float64).tolist()):
        if sigma < MIN_SIGMA_PX:
            continue
        coarse = gaussian_blur(noise[i : i + 1], sigma)
        before, after = noise[i].std(), coarse.std()
        out[i] = coarse[0] * (before / after.clamp_min(1e-6))
    return out
