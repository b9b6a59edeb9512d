"""The training loss of search and retrain: L = MSE + lambda * PL (paper Eq. 5, SPEC section 2)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    ) -> None:
        super().__init__()
        if not math.isfinite(perceptual_weight) or perceptual_weight < 0:
            raise ValueError(f"perceptual weight must be >= 0, got {perceptual_weight}")
        self.perceptual_weight = float(perceptual_weight)
        self.perceptual: PerceptualLoss | None = (
            PerceptualLoss.from_file(vgg_weights, layer) if self.perceptual_weight > 0 else None
        )

    def _mse(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)}")
        return F.mse_loss(pred.float(), target.float())

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Scalar float32 loss of a prediction against its normal-dose target."""
        mse = self._mse(pred, target)
        if self.perceptual is None:
            return mse
        return mse + self.perceptual_weight * self.perceptual(pred, target)

    @torch.no_grad()
    def components(self, pred: Tensor, target: Tensor) -> dict[str, float]:
        """``mse``, unweighted ``perceptual`` (only when enabled) and ``total``, for logging."""
        values = {"mse": float(self._mse(pred, target))}
        total = values["mse"]
        if self.perceptual is not None:
            values["perceptual"] = float(self.perceptual(pred, target))
            total += self.perceptual_weight * values["perceptual"]
        values["total"] = total
        return values
