"""A run's training data on the training device, and the batches the stages take from it.

The main process prepares the cache (simulating whatever is missing) while the others wait;
then every process loads each split onto its device once, so a batch is an index into
tensors already there. Fresh noise and augmentation, when a run asks for them, are drawn
per batch on the device from generators that the trainer saves with each epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from manas_infer.console import console
from manas_infer.errors import InputProblem
from manas_infer.hu import normalize
from manas_infer.train.augment import Augmentation, augment_pairs
from manas_infer.train.dataset import SPLITS, FreshNoise, PreparedDataset
from manas_infer.train.distributed import DistContext, barrier
from manas_infer.train.prepare import prepare_dataset, prepare_with_progress
from manas_infer.train.run import RunConfig, dataset_spec

# (low dose, normal dose, pixel spacing) of one split: [N, S, S] HU, [N, S, S] HU, [N] mm.
Split = tuple[Tensor, Tensor, Tensor]
# (native square normal-dose slices [N, M, M] HU on the device, crop corners [N, 2] or None).
Natives = tuple[Tensor, Tensor | None]


def prepare_for_run(config: RunConfig, ctx: DistContext, folder: Path) -> PreparedDataset:
    """The run's cached dataset: built (or reused) by the main process, with a progress bar
    and the skipped inputs printed, then read by the others; recorded in dataset.json."""
    spec = dataset_spec(config)
    cache = Path(config.cache_root) / "datasets"
    if ctx.is_main:  # one process simulates; the others then read the cache
        title = f"Preparing data at {config.dose:g} % dose"
        prepared, problems = prepare_with_progress(
            Path(config.data_root), spec, cache, ctx.device, title
        )
        for problem in problems:
            console.print(f"[yellow]skipped:[/yellow] {problem}")
    barrier(ctx)
    if not ctx.is_main:
        prepared, _ = prepare_dataset(Path(config.data_root), spec, cache, device="cpu")
    if ctx.is_main:
        summary = {"folder": str(prepared.folder), "counts": prepared.counts(),
                   "spec": spec.to_dict(), "reused": prepared.reused}  # fmt: skip
        (folder / "dataset.json").write_text(json.dumps(summary, indent=2))
    return prepared


def load_splits(prepared: PreparedDataset, device: torch.device) -> dict[str, Split]:
    """Every split of the cache on ``device``, its pixel spacings checked once on the host
    (the simulator trusts spacings on the GPU)."""
    splits: dict[str, Split] = {}
    for split in SPLITS:
        low, normal, spacing = prepared.arrays(split)
        if len(spacing) and not (np.isfinite(spacing).all() and (spacing > 0).all()):
            raise InputProblem(prepared.folder, f"{split}: a pixel spacing is not > 0")
        splits[split] = tuple(
            torch.from_numpy(array).to(device) for array in (low, normal, spacing.astype("float32"))
        )  # type: ignore[assignment]
    return splits


def load_natives(
    prepared: PreparedDataset, data_root: Path, device: torch.device
) -> dict[str, Natives]:
    """The native slices of the train and arch splits, which fresh noise simulates again
    every batch; an InputProblem when the slices have several matrix sizes."""
    natives: dict[str, Natives] = {}
    for split in ("train", "arch"):
        native = prepared.native(split)
        if native is None:
            raise InputProblem(
                data_root, "--fresh-noise needs training slices of one matrix size (found several)"
            )
        slices, corners = native
        natives[split] = (
            torch.from_numpy(slices).to(device),
            None if corners is None else torch.from_numpy(corners),
        )
    return natives


class Batches:
    """Index batches of the splits on the device -> normalised (low, normal) pairs."""

    def __init__(
        self,
        splits: dict[str, Split],
        device: torch.device,
        natives: dict[str, Natives] | None = None,
        fresh: FreshNoise | None = None,
        augment: Augmentation | None = None,
        augment_rng: torch.Generator | None = None,
    ) -> None:
        self.splits, self.device, self.natives = splits, device, natives or {}
        self.fresh, self.augment, self.augment_rng = fresh, augment, augment_rng

    def count(self, split: str) -> int:
        """How many pairs a split holds."""
        return len(self.splits[split][1])

    def on_device(self, batches: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """An epoch's index batches as (CPU, device) pairs, moved in one copy rather than one
        per step. The CPU ones pick crop corners, which stay on the CPU (they become Python
        ints), so no index makes a round trip from the device."""
        if self.device.type == "cpu" or not batches:
            return [(batch, batch) for batch in batches]
        flat = torch.cat(batches)
        if self.device.type == "cuda":
            flat = flat.pin_memory()  # lets the copy run without blocking the host
        moved = flat.to(self.device, non_blocking=True).split([len(b) for b in batches])
        return list(zip(batches, moved, strict=True))

    def pairs(
        self,
        split: str,
        idx: Tensor,
        *,
        on_device: Tensor | None = None,
        fresh_noise: bool,
        augment: bool,
    ) -> tuple[Tensor, Tensor]:
        """(low, normal) normalised [B, 1, H, W] on the device; ``idx`` on the CPU and, if
        already there, ``on_device`` the same indices on the device. ``fresh_noise``: a new
        low-dose realisation (when the run draws them); ``augment``: the run's augmentation
        (when it has one). Training pairs take both; validation and test pairs neither."""
        low, normal, spacing = self.splits[split]
        at = idx.to(self.device) if on_device is None else on_device
        normal_dose = normal[at][:, None]
        if self.fresh is not None and fresh_noise:
            native, corners = self.natives[split]
            where = None if corners is None else corners[idx.cpu()]
            low_dose = self.fresh(native[at], spacing[at], where)
        else:
            low_dose = low[at][:, None]
        if augment and self.augment is not None:
            low_dose, normal_dose = augment_pairs(
                low_dose, normal_dose, self.augment, self.augment_rng
            )
        return normalize(low_dose), normalize(normal_dose)
