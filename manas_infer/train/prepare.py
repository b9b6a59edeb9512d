"""Building the training cache: the patients split (``train/split.py``), each kept slice
simulated at low dose once, the pairs written with their manifest.

``train/dataset.py`` states the protocol and reads what this writes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from manas_infer import __version__
from manas_infer.console import progress
from manas_infer.data.series import CTSeries
from manas_infer.data.volume import CTVolume
from manas_infer.errors import InputProblem
from manas_infer.hashing import text_sha256
from manas_infer.simulate.dose import LowDoseSimulator
from manas_infer.train.dataset import (
    CACHE_FORMAT,
    DatasetSpec,
    PreparedDataset,
    evenly_spaced,
    pad_to_square,
    patch_corners,
    training_views,
)
from manas_infer.train.split import Source, check_data

# One source of the plan: its role ("train" or "test") and the indices of its kept slices.
Planned = tuple[str, Source, np.ndarray]


def _cache_key(sources: list[Source], spec: DatasetSpec) -> str:
    described = sorted((source.series_uid, source.n_slices) for source in sources)
    payload = json.dumps(
        {"format": CACHE_FORMAT, "sources": described, "spec": spec.to_dict()}, sort_keys=True
    )
    return text_sha256(payload, 16)


def _plan(
    train_patients: list[str],
    test_patients: list[str],
    by_patient: dict[str, list[Source]],
    max_slices: int | None,
) -> list[Planned]:
    """Every source with the slices kept of it: at most ``max_slices`` a patient, evenly
    spaced over all of the patient's series together."""
    plan: list[Planned] = []
    for patient in train_patients + test_patients:
        role = "test" if patient in test_patients else "train"
        n_total = sum(source.n_slices for source in by_patient[patient])
        keep = set(evenly_spaced(n_total, max_slices).tolist())
        offset = 0
        for source in by_patient[patient]:
            chosen = np.array([i for i in range(source.n_slices) if i + offset in keep], int)
            offset += source.n_slices
            if len(chosen):
                plan.append((role, source, chosen))
    return plan


def _slice_uid(source: Source, index: int) -> str:
    if isinstance(source, CTVolume):
        return source.slice_uid(index)
    return source.slices[index].sop_instance_uid


def _decode_slices(
    source: CTSeries, chosen: np.ndarray, problems: list[InputProblem]
) -> tuple[np.ndarray, np.ndarray]:
    """(the chosen indices that decode, their HU [n, H, W]); each slice that does not
    decode (a truncated export, say) is added to ``problems`` by name and left out, so one
    bad file never ends a training run."""
    kept, slices = [], []
    for i in chosen:
        try:
            slices.append(source.read_slice_hu(int(i)))
        except InputProblem as problem:
            problems.append(problem)
            continue
        kept.append(int(i))
    volume = np.stack(slices) if slices else np.empty((0, *source.shape), np.float32)
    return np.asarray(kept, dtype=np.int64), volume


@dataclass
class _Pairs:
    """The cache's arrays as they fill: one row per pair (a resized slice or one patch),
    allocated for every planned slice, trimmed to those that decoded."""

    normal: np.ndarray  # [rows, size, size] HU
    low: np.ndarray
    spacing: np.ndarray  # [rows] native pixel size, mm
    corners: np.ndarray  # [rows, 2] patch corners (zeros for whole slices)
    native_index: np.ndarray  # [rows] which native slice each pair was cut from
    natives: list[np.ndarray] = field(default_factory=list)  # int16 HU, one per slice
    records: list[dict] = field(default_factory=list)  # the manifest's "slices"
    roles: list[str] = field(default_factory=list)

    @classmethod
    def allocate(cls, rows: int, size: int) -> _Pairs:
        normal = np.empty((rows, size, size), np.float32)
        return cls(
            normal=normal,
            low=np.empty_like(normal),
            spacing=np.empty(rows, np.float64),
            corners=np.zeros((rows, 2), np.int64),
            native_index=np.empty(rows, np.int64),
        )

    def add_slice(
        self,
        square: torch.Tensor,
        noisy: torch.Tensor,
        where: np.ndarray,
        spec: DatasetSpec,
        record: dict,
        role: str,
        spacing_mm: float,
    ) -> None:
        """One native slice pair [1, M, M] -> a row per corner of ``where`` (one row of
        the resized whole slice when ``spec.patch`` is off)."""
        first = len(self.records)
        for corner in where:
            row = len(self.records)
            view = torch.as_tensor(corner)[None] if spec.patch else None
            self.normal[row] = training_views(square, spec.size, view)[0]
            self.low[row] = training_views(noisy, spec.size, view)[0]
            self.corners[row] = corner
            self.native_index[row] = len(self.natives)
            corner_list = [int(value) for value in corner] if spec.patch else None
            self.records.append({**record, "corner": corner_list})
            self.roles.append(role)
        self.spacing[first : len(self.records)] = spacing_mm
        native = np.clip(np.rint(square[0].numpy()), -32768, 32767).astype(np.int16)
        self.natives.append(native)

    def trim(self) -> None:
        """Drop the rows of slices that could not be decoded."""
        rows = len(self.records)
        self.normal, self.low, self.spacing = (
            self.normal[:rows],
            self.low[:rows],
            self.spacing[:rows],
        )
        self.corners, self.native_index = self.corners[:rows], self.native_index[:rows]


@dataclass
class _Simulation:
    """The seeded simulator and random streams of one cache build."""

    spec: DatasetSpec
    simulator: LowDoseSimulator
    generator: torch.Generator  # the noise, on the simulator's device
    rng: np.random.Generator  # patch corners, then the arch-data draw
    batch: int

    @classmethod
    def start(cls, spec: DatasetSpec, device: torch.device | str, batch: int) -> _Simulation:
        simulator = LowDoseSimulator(spec.dose, device=device)
        generator = torch.Generator(device=simulator.device).manual_seed(spec.split.seed)
        return cls(spec, simulator, generator, np.random.default_rng(spec.split.seed), batch)

    def add_source(
        self,
        pairs: _Pairs,
        planned: Planned,
        problems: list[InputProblem],
        on_slice: Callable[[int], None] | None,
    ) -> None:
        """Read the kept slices of one source, simulate them in batches, add their pairs."""
        role, source, chosen = planned
        if isinstance(source, CTVolume):
            volume = source.read_hu()[chosen]
        else:  # decode only the slices kept, not the whole series
            planned_count = len(chosen)
            chosen, volume = _decode_slices(source, chosen, problems)
            if on_slice is not None and len(chosen) < planned_count:
                on_slice(planned_count - len(chosen))
        spec, patches = self.spec, self.spec.patches_per_slice if self.spec.patch else 1
        for start in range(0, len(chosen), self.batch):
            square = pad_to_square(torch.from_numpy(volume[start : start + self.batch]))
            noisy = self.simulator.simulate(
                square.to(self.simulator.device), source.pixel_spacing[0], generator=self.generator
            ).cpu()
            for slot, index in enumerate(chosen[start : start + self.batch]):
                if spec.patch:
                    where = patch_corners(square[slot].numpy(), spec.size, patches, self.rng)
                else:
                    where = np.zeros((1, 2), np.int64)
                record = {
                    "patient": source.patient_hash,
                    "series_uid": source.series_uid,
                    "slice_uid": _slice_uid(source, int(index)),
                    "source_index": int(index),
                }
                pairs.add_slice(square[slot : slot + 1], noisy[slot : slot + 1], where, spec,
                                record, role, source.pixel_spacing[0])  # fmt: skip
            if on_slice is not None:
                on_slice(len(square))

    def split(self, roles: list[str]) -> dict[str, list[int]]:
        """Row indices per split: the test patients' rows, and the training rows drawn
        into train-data and arch-data ``arch_ratio`` : 1."""
        train_rows = [i for i, role in enumerate(roles) if role == "train"]
        n_arch = max(1, round(len(train_rows) / (self.spec.split.arch_ratio + 1)))
        arch = sorted(self.rng.choice(train_rows, size=n_arch, replace=False).tolist())
        return {
            "train": [i for i in train_rows if i not in set(arch)],
            "arch": arch,
            "test": [i for i, role in enumerate(roles) if role == "test"],
        }


# --------------------------------------------------------------------------------------
# Writing the cache


def _write_cache(folder: Path, pairs: _Pairs, manifest: dict, patch: bool) -> None:
    """Write into a partial folder, then move it into place: a killed build leaves no
    half-written cache that a later run would take for a finished one."""
    partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    np.save(partial / "normal.npy", pairs.normal)
    np.save(partial / "low.npy", pairs.low)
    np.save(partial / "spacing.npy", pairs.spacing)  # native pixel size of each pair's slice
    if len({native.shape for native in pairs.natives}) == 1:  # fresh noise: one matrix size
        np.save(partial / "native.npy", np.stack(pairs.natives))
        np.save(partial / "native_index.npy", pairs.native_index)
        if patch:
            np.save(partial / "corners.npy", pairs.corners)
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(partial, folder)


def prepare_dataset(
    root: Path,
    spec: DatasetSpec,
    cache_root: Path,
    device: torch.device | str = "cpu",
    batch: int = 8,
    on_total: Callable[[int], None] | None = None,
    on_slice: Callable[[int], None] | None = None,
) -> tuple[PreparedDataset, list[InputProblem]]:
    """Build (or reuse) the cached pairs for ``root``; returns them and the inputs skipped.

    Raises ``InputProblem`` before any simulation when the data cannot give a split.
    """
    root = Path(root)
    sources, problems, (train_patients, test_patients, by_patient) = check_data(root, spec)
    name = f"{spec.dose.dose_percent:g}pct-{spec.size}px-{_cache_key(sources, spec)}"
    folder = Path(cache_root) / name
    if (folder / "manifest.json").is_file():
        return PreparedDataset.load(folder), problems

    plan = _plan(train_patients, test_patients, by_patient, spec.split.max_slices_per_patient)
    n_training = sum(len(chosen) for role, _, chosen in plan if role == "train")
    if n_training < 2:
        raise InputProblem(root, f"only {n_training} training slice(s): too few to split")
    total = sum(len(chosen) for _, _, chosen in plan)
    if on_total is not None:
        on_total(total)

    simulation = _Simulation.start(spec, device, batch)
    pairs = _Pairs.allocate(total * (spec.patches_per_slice if spec.patch else 1), spec.size)
    started = time.perf_counter()
    for planned in plan:
        simulation.add_source(pairs, planned, problems, on_slice)
    pairs.trim()
    if "train" not in pairs.roles:
        raise InputProblem(root, "no training slice could be decoded")
    splits = simulation.split(pairs.roles)
    for split, rows in splits.items():
        for row in rows:
            pairs.records[row]["split"] = split
    manifest = {
        "format": CACHE_FORMAT,
        "software_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "root": str(root.resolve()),
        "spec": spec.to_dict(),
        "patients": {
            "train": [by_patient[patient][0].patient_hash for patient in train_patients],
            "test": [by_patient[patient][0].patient_hash for patient in test_patients],
        },
        "splits": splits,
        "slices": pairs.records,
        "skipped": [str(problem) for problem in problems],
        "seconds": round(time.perf_counter() - started, 2),
        "device": simulation.simulator.device.type,
    }
    _write_cache(folder, pairs, manifest, spec.patch)
    # Round-trip through JSON so a fresh manifest equals a reloaded one (tuples -> lists).
    return PreparedDataset(folder, json.loads(json.dumps(manifest)), reused=False), problems


def prepare_with_progress(
    root: Path, spec: DatasetSpec, cache_root: Path, device: torch.device | str, title: str
) -> tuple[PreparedDataset, list[InputProblem]]:
    """``prepare_dataset`` under a progress bar named ``title`` (counting the slices once
    they are known)."""
    with progress() as bar:
        task = bar.add_task(title, total=None)
        return prepare_dataset(
            root, spec, cache_root, device=device,
            on_total=lambda total: bar.update(task, total=total),
            on_slice=lambda count: bar.advance(task, count),
        )  # fmt: skip
