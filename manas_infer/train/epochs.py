"""The epoch loop both training stages run (the search and the retraining): resume from the
saved epoch, this process's shuffled share of the data, a progress bar on the main process
only, losses read once an epoch, the time spent, and state.pt saved at each epoch's end.

A stage (``Stage``) brings only what differs: its models and optimisers, one step, and
what happens at an epoch's end (validation, the architecture, an early stop).
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from rich.progress import Progress
from torch import Tensor

from manas_infer.console import progress
from manas_infer.train.distributed import DistContext
from manas_infer.train.run import STAGES

if TYPE_CHECKING:
    from manas_infer.train.trainer import Trainer

# Steps between refreshes of the running loss on the progress bar: reading a loss waits for
# the GPU to finish every step queued before it, so it is done this seldom (and never on a
# process that shows no bar).
LOG_EVERY = 25


def _epoch_seed(seed: int, stage: str, epoch: int) -> int:
    return (seed * 1_000_003 + STAGES.index(stage) * 10_007 + epoch) % (2**63)


def epoch_batches(n: int, batch: int, seed: int, stage: str, epoch: int, ctx: DistContext):
    """This process's shuffled index batches for one epoch: a function of (seed, stage,
    epoch) only, so a resumed run sees the same order; each process gets an equal shard."""
    order = torch.randperm(
        n, generator=torch.Generator().manual_seed(_epoch_seed(seed, stage, epoch))
    )
    per_rank = n // ctx.world
    if per_rank == 0:  # fewer items than processes (a tiny arch split): one each, shared
        return [order[ctx.rank % n : ctx.rank % n + 1]]
    mine = order[ctx.rank * per_rank : (ctx.rank + 1) * per_rank]
    return [mine[i : i + batch] for i in range(0, len(mine), batch)]


def epoch_steps(n: int, batch: int, ctx: DistContext) -> int:
    """Optimisation steps of one epoch on each process, for the progress bar."""
    return math.ceil(n // ctx.world / batch)


class LossSum:
    """A stage's losses summed where they are computed. Adding one queues an addition on the
    device and returns at once; ``float(loss)`` every step would make the host wait for the
    GPU at every step. Reading the mean waits once. The sum is float64 (float32 on MPS), in
    step order: the same numbers as summing the Python floats of the losses."""

    def __init__(self, device: torch.device) -> None:
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.total = torch.zeros((), dtype=dtype, device=device)
        self.count = 0

    def add(self, loss: Tensor | float) -> None:
        self.total += loss.detach() if isinstance(loss, Tensor) else loss
        self.count += 1

    def mean(self) -> float:
        return float(self.total) / max(self.count, 1)


def progress_for(ctx: DistContext) -> Progress:
    """The main process's progress bar; a silent one on the others (N bars, one per
    process, would overwrite each other on a shared terminal)."""
    return progress() if ctx.is_main else Progress(disable=True)


@dataclass(frozen=True)
class EpochEnd:
    """What a stage reports when an epoch is over."""

    summary: str  # for the progress bar, after the epoch's title
    stop: bool = False  # end the stage now, before its last epoch


class Stage(ABC):
    """One looped stage of a run, as ``run_epochs`` drives it."""

    name: str  # state.pt's stage ("search" or "retrain"); also seeds the epoch order
    label: str  # the progress bar's
    epochs: int
    steps_per_epoch: int  # on each process (``epoch_steps``), for the progress bar
    n_losses: int  # losses a step returns, the first one shown on the progress bar
    after: ClassVar[dict[str, object]]  # what state.pt says once the stage is over

    @abstractmethod
    def steps(self, epoch: int) -> list:
        """This process's steps of one epoch, each the input of one ``step``."""

    @abstractmethod
    def step(self, item: object) -> tuple[Tensor | None, ...]:
        """One optimisation step; its ``n_losses`` losses (None: a loss not computed)."""

    @abstractmethod
    def title(self, epoch: int) -> str:
        """The progress bar's name for an epoch."""

    @abstractmethod
    def end_epoch(self, epoch: int, means: list[float]) -> EpochEnd:
        """Schedules, history, checks and files at an epoch's end, given its mean losses."""

    @abstractmethod
    def resumable(self) -> dict[str, object]:
        """The state dicts (state.pt keys) that resume the stage in the middle."""


def run_epochs(trainer: Trainer, stage: Stage, started: float) -> None:
    """Run ``stage`` from the epoch state.pt names to its end (or its early stop).

    Every process runs every epoch on its own shard; every process saves state.pt together
    (the main one writes it) after each epoch, with the stage's state dicts, and without
    them once the stage is over. ``started``: when the stage began, for its seconds."""
    state, steps = trainer.state, stage.steps_per_epoch
    with progress_for(trainer.ctx) as bar:
        task = bar.add_task(stage.label, total=steps * stage.epochs)
        bar.update(task, completed=steps * state["epoch"])
        for epoch in range(state["epoch"], stage.epochs):
            title = stage.title(epoch)
            sums = [LossSum(trainer.device) for _ in range(stage.n_losses)]
            for i, item in enumerate(stage.steps(epoch)):
                for total, loss in zip(sums, stage.step(item), strict=True):
                    if loss is not None:
                        total.add(loss)
                bar.update(task, advance=1)
                if not bar.disable and (i + 1) % LOG_EVERY == 0:
                    bar.update(task, description=f"{title} loss {sums[0].mean():.2e}")
            end = stage.end_epoch(epoch, trainer._check_finite(stage.name, epoch, *sums))
            bar.update(task, description=f"{title} {end.summary}")
            seconds = f"seconds_{stage.name}"
            state[seconds] = state.get(seconds, 0.0) + (time.perf_counter() - started)
            started = time.perf_counter()
            state["epoch"] = epoch + 1
            if end.stop or epoch + 1 == stage.epochs:
                state.update(stage.after)
                for key in stage.resumable():
                    state.pop(key, None)
                trainer._save_state()
                break
            trainer._save_state(**stage.resumable())
