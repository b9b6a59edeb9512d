"""Image quality metrics, in torch so they run where the images are (GPU during training).

PSNR and SSIM follow the usual definitions: SSIM as Wang et al. (2004) with an 11x11
Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, mean over the valid part of the image,
which is what scikit-image computes with ``gaussian_weights=True,
use_sample_covariance=False`` (the test oracle). Both take a ``data_range``: 1 for images
normalised over [-1024, 3072] HU (the full range), or a display window in HU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from manas_infer.hu import HU_MAX, HU_MIN, SOFT_TISSUE_WINDOW, window_bounds


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image PSNR in dB for [B, 1, H, W] batches; inf where the images are equal."""
    mse = ((pred.float() - target.float()) ** 2).flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5, device=None) -> Tensor:
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = (g / g.sum()).float()
    return (g[:, None] * g[None, :])[None, None]


def ssim(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image SSIM for [B, 1, H, W] batches (valid-region mean, Gaussian window)."""
    x, y = pred.float(), target.float()
    w = _gaussian_window(device=x.device)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, w)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(dim=1)


def window_normalized(x: Tensor, window: tuple[float, float]) -> Tensor:
    """Normalised [0, 1]-over-full-range images -> clipped to a HU window, rescaled to [0, 1]."""
    low, high = window_bounds(window)
    hu = x * (HU_MAX - HU_MIN) + HU_MIN
    return ((hu.clamp(low, high) - low) / (high - low)).to(x.dtype)


def quality(pred: Tensor, target: Tensor) -> dict[str, Tensor]:
    """PSNR and SSIM per image over the full range and in the soft-tissue window."""
    pw, tw = (
        window_normalized(pred, SOFT_TISSUE_WINDOW),
        window_normalized(target, SOFT_TISSUE_WINDOW),
    )
    return {
        "psnr": psnr(pred, target),
        "ssim": ssim(pred, target),
        "psnr_window": psnr(pw, tw),
        "ssim_window": ssim(pw, tw),
    }


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation, as the paper's tables report them."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return float("inf"), 0.0
    m = sum(finite) / len(finite)
    return m, math.sqrt(sum((v - m) ** 2 for v in finite) / len(finite))
