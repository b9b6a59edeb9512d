"""Activation checkpointing in the super-net: same numbers, less memory held for backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import manas_infer.train.supernet as supernet_module
from manas_infer.train.architect import Architect, search_step
from manas_infer.train.supernet import SuperNet

C, L, D = 4, 4, 3


def twin_nets(seed: int = 0) -> tuple[SuperNet, SuperNet]:
    """The same weights, alphas and betas, one net without and one with checkpointing."""
    torch.manual_seed(seed)
    plain = SuperNet(C, L, D).double()
    with torch.no_grad():  # betas and alphas start near 0: spread them so mixing matters
        for p in plain.arch_parameters():
            p.normal_()
        # The head starts at zero (the net starts as the identity), which would leave every
        # other gradient zero and the comparison empty.
        plain.head.weight.normal_(std=0.1)
        plain.head.bias.normal_(std=0.1)
    ckpt = SuperNet(C, L, D, checkpoint=True).double()
    ckpt.load_state_dict(plain.state_dict())
    return plain, ckpt


def batch(seed: int = 1, n: int = 2, size: int = 16) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(n, 1, size, size, generator=g, dtype=torch.float64),
        torch.rand(n, 1, size, size, generator=g, dtype=torch.float64),
    )


def saved_bytes(model: SuperNet, x: Tensor) -> int:
    """Bytes autograd keeps for backward outside checkpointed regions (unique storages)."""
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum().backward()
    return sum(seen.values())


def test_outputs_and_gradients_match_the_plain_net() -> None:
    plain, ckpt = twin_nets()
    low, normal = batch()
    for net in (plain, ckpt):
        net.zero_grad(set_to_none=True)
        F.mse_loss(net(low), normal).backward()
    torch.testing.assert_close(ckpt(low), plain(low), rtol=1e-12, atol=1e-12)
    grads = dict(plain.named_parameters())
    for name, p in ckpt.named_parameters():
        ref = grads[name].grad
        assert ref is not None and p.grad is not None, name
        torch.testing.assert_close(p.grad, ref, rtol=1e-10, atol=1e-12, msg=name)
    # Architecture parameters included: they are used inside the checkpointed blocks.
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ckpt.alphas.values())


def test_search_steps_match_the_plain_net() -> None:
    """Two full search steps (weights, then alphas and betas) land on the same parameters."""
    plain, ckpt = twin_nets(seed=3)
    losses = []
    for net in (plain, ckpt):
        weight_opt = torch.optim.Adam(net.weights(), lr=1e-3)
        architect = Architect(net, lr=1e-3)
        for s in (1, 2):
            step = search_step(net, weight_opt, architect, batch(s), batch(s + 10), F.mse_loss)
            losses.append(tuple(float(loss) for loss in step))
    plain_losses, ckpt_losses = losses[:2], losses[2:]
    for a, b in zip(plain_losses, ckpt_losses, strict=True):
        assert a == pytest.approx(b, rel=1e-9)
    ref = dict(plain.named_parameters())
    for name, p in ckpt.named_parameters():
        torch.testing.assert_close(p, ref[name], rtol=1e-9, atol=1e-12, msg=name)


def test_checkpointing_keeps_less_for_backward() -> None:
    plain, ckpt = twin_nets()
    x = batch()[0]
    assert saved_bytes(ckpt, x) < saved_bytes(plain, x) / 10


def test_only_training_with_grad_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluation and no-grad passes (validation, export) run the plain forward."""
    calls = []
    real = supernet_module.run_checkpointed

    def counting(*args: object, **kwargs: object) -> Tensor:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(supernet_module, "run_checkpointed", counting)
    _, ckpt = twin_nets()
    x = batch()[0]
    with torch.no_grad():
        ckpt(x)
    ckpt.eval()
    ckpt(x)
    assert calls == []
    ckpt.train()
    ckpt(x)
    assert len(calls) == len(ckpt.grid)
