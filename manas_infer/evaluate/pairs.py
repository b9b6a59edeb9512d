"""What an evaluation compares against: (low-dose, full-dose) slice pairs in HU.

Three sources, so a site can judge a model on its own data:
- ``simulated_pairs``: full-dose series under a folder, low dose simulated by the project's
  own simulator (seeded per slice, so every method sees the same noise);
- ``matched_pairs``: a real low-dose series and its full-dose series (for example a
  quarter-dose / full-dose acquisition), slices matched by position along the slice normal;
- ``run_test_pairs``: the held-out test split a training run was scored on (the cached
  patches), so ``evaluate`` reproduces the run's own numbers and adds the baselines.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from manas_infer.data.series import CTSeries, scan
from manas_infer.errors import InputProblem
from manas_infer.hu import is_padding
from manas_infer.simulate.dose import DoseSettings, LowDoseSimulator
from manas_infer.simulate.texture import apodize
from manas_infer.train.dataset import PreparedDataset, evenly_spaced


@dataclass
class Pairs:
    """N slice pairs; every method is scored on exactly these."""

    low: list[np.ndarray]  # [H, W] float32 HU each (sizes may differ between series)
    full: list[np.ndarray]
    labels: list[str]  # "series folder, slice k" for tables and figures
    source: str  # one line: where the pairs come from, for the report
    problems: list[InputProblem] = field(default_factory=list)
    spacing: list[float] = field(default_factory=list)  # mm per slice; empty if unknown

    def __len__(self) -> int:
        return len(self.full)

    def add(self, low: np.ndarray, full: np.ndarray, label: str, spacing: float) -> None:
        self.low.append(low)
        self.full.append(full)
        self.labels.append(label)
        self.spacing.append(float(spacing))


def _grain(noise: np.ndarray, sigma_px: float) -> np.ndarray:
    as_tensor = torch.from_numpy(np.ascontiguousarray(noise, dtype=np.float32))[None, None]
    return apodize(as_tensor, [sigma_px])[0, 0].numpy()


def with_grain(pairs: Pairs, sigma_px: float) -> Pairs:
    """The same slices and noise SD, the noise (low - full) given the coarser grain of a
    soft-tissue kernel (``simulate/texture.py``): no second simulation for a second grain."""
    grained = Pairs([], [], [], f"{pairs.source}, noise grain of a {sigma_px:g}-pixel "
                    "Gaussian apodization", list(pairs.problems))  # fmt: skip
    for low, full, label, spacing in zip(
        pairs.low, pairs.full, pairs.labels, pairs.spacing, strict=True
    ):
        grained.add(np.where(is_padding(full), low, full + _grain(low - full, sigma_px)),
                    full, label, spacing)  # fmt: skip
    return grained


def simulated_pairs(
    root: Path,
    dose: float,
    seed: int = 0,
    max_slices: int | None = None,
    n_views: int = 720,
    device: str = "cpu",
    on_slice: Callable[[], None] | None = None,
    texture_sigma_px: float = 0.0,
) -> Pairs:
    """Every CT series under ``root`` at full dose, and the same slices at ``dose`` percent;
    ``texture_sigma_px`` > 0 gives the noise the coarser grain of a soft-tissue kernel at
    the same SD (``simulate/texture.py``), 0 keeps the simulator's ramp grain."""
    report = scan(root)
    simulator = LowDoseSimulator(DoseSettings(dose_percent=dose, n_views=n_views), device=device)
    source = f"{root}: simulated {dose:g} % dose, seed {seed}"
    pairs = Pairs([], [], [], source, report.problems)
    for s_index, series in enumerate(report.series):
        for i in evenly_spaced(series.n_slices, max_slices).tolist():
            try:
                full = series.read_slice_hu(i)
            except InputProblem as problem:
                pairs.problems.append(problem)
                continue
            low = simulator.simulate_numpy(
                full, series.pixel_spacing[0], seed=seed * 1_000_003 + s_index * 10_007 + i
            )
            pairs.add(low, full, f"{series.folder.name}, slice {i + 1}", series.pixel_spacing[0])
            if on_slice is not None:
                on_slice()
    if not pairs.full:
        raise InputProblem(root, "no usable CT slices to evaluate on")
    return with_grain(pairs, texture_sigma_px) if texture_sigma_px > 0 else pairs


def _one_series(root: Path, role: str) -> CTSeries:
    report = scan(root)
    if len(report.series) != 1:
        found = "no CT series" if not report.series else f"{len(report.series)} CT series"
        detail = f" ({report.problems[0].problem})" if report.problems else ""
        raise InputProblem(
            root, f"the {role} folder must hold one CT series, found {found}{detail}"
        )
    return report.series[0]


def matched_pairs(
    low_dir: Path,
    full_dir: Path,
    max_slices: int | None = None,
    on_slice: Callable[[], None] | None = None,
) -> Pairs:
    """A real low-dose series and its full-dose series, slices matched by position.

    A low-dose slice pairs with the full-dose slice nearest along the slice normal when that
    is within a quarter of the full-dose slice spacing (1 mm for a single slice); the others
    are listed as problems, not guessed. Both series must share the matrix size.
    """
    low, full = _one_series(low_dir, "low-dose"), _one_series(full_dir, "full-dose")
    if low.shape != full.shape:
        raise InputProblem(low_dir, f"matrix {low.shape} differs from the full-dose {full.shape}")
    tolerance = (full.slice_spacing or 4.0) / 4
    full_at = np.array([header.location for header in full.slices])
    pairs = Pairs([], [], [], f"{low_dir} (low dose) matched to {full_dir} (full dose)")
    for i in evenly_spaced(low.n_slices, max_slices).tolist():
        where = low.slices[i].location
        j = int(np.argmin(np.abs(full_at - where)))
        if abs(full_at[j] - where) > tolerance:
            pairs.problems.append(InputProblem(
                low.slices[i].path,
                f"no full-dose slice within {tolerance:.2f} mm of {where:.2f} mm: left out",
            ))  # fmt: skip
            continue
        label = f"{low.folder.name}, slice {i + 1} at {where:.1f} mm"
        try:
            pairs.add(low.read_slice_hu(i), full.read_slice_hu(j), label, low.pixel_spacing[0])
        except InputProblem as problem:  # one undecodable slice: say so, score the rest
            pairs.problems.append(problem)
            continue
        if on_slice is not None:
            on_slice()
    if not pairs.full:
        raise InputProblem(low_dir, "no slice matches a full-dose slice by position")
    return pairs


def run_test_pairs(run_dir: Path, max_slices: int | None = None) -> Pairs:
    """The test split a training run was scored on (its cached low/normal images)."""
    info = run_dir / "dataset.json"
    if not info.is_file():
        raise InputProblem(run_dir, "not a training run directory (no dataset.json)")
    folder = Path(json.loads(info.read_text())["folder"])
    if not folder.is_dir():
        raise InputProblem(folder, "the run's cached dataset is gone; give --data DIR instead")
    low, full, spacing = PreparedDataset.load(folder).arrays("test")
    keep = evenly_spaced(len(full), max_slices).tolist()
    return Pairs(
        [low[i] for i in keep],
        [full[i] for i in keep],
        [f"test image {i + 1}" for i in keep],
        f"{run_dir.name}: its held-out test split ({folder})",
        spacing=[float(spacing[i]) for i in keep],
    )
