"""The retrain stage: the derived network (or a baseline) trained from scratch, or from
given weights when fine-tuning, on train-data, validated on arch-data after every epoch.

Validation: the arch-data slices double as the retraining's validation set (they pick the
best checkpoint); the test patients are only touched once, at the end (train/evaluation.py).
A fine-tune's starting weights are validated first and stand as epoch 0, so a fine-tune that
goes wrong (a learning rate too high for the network) ends where it started, and says so.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from manas_infer.console import console
from manas_infer.metrics import mean_sd
from manas_infer.train.device_policy import autocast, retrain_layout, uses_autocast
from manas_infer.train.distributed import data_parallel
from manas_infer.train.epochs import EpochEnd, Stage, epoch_batches, epoch_steps, run_epochs
from manas_infer.train.evaluation import split_quality
from manas_infer.train.run import build_network, read_weights, save_atomically

if TYPE_CHECKING:
    from manas_infer.train.trainer import Trainer


class RetrainStage(Stage):
    """The network, its optimiser and schedule, resumed if saved."""

    name, label, n_losses = "retrain", "Retrain", 1
    after: ClassVar[dict[str, object]] = {"stage": "evaluate"}

    def __init__(self, trainer: Trainer) -> None:
        self.trainer, preset, config, state = trainer, trainer.preset, trainer.config, trainer.state
        self.epochs = preset.retrain_epochs
        torch.manual_seed(config.seed + 1)
        model = build_network(config.arch, state["genotype"]).to(trainer.device)
        self.model = retrain_layout(model, trainer.device)
        self.ddp_model = data_parallel(self.model, trainer.ctx)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=preset.lr)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=preset.retrain_epochs, eta_min=preset.lr_min
        )
        if "retrain_model" in state:
            self.model.load_state_dict(state["retrain_model"])
        elif config.init_weights is not None:  # fine-tuning: the first epoch starts from them
            start = read_weights(Path(config.init_weights))
            if start.get("genotype", state["genotype"]) == state["genotype"]:
                self.model.load_state_dict(start["state_dict"])
            else:  # a grown genotype (--genotype with --init-weights): new paths start at 0
                new = self.model.load_grown(start["state_dict"])
                if trainer.ctx.is_main:
                    console.print(f"grown from {config.init_weights}: new cells {', '.join(new)}")
        if "retrain_opt" in state:
            self.optimizer.load_state_dict(state["retrain_opt"])
            self.schedule.load_state_dict(state["retrain_schedule"])
        elif config.init_weights is not None:
            self._keep(epoch=0, val_psnr=self._validate())  # the start, before any step
        n_train = trainer.batches.count("train")
        self.steps_per_epoch = epoch_steps(n_train, preset.batch, trainer.ctx)

    def title(self, epoch: int) -> str:
        return f"Retrain {epoch + 1}/{self.epochs}"

    def steps(self, epoch: int) -> list:
        """This epoch's train-data batches (validation left the net in eval mode)."""
        self.model.train()
        trainer = self.trainer
        n_train, batch = trainer.batches.count("train"), trainer.preset.batch
        seed = trainer.config.seed
        return trainer.batches.on_device(
            epoch_batches(n_train, batch, seed, "retrain", epoch, trainer.ctx)
        )

    def step(self, item: tuple) -> tuple[Tensor]:
        idx, at = item
        trainer = self.trainer
        low, normal = trainer.batches.pairs(
            "train", idx, on_device=at, fresh_noise=True, augment=True
        )
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(trainer.device.type, enabled=uses_autocast(trainer.device, "retrain")):
            loss = trainer.loss(self.ddp_model(low), normal)
        loss.backward()
        self.optimizer.step()
        return (loss,)

    def _validate(self) -> float:
        return mean_sd(split_quality(self.trainer.batches, self.model, "arch")["psnr"])[0]

    def _keep(self, epoch: int, val_psnr: float) -> None:
        """last.pt, and best.pt when validation improved (main process)."""
        trainer, config = self.trainer, self.trainer.config
        weights = {"genotype": trainer.state["genotype"], "state_dict": self.model.state_dict(),
                   "arch": config.arch, "dose": config.dose, "preset": trainer.preset.name,
                   "init_weights": config.init_weights,
                   "epoch": epoch, "val_psnr": val_psnr}  # fmt: skip
        if not trainer.ctx.is_main:
            return
        if epoch > 0:
            save_atomically(weights, trainer.checkpoints / "last.pt")
        if val_psnr > trainer.state.get("best_val_psnr", -math.inf):
            trainer.state["best_val_psnr"], trainer.state["best_epoch"] = val_psnr, epoch
            save_atomically(weights, trainer.checkpoints / "best.pt")

    def end_epoch(self, epoch: int, means: list[float]) -> EpochEnd:
        """The schedule, validation, and last.pt / best.pt (main process)."""
        trainer = self.trainer
        self.schedule.step()
        val_psnr = self._validate()
        trainer._history("retrain_loss", means[0])
        trainer._history("val_psnr", val_psnr)
        self._keep(epoch + 1, val_psnr)
        start_stood = trainer.state.get("best_epoch") == 0
        if epoch + 1 == self.epochs and start_stood and trainer.ctx.is_main:
            console.print(
                f"[yellow]warning:[/] no epoch of the fine-tune beat its starting weights on "
                f"validation ({trainer.state['best_val_psnr']:.2f} dB): best.pt keeps them "
                f"(a lower --lr may help)"
            )
        return EpochEnd(f"loss {means[0]:.2e} val PSNR {val_psnr:.2f} dB")

    def resumable(self) -> dict[str, object]:
        return {
            "retrain_model": self.model.state_dict(),
            "retrain_opt": self.optimizer.state_dict(),
            "retrain_schedule": self.schedule.state_dict(),
        }


def retrain(trainer: Trainer) -> None:
    """Run (or resume) the retraining to its end."""
    started = time.perf_counter()
    run_epochs(trainer, RetrainStage(trainer), started)
