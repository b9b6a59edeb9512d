"""The trainer: one run directory taken from wherever it stands to the end, search ->
derive -> retrain -> evaluate (train/search.py, train/retrain.py, train/evaluation.py, each
a stage of train/epochs.py's loop), with the state that lets it resume.

- Resume is exact: every random choice is a function of (seed, stage, epoch) or of a saved
  generator state, and the state is saved at each epoch's end; a killed run repeats at most
  its interrupted epoch and ends with the same weights as an uninterrupted one.
- Several processes (torchrun): each saves its own random streams (augmentation, fresh
  noise) into state.pt, so a run resumes exactly only with as many processes as wrote it;
  another count is refused (each process's share of the data depends on it too).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor

from manas_infer.console import console
from manas_infer.errors import InputProblem
from manas_infer.train.augment import Augmentation
from manas_infer.train.batches import Batches, load_natives, load_splits, prepare_for_run
from manas_infer.train.dataset import FreshNoise
from manas_infer.train.distributed import DistContext, any_flag, barrier, gather_to_main
from manas_infer.train.epochs import LossSum
from manas_infer.train.evaluation import evaluate
from manas_infer.train.genotype import Genotype
from manas_infer.train.loss import DenoiseLoss
from manas_infer.train.retrain import retrain
from manas_infer.train.run import RunConfig, dataset_spec, save_atomically
from manas_infer.train.search import search


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite: the run stops before saving that epoch."""


def saved_rng_states(state: dict, ctx: DistContext, where: Path) -> dict[str, Tensor]:
    """This process's generator states in a loaded state.pt ({} when it has none).

    state.pt holds one set per process (``rng_per_rank``, rank order); resuming with
    another number of processes cannot be exact (the streams and each process's share of
    the data both depend on it), so it is refused with the count to use. A state.pt written
    before per-process states holds only the main process's: one process restores it
    exactly; under torchrun the main process restores it and the others start again from
    their seeds (not exact: documented in the warning)."""
    per_rank = state.get("rng_per_rank")
    if per_rank is not None:
        if len(per_rank) != ctx.world:
            raise InputProblem(
                where,
                f"written by {len(per_rank)} training process(es), resumed with {ctx.world}: "
                f"resume with the same number (torchrun --nproc_per_node={len(per_rank)}, or "
                "no torchrun for 1), each process's random streams and data share are saved",
            )
        return dict(per_rank[ctx.rank])
    old = {"noise": state.get("noise_rng"), "augment": state.get("augment_rng")}
    old = {name: value for name, value in old.items() if value is not None}
    if old and ctx.active:
        if ctx.is_main:
            console.print(
                f"[yellow]warning:[/yellow] {where} holds one process's random streams (saved "
                "before per-process states): the other processes restart theirs from their "
                "seeds, so this resume is not exact"
            )
        return old if ctx.is_main else {}
    return old


def _initial_state(config: RunConfig) -> dict:
    """state.pt of a run that has not started: a search, or straight to the retraining for
    a baseline (nothing to search) or a given architecture."""
    if config.arch != "manas":
        return {"stage": "retrain", "epoch": 0, "history": {}, "genotype": None}
    if config.genotype is not None:
        return {"stage": "retrain", "epoch": 0, "history": {},
                "genotype": config.genotype, "search_skipped": True}  # fmt: skip
    return {"stage": "search", "epoch": 0, "history": {}, "genotype": None}


class Trainer:
    """Runs (or resumes) one run directory to the end. One per process under torchrun.

    It owns what a resume needs: ``state`` (saved as state.pt by ``_save_state`` at each
    epoch's end) and this process's random streams. The stages read the run's settings,
    ``batches`` and ``loss`` from it and record through ``_history`` and ``_save_state``."""

    def __init__(self, folder: Path, config: RunConfig, ctx: DistContext) -> None:
        self.folder, self.config, self.ctx = Path(folder), config, ctx
        self.preset = config.preset
        self.device = ctx.device
        self.checkpoints = self.folder / "checkpoints"
        self.state_path = self.checkpoints / "state.pt"
        self.loss = DenoiseLoss(
            config.perceptual_weight, config.vgg_weights,
            ssim_weight=config.ssim_weight, edge_weight=config.edge_weight,
        ).to(self.device)  # fmt: skip
        # The saved state first: a resume that cannot be exact is refused before the data.
        if self.state_path.is_file():
            self.state = torch.load(self.state_path, map_location="cpu", weights_only=False)
        else:
            self.state = _initial_state(config)
            if self.state.get("search_skipped") and ctx.is_main:
                self._write_genotype()
        self._saved_rngs = saved_rng_states(self.state, ctx, self.state_path)
        prepared = prepare_for_run(config, ctx, self.folder)
        splits = load_splits(prepared, self.device)
        natives, self.fresh = None, None
        if config.fresh_noise:
            natives = load_natives(prepared, Path(config.data_root), self.device)
            seed = config.seed + 17 + ctx.rank  # each process its own noise stream
            self.fresh = FreshNoise(dataset_spec(config), self.device, seed=seed)
        augment = Augmentation.from_dict(config.augment) if config.augment else None
        self.augment_rng = torch.Generator().manual_seed(config.seed + 29 + ctx.rank)
        self.batches = Batches(splits, self.device, natives, self.fresh, augment, self.augment_rng)

    # ---------------------------------------------------------------- state

    def _history(self, name: str, value: float) -> None:
        self.state["history"].setdefault(name, []).append(value)

    def _generators(self) -> dict[str, torch.Generator]:
        """This process's random streams that a resume must continue."""
        found = {"augment": self.augment_rng}
        if self.fresh is not None:
            found["noise"] = self.fresh.generator
        return found

    def _save_state(self, **modules: object) -> None:
        """state.pt, with every process's generator states gathered to the main process
        (each process draws its own augmentation and noise). Collective under torchrun."""
        mine = {name: generator.get_state() for name, generator in self._generators().items()}
        every = gather_to_main(self.ctx, mine)
        if self.ctx.is_main:
            self.state["rng_per_rank"] = every
            for old in ("noise_rng", "augment_rng"):  # the single-process keys of older runs
                self.state.pop(old, None)
            self.state.update(modules)
            save_atomically(self.state, self.state_path)
        barrier(self.ctx)

    def _restore_rngs(self) -> None:
        """This process's own generator states from the loaded state.pt, if it has any."""
        for name, generator in self._generators().items():
            if name in self._saved_rngs:
                generator.set_state(self._saved_rngs[name])

    def _check_finite(self, stage: str, epoch: int, *sums: LossSum) -> list[float]:
        """The epoch's mean losses, read once; TrainingDiverged, on every process, if one
        of them is NaN or infinite on any process (before the epoch is saved, so state.pt
        keeps the last finite one)."""
        means = [losses.mean() for losses in sums if losses.count]
        if any_flag(self.ctx, not all(math.isfinite(mean) for mean in means)):
            raise TrainingDiverged(
                f"{stage} epoch {epoch + 1}: the loss is not finite (training diverged); "
                f"{self.state_path} keeps epoch {epoch}. A smaller learning rate (--lr) in a "
                "new run is the usual cure: resuming repeats the same steps"
            )
        return means

    def _write_genotype(self) -> None:
        """genotype.json and its picture, once the architecture is fixed."""
        genotype = Genotype.from_json(self.state["genotype"])
        genotype.save(self.folder / "genotype.json")
        from manas_infer.train.plot import plot_genotype

        plot_genotype(genotype, self.folder / "genotype.png")

    # ---------------------------------------------------------------- stages

    def run(self) -> dict:
        """Continue from the saved stage and epoch to the end; returns the test metrics."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self._restore_rngs()
        if self.state["stage"] == "search":
            search(self)
        if self.state["stage"] == "retrain":
            retrain(self)
        if self.state["stage"] == "evaluate":
            evaluate(self)
        return json.loads((self.folder / "metrics.json").read_text())
