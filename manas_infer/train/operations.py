"""The candidate operations on a cell edge (SPEC section 2; the paper's Table 1 is lost).

Every operation but ``skip_connect`` is ReLU -> core convolution -> 1x1 convolution and keeps
the channel count and the spatial size. There is no batch norm (the paper drops it because it
hurts PSNR-oriented restoration), no ``none`` op and no pooling: a denoiser has no use for an
edge that outputs zeros or for blurring by pooling.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def relu_conv_1x1(core: nn.Module, C: int) -> nn.Sequential:
    """ReLU -> ``core`` -> 1x1 conv: the shape the paper gives every non-identity op."""
    return nn.Sequential(nn.ReLU(), core, nn.Conv2d(C, C, 1))


def conv(C: int, k: int, dilation: int = 1) -> nn.Sequential:
    """A dense k x k convolution (dilated when ``dilation`` > 1), padded to keep the size."""
    padding = dilation * (k - 1) // 2
    return relu_conv_1x1(nn.Conv2d(C, C, k, padding=padding, dilation=dilation), C)


def sep_conv(C: int, k: int) -> nn.Sequential:
    """Depthwise k x k then pointwise.

    The op's trailing 1x1 conv *is* the pointwise half: a second 1x1 conv right after it,
    with nothing non-linear in between, would compose into one and only add parameters.
    """
    return relu_conv_1x1(nn.Conv2d(C, C, k, padding=k // 2, groups=C), C)


# The search space: name -> builder taking the channel count. Order fixes the alpha columns.
OPS: dict[str, Callable[[int], nn.Module]] = {
    "skip_connect": lambda C: nn.Identity(),
    "conv_3x3": lambda C: conv(C, 3),
    "conv_5x5": lambda C: conv(C, 5),
    "sep_conv_3x3": lambda C: sep_conv(C, 3),
    "sep_conv_5x5": lambda C: sep_conv(C, 5),
    "dil_conv_3x3": lambda C: conv(C, 3, dilation=2),
    "dil_conv_5x5": lambda C: conv(C, 5, dilation=2),
}

PRIMITIVES: tuple[str, ...] = tuple(OPS)
