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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manas_infer.hu import HU_MAX, HU_MIN, is_padding


class HUModel(nn.Module):
    """Wrap a residual denoiser (``residual(x)``: the correction to add) for HU input.

    ``body_dtype`` float16 runs the network in half precision (the GPU variant).
    """

    def __init__(self, net: nn.Module, size_multiple: int, body_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.net = net.to(body_dtype)
        self.size_multiple = int(size_multiple)
        self.body_dtype = body_dtype

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
        correction = self.net.residual(x.to(self.body_dtype)).float()[..., :H, :W]
        base = torch.where(is_padding(hu), hu, hu.clamp_min(HU_MIN))
        return base + correction * (HU_MAX - HU_MIN)
