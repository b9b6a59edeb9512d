"""Model size and cost, as the model card and the paper's Table 3 report them.

FLOPs convention: 2 x multiply-accumulates of every Conv2d and ConvTranspose2d (one multiply
plus one add per MAC), bias, activations, upsampling and the residual/sum additions not
counted, for one image of H x W. Counted with forward hooks during a forward on the ``meta``
device, so no real compute or memory is spent even for the super-net at 512 x 512. Note that
many papers, apparently the MANAS paper's Table 3 among them, report MACs and call them
FLOPs: halve this number to compare with such tables.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Every parameter element (a super-net's alphas and betas included)."""
    return sum(parameter.numel() for parameter in model.parameters())


def count_flops(model: nn.Module, H: int, W: int) -> int:
    """2 x conv MACs for one 1-channel H x W image (see the module docstring)."""
    probe = copy.deepcopy(model).to("meta")
    total = 0

    def hook(conv: nn.Conv2d, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = conv.kernel_size
        total += 2 * output.numel() * (conv.in_channels // conv.groups) * kh * kw

    def transposed_hook(conv: nn.ConvTranspose2d, inputs: tuple, _output: torch.Tensor) -> None:
        nonlocal total  # every input element scatters into kh x kw x out_channels outputs
        kh, kw = conv.kernel_size
        total += 2 * inputs[0].numel() * (conv.out_channels // conv.groups) * kh * kw

    for module in probe.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(hook)
        elif isinstance(module, nn.ConvTranspose2d):
            module.register_forward_hook(transposed_hook)
    with torch.no_grad():
        probe(torch.zeros(1, 1, H, W, device="meta"))
    return total
