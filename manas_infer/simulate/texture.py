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

Only the stochastic band is rescaled. A kernel's window passes the lowest frequencies as
they are (gain 1 at zero frequency), and there the simulated noise is not random grain but
the dose's structure: photon-starvation bias and the envelope of streaks behind bone and
through a wide body. Rescaling the whole filtered image multiplied that structure 2.7-fold
at sigma 0.8 and 4-fold at 1.2 (a pancreas slice at 5 %: mean error in the body 1.6 ->
7.7 HU), and a network trained on it learnt to shift CT numbers and soften outlines. So the
part below ``STRUCTURE_SIGMA_PX`` (where a Gaussian window of sigma <= 1.4 px still passes
over 90 %) is kept unscaled, and the rest is filtered and scaled to restore the total SD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Below this a Gaussian leaves the ramp's grain as it is (NPS centroid moved < 1 %): skipped.
MIN_SIGMA_PX = 0.25
# The noise's structured low band: a Gaussian blur of this many pixels (about 0.05 cycles/px).
STRUCTURE_SIGMA_PX = 3.0


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
    ``sigma_px`` at its own standard deviation, its low band (the dose's structure) unscaled."""
    out = noise.clone()
    for i, sigma in enumerate(torch.as_tensor(sigma_px, dtype=torch.float64).tolist()):
        if sigma < MIN_SIGMA_PX:
            continue
        image = noise[i : i + 1].double()
        structure = gaussian_blur(image, STRUCTURE_SIGMA_PX)
        grain = gaussian_blur(image - structure, sigma)
        out[i] = (structure + _restoring_scale(structure, grain, image) * grain)[0].to(out)
    return out


def _restoring_scale(structure: Tensor, grain: Tensor, image: Tensor) -> float:
    """k >= 0 with std(structure + k * grain) == std(image): the root of a quadratic in k."""
    s, g = structure - structure.mean(), grain - grain.mean()
    var_s, var_g, cov = float(s.pow(2).mean()), float(g.pow(2).mean()), float((s * g).mean())
    target = float((image - image.mean()).pow(2).mean())
    if var_g <= 0:
        return 0.0
    disc = cov * cov - var_g * (var_s - target)
    return max(0.0, (-cov + max(disc, 0.0) ** 0.5) / var_g)
