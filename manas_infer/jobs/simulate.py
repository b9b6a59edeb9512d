"""Simulate a series: a normal-dose DICOM CT series -> a simulated low-dose derived series
(the ``simulate`` command and the demo)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from manas_infer.console import console
from manas_infer.data.derived import Derivation, write_derived_series
from manas_infer.data.series import CTSeries
from manas_infer.errors import InputProblem
from manas_infer.jobs.each_series import (
    DerivedVolumes,
    Panel,
    for_each_series,
    scan_inputs,
)
from manas_infer.simulate.dose import DoseSettings, LowDoseSimulator


def simulation_derivation(settings: DoseSettings, seed: int) -> Derivation:
    """Name and UID seed of a simulated series; the seed and settings make it unique."""
    dose = f"{settings.dose_percent:g} %"
    return Derivation(
        identity="simulate:" + json.dumps({**settings.to_dict(), "seed": seed}, sort_keys=True),
        series_description=f"Simulated {dose} dose (manas-infer)",
        derivation_description=(
            f"Simulated low-dose CT at {dose} of the source dose: Poisson and electronic "
            f"noise (p0 {settings.p0:g}, sigma_e^2 {settings.electronic_variance:g}) in "
            f"{settings.n_views} parallel-beam projections, {settings.mode} mode, seed {seed}"
        ),
        series_number_offset=2000,
        equipment_model="manas-infer dose simulator",
        contribution=f"Low-dose simulation at {dose}",
    )


def simulate_series(
    series: CTSeries,
    simulator: LowDoseSimulator,
    out_dir: Path,
    seed: int = 0,
    batch: int = 4,
    overwrite: bool = False,
    on_slice: Callable[[int], None] | None = None,
) -> DerivedVolumes:
    """Simulate every slice and write the derived series.

    Returns what was written with the normal- (source) and low-dose (output) HU volumes.
    The noise of batch k is drawn from ``seed + k``: the same seed and batch size give the
    same pixels, on the same device.
    """
    normal = series.read_hu()
    low = np.empty_like(normal)
    spacing = series.pixel_spacing[0]
    for batch_index, start in enumerate(range(0, series.n_slices, batch)):
        stop = min(start + batch, series.n_slices)
        generator = torch.Generator(device=simulator.device).manual_seed(seed + batch_index)
        hu = torch.from_numpy(normal[start:stop]).to(simulator.device)
        low[start:stop] = simulator.simulate(hu, spacing, generator=generator).cpu().numpy()
        if on_slice is not None:
            on_slice(stop - start)
    written = write_derived_series(
        series, low, simulation_derivation(simulator.settings, seed), out_dir, overwrite
    )
    return DerivedVolumes(written, normal, low)


@dataclass(frozen=True)
class Simulation:
    """The simulate job for ``for_each_series``: every series at the same dose and seed."""

    simulator: LowDoseSimulator
    seed: int
    batch: int
    overwrite: bool

    @property
    def dose(self) -> float:
        return self.simulator.settings.dose_percent

    def label(self, series: CTSeries) -> str:
        return f"Simulating {self.dose:g} % {series.description[:30]}"

    def run(
        self, series: CTSeries, folder: Path, on_slice: Callable[[int], None]
    ) -> DerivedVolumes:
        return simulate_series(
            series, self.simulator, folder, self.seed, self.batch, self.overwrite, on_slice
        )

    def finish(self, series: CTSeries, done: DerivedVolumes, seconds: float) -> dict:
        """The added noise in the middle slice, and a line that says what was written."""
        middle = series.n_slices // 2
        noise_sd = float((done.output[middle] - done.source[middle]).std())
        written = done.written
        console.print(
            f"[green]wrote[/green] {written.folder}: {written.n_slices} slices at "
            f"{self.dose:g} % dose in {seconds:.1f} s (added noise SD {noise_sd:.1f} HU in the "
            f"middle slice, {self.simulator.device.type})"
        )
        return {"noise_sd_hu_middle_slice": round(noise_sd, 1)}

    def panels(self, done: DerivedVolumes, middle: int) -> tuple[list[Panel], Panel]:
        normal, low = done.source[middle], done.output[middle]
        panels = [("Normal dose", normal), (f"Simulated {self.dose:g} % dose", low)]
        return panels, ("Added noise", low - normal)


def simulate_all(
    inputs: Sequence[Path],
    simulator: LowDoseSimulator,
    out: Path,
    seed: int = 0,
    batch: int = 4,
    preview: Path | None = None,
    overwrite: bool = False,
) -> tuple[list[dict], list[InputProblem]]:
    """Simulate every series under ``inputs``; print a line per series and per problem.
    Returns one result a written series, and every problem met."""
    found, problems = scan_inputs(inputs)
    job = Simulation(simulator, seed, batch, overwrite)
    work = [(series, job) for series in found]
    results = for_each_series(work, out, preview, len(found) > 1, problems)
    return results, problems
