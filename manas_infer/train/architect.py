"""First-order DARTS (paper Sec. 3.3): alternate a weight step on train-data and an
architecture step on arch-data, each with its own Adam optimiser.

First order means the architecture gradient is taken at the current weights, without the
unrolled one-step look-ahead of second-order DARTS: the paper's choice, and the one that
keeps a search step to two forward/backward passes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from manas_infer.train import device_policy
from manas_infer.train.supernet import SuperNet

LossFn = Callable[[Tensor, Tensor], Tensor]


class Architect:
    """Owns the arch optimiser: Adam on alphas and betas, lr 1e-4, defaults otherwise."""

    def __init__(
        self, model: SuperNet, lr: float = 1e-4, forward_model: torch.nn.Module | None = None
    ) -> None:
        """``forward_model`` runs the forward pass when it differs from ``model``: a
        DistributedDataParallel wrapper, so gradients are averaged across processes."""
        self.model = forward_model if forward_model is not None else model
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=lr)

    def step(self, low: Tensor, normal: Tensor, loss_fn: LossFn, autocast: bool = False) -> Tensor:
        """One gradient step of the architecture parameters on an arch-data batch; the loss
        comes back as a detached device tensor (no host sync per step: epochs.py sums it)."""
        self.optimizer.zero_grad(set_to_none=True)
        with device_policy.autocast(low.device.type, enabled=autocast):
            loss = loss_fn(self.model(low), normal)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def search_step(
    model: SuperNet,
    weight_optimizer: torch.optim.Optimizer,
    architect: Architect,
    train_batch: tuple[Tensor, Tensor],
    arch_batch: tuple[Tensor, Tensor] | None,
    loss_fn: LossFn,
    autocast: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """A weight step on ``train_batch``, then (unless ``arch_batch`` is None, as in the
    weights-only warm-up epochs) an arch step. Returns (weight loss, arch loss) as detached
    device tensors, so a step never waits for the GPU.

    Inputs are normalised images [B, 1, H, W]; the weight optimiser holds only
    ``model.weights()`` so the arch step's gradients never move the weights and vice versa.
    """
    low, normal = train_batch
    weight_optimizer.zero_grad(set_to_none=True)
    with device_policy.autocast(low.device.type, enabled=autocast):
        loss = loss_fn(model(low), normal)
    loss.backward()
    weight_optimizer.step()
    arch_loss = None
    if arch_batch is not None:
        arch_loss = architect.step(*arch_batch, loss_fn, autocast)
    return loss.detach(), arch_loss
