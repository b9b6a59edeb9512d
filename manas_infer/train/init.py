"""Weight initialisation for the search space's norm-free convolutions.

There is no batch norm anywhere (SPEC section 2), so nothing rescales activations or
gradients between layers and the initial scale is all there is. PyTorch's default conv init
(variance 1 / (3 fan_in)) shrinks the signal at every ReLU -> conv: the gradient reaching
the stem of the small preset's derived net was ~1e-9, below Adam's eps, and the first real
run never left the low-dose PSNR (bench/results/train-small-5pct-first-run.md). He init
(variance 2 / fan_in after a ReLU, 1 / fan_in after a linear layer) keeps the scale; the
same net then gains 8 dB in four epochs on the same patches.

The head starts small but not zero: a zero head makes every other gradient exactly zero,
so the body waits for the head to grow out of nothing; at std 1e-3 the net starts within a
few HU of the identity and every layer learns from the first step.
"""

from __future__ import annotations

from itertools import pairwise

from torch import nn

HEAD_STD = 1e-3


def convs_after_relu(model: nn.Module) -> set[int]:
    """ids of the convolutions that directly follow a ReLU inside an ``nn.Sequential``.

    Every ReLU -> conv of the search space (operations, cell preprocessing) is built that way.
    """
    found: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            layers = list(module)
            for before, layer in pairwise(layers):
                if isinstance(before, nn.ReLU) and isinstance(layer, nn.Conv2d):
                    found.add(id(layer))
    return found


def initialise(model: nn.Module, head: nn.Conv2d) -> None:
    """He-initialise every conv of ``model`` (zero biases), then the head at ``HEAD_STD``."""
    after_relu = convs_after_relu(model)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            gain = "relu" if id(module) in after_relu else "linear"
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity=gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    nn.init.normal_(head.weight, std=HEAD_STD)
    if head.bias is not None:
        nn.init.zeros_(head.bias)
