"""A training run: search -> derive -> retrain -> evaluate, in one run directory.

    RUN_DIR/config.json          what was asked for (preset, dose, data, seed, loss)
    RUN_DIR/dataset.json         the cached dataset it used and its split counts
    RUN_DIR/genotype.json        the derived architecture, written after the search
    RUN_DIR/genotype.png         a picture of it: kept grid edges and the three cells
    RUN_DIR/curves.png           losses and validation PSNR per epoch
    RUN_DIR/checkpoints/state.pt everything needed to resume, written every epoch
    RUN_DIR/checkpoints/best.pt  retrained weights with the best validation PSNR
    RUN_DIR/checkpoints/last.pt  retrained weights after the last epoch
    RUN_DIR/metrics.json         test-split quality of the low-dose input and the network

Decisions the paper leaves open (also in the README):
- Validation: the arch-data slices double as the retraining's validation set (best
  checkpoint); the test patients are only touched once, at the end.
- Resume is exact: every random choice is a function of (seed, stage, epoch) or of a saved
  generator state, and the state is saved at each epoch's end; a killed run repeats at most
  its interrupted epoch and ends with the same weights as an uninterrupted one.
- Several processes (torchrun): each saves its own random streams (augmentation, fresh
  noise) into state.pt, so a run resumes exactly only with as many processes as wrote it;
  another count is refused (each process's share of the data depends on it too).
- If no derived genotype with at most two skips per cell was seen before the skip rule
  stops the search (possible only right after the weights-only warm-up, when alphas are
  still their random initial values), skip is kept on the two edges where its alpha is
  largest and the other edges take their best other op.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from manas_infer import __version__
from manas_infer.console import console, progress
from manas_infer.errors import InputProblem
from manas_infer.hu import normalize
from manas_infer.metrics import mean_sd, quality
from manas_infer.simulate.dose import DoseSettings
from manas_infer.train.architect import Architect, search_step
from manas_infer.train.augment import Augmentation, augment_pairs
from manas_infer.train.baselines import build_baseline
from manas_infer.train.dataset import DatasetSpec, FreshNoise, SplitConfig
from manas_infer.train.derive import (
    MAX_SKIP_CONNECTIONS,
    count_skip_connections,
    derive_cells,
    derive_genotype,
)
from manas_infer.train.distributed import (
    DistContext,
    any_flag,
    barrier,
    broadcast_flag,
    gather_to_main,
)
from manas_infer.train.genotype import Genotype
from manas_infer.train.loss import DenoiseLoss
from manas_infer.train.network import DerivedNetwork
from manas_infer.train.operations import PRIMITIVES
from manas_infer.train.prepare import prepare_dataset
from manas_infer.train.presets import Preset, search_needs_checkpoint, search_step_bytes
from manas_infer.train.profile import count_flops, count_parameters
from manas_infer.train.supernet import SuperNet

STAGES = ("search", "retrain", "evaluate", "done")

# Steps between refreshes of the running loss on the progress bar: reading a loss waits for
# the GPU to finish every step queued before it, so it is done this seldom (and never on a
# process that shows no bar).
LOG_EVERY = 25


@dataclass(frozen=True)
class RunConfig:
    """Everything a run depends on; saved as config.json and reloaded by --resume."""

    preset: Preset
    dose: float
    data_root: str
    cache_root: str
    test_patients: tuple[str, ...] = ()
    n_test_patients: int = 1
    seed: int = 0
    perceptual_weight: float = 1e-4
    vgg_weights: str | None = None
    fresh_noise: bool = False
    n_views: int = 720
    arch: str = "manas"
    augment: dict | None = None  # Augmentation.to_dict(); None: none (runs made before it)
    genotype: str | None = None  # a given architecture (JSON): skip the search, retrain it
    init_weights: str | None = None  # fine-tune: retraining starts from these weights
    ssim_weight: float = 0.0  # the loss's structural term (train/loss.py); 0: off
    edge_weight: float = 0.0  # the loss's edge term; 0: off

    def to_dict(self) -> dict:
        return {**asdict(self), "preset": self.preset.to_dict(), "software_version": __version__}

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        data = {k: v for k, v in data.items() if k != "software_version"}
        data["preset"] = Preset(**data["preset"])
        data["test_patients"] = tuple(data["test_patients"])
        return cls(**data)


def dataset_spec(config: RunConfig) -> DatasetSpec:
    """The training data a run asks for: its dose, image size, split and patch mode."""
    preset = config.preset
    return DatasetSpec(
        dose=DoseSettings(dose_percent=config.dose, n_views=config.n_views),
        size=preset.size,
        split=SplitConfig(
            test_patients=config.test_patients,
            n_test_patients=config.n_test_patients,
            max_slices_per_patient=preset.max_slices_per_patient,
            seed=config.seed,
        ),
        patch=preset.patch,
        patches_per_slice=preset.patches_per_slice,
    )


def _save_atomically(obj: object, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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


def capped_cells(alphas: dict[str, Tensor]) -> dict[str, tuple[str, ...]]:
    """Argmax cells with at most MAX_SKIP_CONNECTIONS skips each (see the module docstring)."""
    skip = PRIMITIVES.index("skip_connect")
    cells = {}
    for cell_type, ops in derive_cells(alphas).items():
        a = alphas[cell_type].detach()
        ops = list(ops)
        skipped = [k for k, op in enumerate(ops) if op == "skip_connect"]
        skipped.sort(key=lambda k: float(a[k, skip]), reverse=True)
        for k in skipped[MAX_SKIP_CONNECTIONS:]:
            others = a[k].clone()
            others[skip] = -math.inf
            ops[k] = PRIMITIVES[int(others.argmax())]
        cells[cell_type] = tuple(ops)
    return cells


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite: the run stops before saving that epoch."""


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


def decide_checkpointing(
    preset: Preset, device: torch.device, n_parameters: int
) -> tuple[bool, str]:
    """(checkpoint the super-net?, why) for one process: the preset's explicit value, else
    off on anything but a GPU, else on when the estimated plain search step
    (``search_step_bytes``) does not fit the GPU's free memory (``search_needs_checkpoint``).
    Free memory is what the driver reports free plus what this process's allocator holds
    unused: the dataset is already on the GPU when the search starts, so it is counted."""
    if preset.checkpoint is not None:
        return preset.checkpoint, "set by the preset or --checkpoint/--no-checkpoint"
    if device.type != "cuda":
        return False, f"not needed on {device.type}"
    needed = search_step_bytes(preset, n_parameters)
    free = torch.cuda.mem_get_info(device)[0]
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    on = search_needs_checkpoint(needed, free)
    gib = 2.0**30
    return on, (
        f"a plain search step needs about {needed / gib:.1f} GiB, {free / gib:.1f} GiB are "
        f"free on {device}"
    )


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


class Trainer:
    """Runs (or resumes) one run directory to the end. One per process under torchrun."""

    def __init__(self, folder: Path, config: RunConfig, ctx: DistContext) -> None:
        self.folder, self.config, self.ctx = Path(folder), config, ctx
        self.preset = config.preset
        self.device = ctx.device
        self.autocast = self.device.type == "cuda"  # bf16 on GPUs; plain float32 on CPUs
        self.checkpoints = self.folder / "checkpoints"
        self.state_path = self.checkpoints / "state.pt"
        self.loss = DenoiseLoss(
            config.perceptual_weight, config.vgg_weights,
            ssim_weight=config.ssim_weight, edge_weight=config.edge_weight,
        ).to(self.device)  # fmt: skip
        # The saved state first: a resume that cannot be exact is refused before the data.
        if self.state_path.is_file():
            self.state = torch.load(self.state_path, map_location="cpu", weights_only=False)
        elif config.arch != "manas":  # a hand-designed baseline: nothing to search
            self.state = {"stage": "retrain", "epoch": 0, "history": {}, "genotype": None}
        elif config.genotype is not None:  # an architecture was given: no search
            self.state = {"stage": "retrain", "epoch": 0, "history": {},
                          "genotype": config.genotype, "search_skipped": True}  # fmt: skip
            if ctx.is_main:
                self._write_genotype()
        else:
            self.state = {"stage": "search", "epoch": 0, "history": {}, "genotype": None}
        self._saved_rngs = saved_rng_states(self.state, ctx, self.state_path)
        self._load_data()
        self.augment = Augmentation.from_dict(config.augment) if config.augment else None
        self.augment_rng = torch.Generator().manual_seed(config.seed + 29 + ctx.rank)

    # ---------------------------------------------------------------- data

    def _load_data(self) -> None:
        c = self.config
        spec = dataset_spec(c)
        cache = Path(c.cache_root) / "datasets"
        if self.ctx.is_main:  # one process simulates; the others then read the cache
            with progress() as bar:
                task = bar.add_task(f"Preparing data at {c.dose:g} % dose", total=None)
                prepared, problems = prepare_dataset(
                    Path(c.data_root), spec, cache, device=self.device,
                    on_total=lambda n: bar.update(task, total=n),
                    on_slice=lambda n: bar.advance(task, n),
                )  # fmt: skip
            for problem in problems:
                console.print(f"[yellow]skipped:[/yellow] {problem}")
        barrier(self.ctx)
        if not self.ctx.is_main:
            prepared, _ = prepare_dataset(Path(c.data_root), spec, cache, device="cpu")
        self.prepared = prepared
        self.data: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        for split in ("train", "arch", "test"):
            low, normal, spacing = prepared.arrays(split)
            if len(spacing) and not (np.isfinite(spacing).all() and (spacing > 0).all()):
                # Once per split, on the host: the simulator trusts spacings on the GPU.
                raise InputProblem(prepared.folder, f"{split}: a pixel spacing is not > 0")
            self.data[split] = tuple(
                torch.from_numpy(a).to(self.device)
                for a in (low, normal, spacing.astype("float32"))
            )  # type: ignore[assignment]
        self.fresh: FreshNoise | None = None
        self.native: dict[str, tuple[Tensor, Tensor | None]] = {}
        if c.fresh_noise:
            for split in ("train", "arch"):
                native = prepared.native(split)
                if native is None:
                    raise InputProblem(
                        Path(c.data_root),
                        "--fresh-noise needs training slices of one matrix size (found several)",
                    )
                slices, corners = native
                self.native[split] = (
                    torch.from_numpy(slices).to(self.device),
                    None if corners is None else torch.from_numpy(corners),
                )
            self.fresh = FreshNoise(spec, self.device, seed=c.seed + 17 + self.ctx.rank)
        if self.ctx.is_main:
            summary = {"folder": str(prepared.folder), "counts": prepared.counts(),
                       "spec": spec.to_dict(), "reused": prepared.reused}  # fmt: skip
            (self.folder / "dataset.json").write_text(json.dumps(summary, indent=2))

    def _on_device(self, batches: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """An epoch's index batches as (CPU, device) pairs, moved in one copy rather than one
        per step. The CPU ones pick crop corners, which stay on the CPU (they become Python
        ints), so no index makes a round trip from the device."""
        if self.device.type == "cpu" or not batches:
            return [(b, b) for b in batches]
        flat = torch.cat(batches)
        if self.device.type == "cuda":
            flat = flat.pin_memory()  # lets the copy run without blocking the host
        moved = flat.to(self.device, non_blocking=True).split([len(b) for b in batches])
        return list(zip(batches, moved, strict=True))

    def _batch(
        self, split: str, idx: Tensor, fresh: bool = True, on_device: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(low, normal) normalised [B, 1, H, W] on the device; ``idx`` on the CPU and, if
        already there, ``on_device`` the same indices on the device."""
        low, normal, spacing = self.data[split]
        at = idx.to(self.device) if on_device is None else on_device
        nd = normal[at][:, None]
        if self.fresh is not None and fresh:
            native, corners = self.native[split]
            where = None if corners is None else corners[idx.cpu()]
            ld = self.fresh(native[at], spacing[at], where)
        else:
            ld = low[at][:, None]
        if split == "train" and fresh and self.augment is not None:
            ld, nd = augment_pairs(ld, nd, self.augment, self.augment_rng)
        return normalize(ld), normalize(nd)

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
        mine = {name: g.get_state() for name, g in self._generators().items()}
        every = gather_to_main(self.ctx, mine)
        if self.ctx.is_main:
            self.state["rng_per_rank"] = every
            for old in ("noise_rng", "augment_rng"):  # the single-process keys of older runs
                self.state.pop(old, None)
            self.state.update(modules)
            _save_atomically(self.state, self.state_path)
        barrier(self.ctx)

    def _restore_rngs(self) -> None:
        """This process's own generator states from the loaded state.pt, if it has any."""
        for name, g in self._generators().items():
            if name in self._saved_rngs:
                g.set_state(self._saved_rngs[name])

    def _write_genotype(self) -> None:
        """genotype.json and its picture, once the architecture is fixed."""
        genotype = Genotype.from_json(self.state["genotype"])
        genotype.save(self.folder / "genotype.json")
        from manas_infer.train.plot import plot_genotype

        plot_genotype(genotype, self.folder / "genotype.png")

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.ctx.active:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    # ---------------------------------------------------------------- stages

    def run(self) -> dict:
        """Continue from the saved stage and epoch to the end; returns the test metrics."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self._restore_rngs()
        if self.state["stage"] == "search":
            self._search()
        if self.state["stage"] == "retrain":
            self._retrain()
        if self.state["stage"] == "evaluate":
            self._evaluate()
        return json.loads((self.folder / "metrics.json").read_text())

    def _checkpointing(self, model: SuperNet) -> bool:
        """Whether the search runs the super-net under activation checkpointing.

        An explicit preset value (``--checkpoint/--no-checkpoint``, or an older run's
        config) is kept. Otherwise off on a CPU (host memory: a CPU run is small), and on a
        GPU on only when the plain step would not fit: checkpointing costs about one more
        forward per pass, a waste on a GPU with the memory for the plain step (a paper
        search needs ~21 GiB: an 80 GB GPU runs it plainly, a 24 GB one cannot). Under
        torchrun every process takes it if any needs it. Outputs and gradients are the same
        either way, so a resumed run may decide differently and still resume exactly."""
        on, why = decide_checkpointing(
            self.preset, self.device, sum(p.numel() for p in model.parameters())
        )
        on = any_flag(self.ctx, on)
        if self.ctx.is_main:
            console.print(f"activation checkpointing {'on' if on else 'off'}: {why}")
        return on

    def _check_finite(self, stage: str, epoch: int, *sums: LossSum) -> list[float]:
        """The epoch's mean losses, read once; TrainingDiverged, on every process, if one
        of them is NaN or infinite on any process (before the epoch is saved, so state.pt
        keeps the last finite one)."""
        means = [s.mean() for s in sums if s.count]
        if any_flag(self.ctx, not all(math.isfinite(m) for m in means)):
            raise TrainingDiverged(
                f"{stage} epoch {epoch + 1}: the loss is not finite (training diverged); "
                f"{self.state_path} keeps epoch {epoch}. A smaller learning rate (--lr) in a "
                "new run is the usual cure: resuming repeats the same steps"
            )
        return means

    def _search(self) -> None:
        p, c, started = self.preset, self.config, time.perf_counter()
        torch.manual_seed(c.seed)
        model = SuperNet(p.C, p.L, p.D, p.P)
        model.checkpoint = self._checkpointing(model)
        model = model.to(self.device)
        forward = self._wrap(model)
        weights_opt = torch.optim.Adam(model.weights(), lr=p.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            weights_opt, T_max=p.search_epochs, eta_min=p.lr_min
        )
        architect = Architect(model, lr=p.arch_lr, forward_model=forward)
        if "search_model" in self.state:
            model.load_state_dict(self.state["search_model"])
            weights_opt.load_state_dict(self.state["search_weights_opt"])
            architect.optimizer.load_state_dict(self.state["search_arch_opt"])
            schedule.load_state_dict(self.state["search_schedule"])
        n_train, n_arch = len(self.data["train"][1]), len(self.data["arch"][1])
        steps = math.ceil(n_train // self.ctx.world / p.batch)
        with progress_for(self.ctx) as bar:
            task = bar.add_task("Search", total=steps * p.search_epochs)
            bar.update(task, completed=steps * self.state["epoch"])
            for epoch in range(self.state["epoch"], p.search_epochs):
                arch_on = epoch >= p.warmup_epochs
                train_b = self._on_device(
                    epoch_batches(n_train, p.batch, c.seed, "search", epoch, self.ctx)
                )
                arch_b = self._on_device(
                    epoch_batches(n_arch, p.batch, c.seed + 1, "search", epoch, self.ctx)
                )
                losses, arch_losses = LossSum(self.device), LossSum(self.device)
                phase = "" if arch_on else " (weights only)"
                title = f"Search {epoch + 1}/{p.search_epochs}{phase}"
                for i, (idx, at) in enumerate(train_b):
                    arch_batch = None
                    if arch_on:
                        a_idx, a_at = arch_b[i % len(arch_b)]
                        arch_batch = self._batch("arch", a_idx, on_device=a_at)
                    w_loss, a_loss = search_step(
                        forward, weights_opt, architect, self._batch("train", idx, on_device=at),
                        arch_batch, self.loss, self.autocast,
                    )  # fmt: skip
                    losses.add(w_loss)
                    if a_loss is not None:
                        arch_losses.add(a_loss)
                    bar.update(task, advance=1)
                    if not bar.disable and (i + 1) % LOG_EVERY == 0:
                        bar.update(task, description=f"{title} loss {losses.mean():.2e}")
                means = self._check_finite("search", epoch, losses, arch_losses)
                bar.update(task, description=f"{title} loss {means[0]:.2e}")
                schedule.step()
                self._history("search_loss", means[0])
                if arch_losses.count:
                    self._history("search_arch_loss", means[1])
                genotype = derive_genotype(model, p.K)
                skips = {t: count_skip_connections(ops) for t, ops in genotype.cells.items()}
                collapse = broadcast_flag(self.ctx, max(skips.values()) > MAX_SKIP_CONNECTIONS)
                if collapse and self.state["genotype"] is None:
                    capped = Genotype(C=p.C, L=p.L, D=p.D, P=p.P, cells=capped_cells(model.alphas),
                                      edges=genotype.edges)  # fmt: skip
                    self.state["genotype"] = capped.to_json()
                elif not collapse:
                    self.state["genotype"] = genotype.to_json()
                self.state["epoch"] = epoch + 1
                stop = collapse and arch_on
                if stop:
                    self.state["search_stopped_early"] = {"epoch": epoch + 1, "skips": skips}
                    if self.ctx.is_main:
                        console.print(
                            f"Search stopped after epoch {epoch + 1}: a derived cell would hold "
                            f"more than {MAX_SKIP_CONNECTIONS} skip connections {skips}; "
                            "keeping the last architecture that held at most two"
                        )
                self.state["seconds_search"] = self.state.get("seconds_search", 0.0) + (
                    time.perf_counter() - started
                )
                started = time.perf_counter()
                if stop or epoch + 1 == p.search_epochs:
                    self.state.update(stage="retrain", epoch=0)
                    for key in ("search_model", "search_weights_opt", "search_arch_opt",
                                "search_schedule"):  # fmt: skip
                        self.state.pop(key, None)
                    self._save_state()
                    break
                self._save_state(
                    search_model=model.state_dict(),
                    search_weights_opt=weights_opt.state_dict(),
                    search_arch_opt=architect.optimizer.state_dict(),
                    search_schedule=schedule.state_dict(),
                )
        if self.ctx.is_main:
            self._write_genotype()

    def _retrain(self) -> None:
        p, c, started = self.preset, self.config, time.perf_counter()
        torch.manual_seed(c.seed + 1)
        model = build_network(c.arch, self.state["genotype"]).to(self.device)
        if self.device.type == "cpu":  # NHWC convolutions: about 25 % faster steps on a CPU
            model = model.to(memory_format=torch.channels_last)
        forward = self._wrap(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=p.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=p.retrain_epochs, eta_min=p.lr_min
        )
        if "retrain_model" in self.state:
            model.load_state_dict(self.state["retrain_model"])
        elif c.init_weights is not None:  # fine-tuning: the first epoch starts from them
            model.load_state_dict(read_weights(Path(c.init_weights))["state_dict"])
        if "retrain_opt" in self.state:
            optimizer.load_state_dict(self.state["retrain_opt"])
            schedule.load_state_dict(self.state["retrain_schedule"])
        n_train = len(self.data["train"][1])
        steps = math.ceil(n_train // self.ctx.world / p.batch)
        with progress_for(self.ctx) as bar:
            task = bar.add_task("Retrain", total=steps * p.retrain_epochs)
            bar.update(task, completed=steps * self.state["epoch"])
            for epoch in range(self.state["epoch"], p.retrain_epochs):
                model.train()
                losses = LossSum(self.device)
                title = f"Retrain {epoch + 1}/{p.retrain_epochs}"
                batches = epoch_batches(n_train, p.batch, c.seed, "retrain", epoch, self.ctx)
                for i, (idx, at) in enumerate(self._on_device(batches)):
                    low, normal = self._batch("train", idx, on_device=at)
                    optimizer.zero_grad(set_to_none=True)
                    with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
                        loss = self.loss(forward(low), normal)
                    loss.backward()
                    optimizer.step()
                    losses.add(loss)
                    bar.update(task, advance=1)
                    if not bar.disable and (i + 1) % LOG_EVERY == 0:
                        bar.update(task, description=f"{title} loss {losses.mean():.2e}")
                (train_loss,) = self._check_finite("retrain", epoch, losses)
                schedule.step()
                val = self._quality(model, "arch")
                val_psnr = mean_sd(val["psnr"])[0]
                self._history("retrain_loss", train_loss)
                self._history("val_psnr", val_psnr)
                bar.update(task, description=(
                    f"{title} loss {train_loss:.2e} val PSNR {val_psnr:.2f} dB"
                ))  # fmt: skip
                weights = {"genotype": self.state["genotype"], "state_dict": model.state_dict(),
                           "arch": c.arch, "dose": c.dose, "preset": p.name,
                           "init_weights": c.init_weights,
                           "epoch": epoch + 1, "val_psnr": val_psnr}  # fmt: skip
                if self.ctx.is_main:
                    _save_atomically(weights, self.checkpoints / "last.pt")
                    if val_psnr > self.state.get("best_val_psnr", -math.inf):
                        self.state["best_val_psnr"] = val_psnr
                        _save_atomically(weights, self.checkpoints / "best.pt")
                self.state["seconds_retrain"] = self.state.get("seconds_retrain", 0.0) + (
                    time.perf_counter() - started
                )
                started = time.perf_counter()
                self.state["epoch"] = epoch + 1
                if epoch + 1 == p.retrain_epochs:
                    self.state["stage"] = "evaluate"
                    for key in ("retrain_model", "retrain_opt", "retrain_schedule"):
                        self.state.pop(key, None)
                    self._save_state()
                else:
                    self._save_state(
                        retrain_model=model.state_dict(),
                        retrain_opt=optimizer.state_dict(),
                        retrain_schedule=schedule.state_dict(),
                    )

    @torch.no_grad()
    def _quality(self, model: torch.nn.Module | None, split: str) -> dict[str, list[float]]:
        """Per-slice quality on a split; ``model`` None measures the low-dose input itself.
        The values stay on the device until the split is done: one read, not one a batch."""
        if model is not None:
            model.eval()
        n = len(self.data[split][1])
        parts: dict[str, list[Tensor]] = {}
        for start in range(0, n, 8):
            idx = torch.arange(start, min(start + 8, n))
            at = torch.arange(start, min(start + 8, n), device=self.device)
            low, normal = self._batch(split, idx, fresh=False, on_device=at)
            pred = low if model is None else model(low).float()
            for name, values in quality(pred.clamp(0, 1), normal).items():
                parts.setdefault(name, []).append(values)
        return {name: torch.cat(values).tolist() for name, values in parts.items()}

    def _evaluate(self) -> None:
        if self.ctx.is_main:
            model, best = load_trained(self.folder)
            model = model.to(self.device)
            report = {
                "low_dose": self._quality(None, "test"),
                "network": self._quality(model, "test"),
            }
            summary = {
                name: {metric: mean_sd(values) for metric, values in rows.items()}
                for name, rows in report.items()
            }
            metrics = {
                "dose_percent": self.config.dose,
                "preset": self.preset.name,
                "arch": self.config.arch,
                "test_slices": len(self.data["test"][1]),
                "images": (
                    f"{self.preset.size}x{self.preset.size} native-resolution patches"
                    if self.preset.patch
                    else f"whole slices resized to {self.preset.size}x{self.preset.size}"
                ),
                "ranges": {
                    "psnr, ssim": "full range [-1024, 3072] HU",
                    "psnr_window, ssim_window": "soft-tissue window [-160, 240] HU",
                },
                "mean_sd": summary,
                "per_slice": report,
                "parameters": count_parameters(model),
                "gflops_512": count_flops(model, 512, 512) / 1e9,
                "best_epoch": best["epoch"],
                "val_psnr_best": best["val_psnr"],
                "seconds": {
                    "search": round(self.state.get("seconds_search", 0.0), 1),
                    "retrain": round(self.state.get("seconds_retrain", 0.0), 1),
                },
                "search_stopped_early": self.state.get("search_stopped_early"),
                "search_skipped": self.state.get("search_skipped", False),
                "augmentation": self.config.augment,
                "perceptual_weight": self.config.perceptual_weight,
                "ssim_weight": self.config.ssim_weight,
                "edge_weight": self.config.edge_weight,
                "device": self.device.type,
            }
            (self.folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
            from manas_infer.train.plot import plot_curves

            plot_curves(self.state["history"], self.folder / "curves.png")
            self.state["stage"] = "done"
        self._save_state()
        barrier(self.ctx)


def create_run(runs_root: Path, config: RunConfig) -> Path:
    """A new run directory named by time, network, dose and preset, with its config.json."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{config.arch}-{config.dose:g}pct-{config.preset.name}"
    folder = Path(runs_root) / name
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = Path(runs_root) / f"{name}-{suffix}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    return folder


def load_run_config(folder: Path) -> RunConfig:
    """The config of an existing run, for --resume; a clear error if it is not a run."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a run directory (no config.json)")
    return RunConfig.from_dict(json.loads(path.read_text()))


def build_network(arch: str, genotype: str | None) -> torch.nn.Module:
    """A freshly initialised net to retrain: the derived MANAS net of a genotype (JSON), or
    a baseline (``--arch redcnn|dncnn``), which has none."""
    if arch == "manas":
        return DerivedNetwork(Genotype.from_json(genotype))
    return build_baseline(arch)


def load_trained(folder: Path) -> tuple[torch.nn.Module, dict]:
    """The retrained network of a run (best validation epoch) in eval mode, and its checkpoint.

    The one way export, evaluation and tests rebuild a trained net from a run directory.
    """
    best = read_weights(Path(folder))
    model = build_network(best.get("arch", "manas"), best["genotype"])
    model.load_state_dict(best["state_dict"])
    return model.eval(), best


def moved_run(folder: Path, config: RunConfig, data: Path | None, cache: Path | None) -> RunConfig:
    """The config of a run copied to another machine, pointed at where its data and cache
    are there, and saved back. The dataset's cache key (series UIDs and settings) still
    decides which pairs it trains on, so the same data gives the same run."""
    changes: dict[str, str] = {}
    if data is not None:
        changes["data_root"] = str(Path(data).resolve())
    if cache is not None:
        changes["cache_root"] = str(Path(cache).resolve())
    config = replace(config, **changes)
    (Path(folder) / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    return config


def weights_file(path: Path) -> Path:
    """A run directory -> its checkpoints/best.pt; a .pt file -> itself."""
    path = Path(path)
    return path / "checkpoints" / "best.pt" if path.is_dir() else path


def read_weights(path: Path) -> dict:
    """A retrained checkpoint (genotype, state_dict, arch, dose...) from a run directory or
    a .pt file; FileNotFoundError naming it when there is none yet."""
    file = weights_file(path)
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no retrained network yet ({file} is missing)")
    return torch.load(file, map_location="cpu", weights_only=False)


def run_stage(folder: Path) -> str:
    """Where a run directory stands: search, retrain, evaluate or done."""
    path = Path(folder) / "checkpoints" / "state.pt"
    if not path.is_file():
        return "search"
    return torch.load(path, map_location="cpu", weights_only=False)["stage"]
