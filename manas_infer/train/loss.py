"""The training loss of search and retrain: L = MSE + lambda * PL (paper Eq. 5, SPEC section 2),
plus two optional terms that need no downloaded weights, because MSE alone rewards the
waxy, over-smoothed look radiologists reject:

- a structural term, ``ssim_weight * (1 - SSIM)`` in the soft-tissue window [-160, 240] HU,
  where texture and faint lesions are read (full-range SSIM hardly sees soft tissue);
- an edge term, ``edge_weight * MSE`` of the horizontal and vertical finite differences,
  which penalises blurred edges more than MSE of the pixels does.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manas_infer.hu import SOFT_TISSUE_WINDOW
from manas_infer.metrics import ssim, window_normalized
from manas_infer.train.perceptual import DEFAULT_LAYER, PerceptualLoss


class DenoiseLoss(nn.Module):
    """MSE plus ``perceptual_weight`` times the VGG-16 perceptual loss, on [0, 1] images.

    With a positive weight the VGG weights must be found (``vgg_weights`` or the torch hub
    cache) or construction raises ``FileNotFoundError``: never a random VGG. With weight 0
    the VGG is never looked for, so MSE-only training needs no file. The result is float32
    even under bf16 autocast, so the loss and its logged value do not carry bf16 rounding.
    """

    def __init__(
        self,
        perceptual_weight: float = 1e-4,
        vgg_weights: Path | str | None = None,
        layer: str = DEFAULT_LAYER,
        ssim_weight: float = 0.0,
        edge_weight: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("perceptual", perceptual_weight), ("SSIM", ssim_weight),
                            ("edge", edge_weight)):  # fmt: skip
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} weight must be >= 0, got {value}")
        self.perceptual_weight = float(perceptual_weight)
        self.ssim_weight, self.edge_weight = float(ssim_weight), float(edge_weight)
        self.perceptual: PerceptualLoss | None = (
            PerceptualLoss.from_file(vgg_weights, layer) if self.perceptual_weight > 0 else None
        )

    def _mse(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)}")
        return F.mse_loss(pred.float(), target.float())

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Scalar float32 loss of a prediction against its normal-dose target."""
        total = self._mse(pred, target)
        if self.perceptual is not None:
            total = total + self.perceptual_weight * self.perceptual(pred, target)
        if self.ssim_weight > 0:
            total = total + self.ssim_weight * self._structural(pred, target)
        if self.edge_weight > 0:
            total = total + self.edge_weight * self._edges(pred, target)
        return total

    def _structural(self, pred: Tensor, target: Tensor) -> Tensor:
        """1 - mean SSIM in the soft-tissue window."""
        window = [window_normalized(image.float(), SOFT_TISSUE_WINDOW) for image in (pred, target)]
        return 1.0 - ssim(*window).mean()

    def _edges(self, pred: Tensor, target: Tensor) -> Tensor:
        """MSE of the finite differences along both axes."""
        prediction, reference = pred.float(), target.float()
        dy = F.mse_loss(prediction.diff(dim=-2), reference.diff(dim=-2))
        dx = F.mse_loss(prediction.diff(dim=-1), reference.diff(dim=-1))
        return dx + dy

    @torch.no_grad()
    def components(self, pred: Tensor, target: Tensor) -> dict[str, float]:
        """``mse``, unweighted ``perceptual`` (only when enabled) and ``total``, for logging."""
        values = {"mse": float(self._mse(pred, target))}
        total = values["mse"]
        if self.perceptual is not None:
            values["perceptual"] = float(self.perceptual(pred, target))
            total += self.perceptual_weight * values["perceptual"]
        if self.ssim_weight > 0:
            values["ssim"] = float(self._structural(pred, target))
            total += self.ssim_weight * values["ssim"]
        if self.edge_weight > 0:
            values["edge"] = float(self._edges(pred, target))
            total += self.edge_weight * values["edge"]
        values["total"] = total
        return values
