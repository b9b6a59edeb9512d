"""The paper's hand-designed baselines (Table 2), trained by the same code as MANAS.

Both follow their papers' layer tables and share the derived network's interface, so the
training loop, checkpoints, export (``HUModel``) and runtime treat every net alike:
``forward(x) = x + residual(x)`` on [0, 1]-normalised slices, and ``size_multiple`` 1 (any
slice size works).

- RED-CNN (Chen et al. 2017, "Low-dose CT with a residual encoder-decoder convolutional
  neural network"): five 5x5 convolutions without padding, each shrinking the image by 4
  pixels, then five 5x5 transposed convolutions growing it back, 96 channels, ReLU, three
  residual shortcuts (input -> output, 2nd conv -> 3rd deconv, 4th conv -> 1st deconv).
  The final ReLU of the paper is left out: the correction is added to the raw HU input by
  the export graph, which keeps values outside the training range unchanged.
- DnCNN (Zhang et al. 2017, "Beyond a Gaussian denoiser"): 17 3x3 layers of 64 channels:
  conv+ReLU, 15 x (conv+BN+ReLU), conv; residual learning (the body predicts the noise).

Weights start as the search space's do (``init.initialise``): He init and a small head,
so every net starts near the identity and the comparison is not decided by initialisation.
The head's std is divided by sqrt(its fan-in): these heads see 576 (DnCNN) to 2400
(RED-CNN) inputs, and at the plain ``HEAD_STD`` they would start 300 HU from the identity.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from manas_infer.train.init import HEAD_STD, initialise

ARCHES = ("manas", "redcnn", "dncnn")


class REDCNN(nn.Module):
    """Residual encoder-decoder CNN: 5 conv + 5 deconv, 5x5, ``channels`` wide."""

    size_multiple = 1

    def __init__(self, channels: int = 96, kernel: int = 5) -> None:
        super().__init__()
        self.encoder = nn.ModuleList(
            [nn.Conv2d(1, channels, kernel)]
            + [nn.Conv2d(channels, channels, kernel) for _ in range(4)]
        )
        self.decoder = nn.ModuleList(
            [nn.ConvTranspose2d(channels, channels, kernel) for _ in range(4)]
            + [nn.ConvTranspose2d(channels, 1, kernel)]
        )
        self.relu = nn.ReLU()
        _initialise(self, self.decoder[-1])
        for layer in [*self.encoder[1:], *self.decoder[:-1]]:  # each of these follows a ReLU
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.residual(x)

    def residual(self, x: Tensor) -> Tensor:
        """The correction to add to the input (the last deconv's output, before the sum)."""
        relu, (c1, c2, c3, c4, c5), (d1, d2, d3, d4, d5) = self.relu, self.encoder, self.decoder
        out = relu(c2(relu(c1(x))))
        skip2 = out
        out = relu(c4(relu(c3(out))))
        skip4 = out
        out = relu(c5(out))
        out = relu(d1(out) + skip4)
        out = relu(d3(relu(d2(out))) + skip2)
        return d5(relu(d4(out)))


class DnCNN(nn.Module):
    """DnCNN with residual learning: ``depth`` 3x3 layers, ``channels`` wide, batch norm."""

    size_multiple = 1

    def __init__(self, depth: int = 17, channels: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, channels, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [
                nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
            ]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, 1, 3, padding=1)
        _initialise(self, self.head)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.residual(x)

    def residual(self, x: Tensor) -> Tensor:
        """Minus the predicted noise."""
        return self.head(self.body(x))


def _initialise(model: nn.Module, head: nn.Conv2d | nn.ConvTranspose2d) -> None:
    initialise(model, head)
    fan_in = head.weight[0].numel() if isinstance(head, nn.Conv2d) else head.weight[:, 0].numel()
    nn.init.normal_(head.weight, std=HEAD_STD / math.sqrt(fan_in))


def build_baseline(arch: str) -> nn.Module:
    """A baseline by its ``--arch`` name."""
    if arch == "redcnn":
        return REDCNN()
    if arch == "dncnn":
        return DnCNN()
    raise ValueError(f"unknown baseline {arch!r}; choose one of {', '.join(ARCHES[1:])}")
