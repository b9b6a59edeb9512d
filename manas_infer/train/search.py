"""The search stage (paper Sec. 3.3): the super-net's weights on train-data and its
architecture (alphas and betas) on arch-data, in turn, by first-order DARTS
(train/architect.py), after a weights-only warm-up; a genotype derived after every epoch.

The skip rule: the search stops once a derived cell would hold more than two skip
connections, keeping the last architecture that held at most two. If none was seen before
the rule stops the search (possible only right after the weights-only warm-up, when alphas
are still their random initial values), skip is kept on the two edges where its alpha is
largest and the other edges take their best other op.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from manas_infer.console import console
from manas_infer.train.architect import Architect, search_step
from manas_infer.train.derive import (
    MAX_SKIP_CONNECTIONS,
    count_skip_connections,
    derive_cells,
    derive_genotype,
)
from manas_infer.train.device_policy import decide_checkpointing, uses_autocast
from manas_infer.train.distributed import any_flag, broadcast_flag, data_parallel
from manas_infer.train.epochs import EpochEnd, Stage, epoch_batches, epoch_steps, run_epochs
from manas_infer.train.genotype import Genotype
from manas_infer.train.operations import PRIMITIVES
from manas_infer.train.supernet import SuperNet

if TYPE_CHECKING:
    from manas_infer.train.trainer import Trainer


def capped_cells(alphas: dict[str, Tensor]) -> dict[str, tuple[str, ...]]:
    """Argmax cells with at most MAX_SKIP_CONNECTIONS skips each (see the module docstring)."""
    skip = PRIMITIVES.index("skip_connect")
    cells = {}
    for cell_type, ops in derive_cells(alphas).items():
        cell_alphas = alphas[cell_type].detach()
        ops = list(ops)
        skipped = [edge for edge, op in enumerate(ops) if op == "skip_connect"]
        skipped.sort(key=lambda edge: float(cell_alphas[edge, skip]), reverse=True)
        for edge in skipped[MAX_SKIP_CONNECTIONS:]:
            others = cell_alphas[edge].clone()
            others[skip] = -math.inf
            ops[edge] = PRIMITIVES[int(others.argmax())]
        cells[cell_type] = tuple(ops)
    return cells


def _checkpointing(trainer: Trainer, model: SuperNet) -> bool:
    """Whether the search runs the super-net under activation checkpointing
    (``decide_checkpointing``); under torchrun every process takes it if any needs it."""
    n_parameters = sum(parameter.numel() for parameter in model.parameters())
    checkpoint, why = decide_checkpointing(trainer.preset, trainer.device, n_parameters)
    checkpoint = any_flag(trainer.ctx, checkpoint)
    if trainer.ctx.is_main:
        console.print(f"activation checkpointing {'on' if checkpoint else 'off'}: {why}")
    return checkpoint


class SearchStage(Stage):
    """The super-net, its two optimisers and the weights' schedule, resumed if saved."""

    name, label, n_losses = "search", "Search", 2  # the weight loss and the arch loss
    after: ClassVar[dict[str, object]] = {"stage": "retrain", "epoch": 0}

    def __init__(self, trainer: Trainer) -> None:
        self.trainer, preset, state = trainer, trainer.preset, trainer.state
        self.epochs = preset.search_epochs
        torch.manual_seed(trainer.config.seed)
        model = SuperNet(preset.C, preset.L, preset.D, preset.P)
        model.checkpoint = _checkpointing(trainer, model)
        self.model = model.to(trainer.device)
        self.ddp_model = data_parallel(self.model, trainer.ctx)
        self.weights_opt = torch.optim.Adam(self.model.weights(), lr=preset.lr)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.weights_opt, T_max=preset.search_epochs, eta_min=preset.lr_min
        )
        self.architect = Architect(self.model, lr=preset.arch_lr, forward_model=self.ddp_model)
        if "search_model" in state:
            self.model.load_state_dict(state["search_model"])
            self.weights_opt.load_state_dict(state["search_weights_opt"])
            self.architect.optimizer.load_state_dict(state["search_arch_opt"])
            self.schedule.load_state_dict(state["search_schedule"])
        n_train = trainer.batches.count("train")
        self.steps_per_epoch = epoch_steps(n_train, preset.batch, trainer.ctx)

    def _arch_on(self, epoch: int) -> bool:
        """Architecture steps run after the weights-only warm-up."""
        return epoch >= self.trainer.preset.warmup_epochs

    def title(self, epoch: int) -> str:
        phase = "" if self._arch_on(epoch) else " (weights only)"
        return f"Search {epoch + 1}/{self.epochs}{phase}"

    def steps(self, epoch: int) -> list:
        """(train-data batch, arch-data batch or None in the warm-up) per step; the
        arch-data batches go round again when arch-data is the smaller split."""
        trainer, batch, seed = self.trainer, self.trainer.preset.batch, self.trainer.config.seed
        batches = trainer.batches
        train = batches.on_device(
            epoch_batches(batches.count("train"), batch, seed, "search", epoch, trainer.ctx)
        )
        arch = batches.on_device(
            epoch_batches(batches.count("arch"), batch, seed + 1, "search", epoch, trainer.ctx)
        )
        arch_on = self._arch_on(epoch)
        return [(pair, arch[i % len(arch)] if arch_on else None) for i, pair in enumerate(train)]

    def step(self, item: tuple) -> tuple[Tensor, Tensor | None]:
        (idx, at), arch = item
        batches, arch_batch = self.trainer.batches, None
        if arch is not None:
            arch_idx, arch_at = arch
            arch_batch = batches.pairs(
                "arch", arch_idx, on_device=arch_at, fresh_noise=True, augment=False
            )
        train_batch = batches.pairs("train", idx, on_device=at, fresh_noise=True, augment=True)
        return search_step(
            self.ddp_model, self.weights_opt, self.architect, train_batch, arch_batch,
            self.trainer.loss, uses_autocast(self.trainer.device, "search"),
        )  # fmt: skip

    def end_epoch(self, epoch: int, means: list[float]) -> EpochEnd:
        """The weights' schedule, the losses, and this epoch's genotype under the skip rule."""
        trainer, state = self.trainer, self.trainer.state
        self.schedule.step()
        trainer._history("search_loss", means[0])
        if self._arch_on(epoch):
            trainer._history("search_arch_loss", means[1])
        genotype = derive_genotype(self.model, trainer.preset.K)
        skips = {cell: count_skip_connections(ops) for cell, ops in genotype.cells.items()}
        collapse = broadcast_flag(trainer.ctx, max(skips.values()) > MAX_SKIP_CONNECTIONS)
        if collapse and state["genotype"] is None:
            preset, cells = trainer.preset, capped_cells(self.model.alphas)
            capped = Genotype(C=preset.C, L=preset.L, D=preset.D, P=preset.P, cells=cells,
                              edges=genotype.edges)  # fmt: skip
            state["genotype"] = capped.to_json()
        elif not collapse:
            state["genotype"] = genotype.to_json()
        stop = collapse and self._arch_on(epoch)
        if stop:
            state["search_stopped_early"] = {"epoch": epoch + 1, "skips": skips}
            if trainer.ctx.is_main:
                console.print(
                    f"Search stopped after epoch {epoch + 1}: a derived cell would hold "
                    f"more than {MAX_SKIP_CONNECTIONS} skip connections {skips}; "
                    "keeping the last architecture that held at most two"
                )
        return EpochEnd(f"loss {means[0]:.2e}", stop)

    def resumable(self) -> dict[str, object]:
        return {
            "search_model": self.model.state_dict(),
            "search_weights_opt": self.weights_opt.state_dict(),
            "search_arch_opt": self.architect.optimizer.state_dict(),
            "search_schedule": self.schedule.state_dict(),
        }


def search(trainer: Trainer) -> None:
    """Run (or resume) the search to its end; the main process then writes the genotype."""
    started = time.perf_counter()
    run_epochs(trainer, SearchStage(trainer), started)
    if trainer.ctx.is_main:
        trainer._write_genotype()
