"""What an exported model file computes: HU in, HU out (SPEC section 3).

The trained networks work on [0, 1]-normalised images whose sides are multiples of
2^(D-1). Both conventions go *inside* the graph, so a caller hands over raw HU slices of any
size and never needs to know the training range or the grid depth:

    HU -> clamp to [HU_MIN, HU_MAX] -> normalise -> pad (edge) to a multiple -> body
       -> crop -> denormalise -> + input (air noise below HU_MIN: + HU_MIN)

The network was trained on images clamped to [HU_MIN, HU_MAX] (``train/augment.py``), so its
correction is meant for the clamped image. Low-dose noise pushes air below HU_MIN (air is
-1000 HU, the noise 50-100 HU); adding the correction to those raw values kept the lower
half of the air's noise and shifted its mean by -8 to -16 HU (v3 at 5 %; air RMSE 28-44 HU
where the clamped image gives 16-22). So values between scanner padding and HU_MIN get the
correction on HU_MIN, as in training. Scanner padding (-1500 HU and below, ``hu.is_padding``)
and metal above HU_MAX pass through with the correction added, never clipped: the runtime
returns padding as it came and metal keeps its number. The body may run in float16 while
the input, the residual sum and the output stay float32, so half precision costs noise-level
accuracy only, not the HU quantisation of the image itself.

Self-ensemble: the network is not equivariant to turning or mirroring the slice, so its
residual error changes with the slice's orientation while the anatomy's correction does not.
``ensemble`` = N runs the network on the first N orientations of ``ORIENTATIONS`` (each one
its own inverse, so the correction is turned back the same way) and averages the N
corrections. Measured at 5 % on whole slices of two series that are neither trained on nor
test patients, before it was adopted (bench/results/ensemble.md): +0.38 dB with the
transpose, +0.48 with the half turn too, +0.60 with all six, on every slice; N times the
FLOPs, so N = 3 keeps a 23.6-GFLOP net under a tenth of RED-CNN's 917 GFLOPs (issue 12).
The orientations turn the padded image, so any slice size works (a transposed slice is run
on its own, not batched with the others).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manas_infer.hu import HU_MAX, HU_MIN, is_padding


def _transpose(x: Tensor) -> Tensor:
    return x.transpose(-2, -1)


def _half_turn(x: Tensor) -> Tensor:
    return x.flip(-2, -1)


def _anti_transpose(x: Tensor) -> Tensor:
    return x.flip(-2, -1).transpose(-2, -1)


def _mirror(x: Tensor) -> Tensor:
    return x.flip(-1)


def _flip(x: Tensor) -> Tensor:
    return x.flip(-2)


# The self-ensemble's orientations in the order they are added, each its own inverse: the
# best two- and three-member sets measured (bench/results/ensemble.md: with the transpose
# +0.38 dB, the mirror +0.29; identity, transpose and half turn +0.48, identity, mirror and
# flip +0.41), then the anti-transpose that completes their group, then the two mirrors.
ORIENTATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda x: x,
    "transpose": _transpose,
    "half turn": _half_turn,
    "anti-transpose": _anti_transpose,
    "mirror": _mirror,
    "flip": _flip,
}


class HUModel(nn.Module):
    """Wrap a residual denoiser (``residual(x)``: the correction to add) for HU input.

    ``body_dtype`` float16 runs the network in half precision (the GPU variant);
    ``ensemble`` N averages the corrections of the first N ``ORIENTATIONS``.
    """

    def __init__(
        self,
        net: nn.Module,
        size_multiple: int,
        body_dtype: torch.dtype = torch.float32,
        ensemble: int = 1,
    ):
        super().__init__()
        if not 1 <= ensemble <= len(ORIENTATIONS):
            raise ValueError(f"ensemble must be 1-{len(ORIENTATIONS)}, got {ensemble}")
        self.net = net.to(body_dtype)
        self.size_multiple = int(size_multiple)
        self.body_dtype = body_dtype
        self.orientations = list(ORIENTATIONS.values())[:ensemble]

    def _correction(self, x: Tensor) -> Tensor:
        """The network's correction of normalised ``x``, averaged over the orientations."""
        total = None
        for turn in self.orientations:
            part = turn(self.net.residual(turn(x).to(self.body_dtype)).float())
            total = part if total is None else total + part
        return total / len(self.orientations)

    def forward(self, hu: Tensor) -> Tensor:
        inside = hu.clamp(HU_MIN, HU_MAX)
        x = (inside - HU_MIN) / (HU_MAX - HU_MIN)
        H, W = x.shape[-2], x.shape[-1]
        multiple = self.size_multiple
        if multiple > 1:
            # Edge padding on the bottom and right only, so the crop back is a plain slice.
            pad_w, pad_h = (
                (multiple - W % multiple) % multiple,
                (multiple - H % multiple) % multiple,
            )
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        correction = self._correction(x)[..., :H, :W]
        base = torch.where(is_padding(hu), hu, hu.clamp_min(HU_MIN))
        return base + correction * (HU_MAX - HU_MIN)
