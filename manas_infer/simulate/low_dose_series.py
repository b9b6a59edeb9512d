"""A DICOM CT series -> a simulated low-dose DICOM series (the ``simulate`` command)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from manas_infer.data.derived import Derivation, WrittenSeries, write_derived_series
from manas_infer.data.series import CTSeries
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
) -> tuple[WrittenSeries, np.ndarray, np.ndarray]:
    """Simulate every slice and write the derived series.

    Returns what was written and the normal- and low-dose HU volumes (for previews).
    The noise of batch k is drawn from ``seed + k``: the same seed and batch size give the
    same pixels, on the same device.
    """
    normal = series.read_hu()
    low = np.empty_like(normal)
    spacing = series.pixel_spacing[0]
    for k, start in enumerate(range(0, series.n_slices, batch)):
        stop = min(start + batch, series.n_slices)
        generator = torch.Generator(device=simulator.device).manual_seed(seed + k)
        hu = torch.from_numpy(normal[start:stop]).to(simulator.device)
        low[start:stop] = simulator.simulate(hu, spacing, generator=generator).cpu().numpy()
        if on_slice is not None:
            on_slice(stop - start)
    written = write_derived_series(
        series, low, simulation_derivation(simulator.settings, seed), out_dir, overwrite
    )
    return written, normal, low
