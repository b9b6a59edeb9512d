"""Compare denoisers (the ``evaluate`` command): the rows (runs, models, BM3D), the series
pairs they are scored on or the LCD-CT phantom, with progress bars, into a report folder."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import manas_infer.evaluate as evaluation
from manas_infer.console import progress, report_problem
from manas_infer.evaluate import LcdPhantom, Method, Pairs
from manas_infer.runtime import ModelError


class CannotEvaluate(Exception):
    """A run, model or phantom that cannot be loaded (missing, unreadable, a wrong device)."""


def compared_methods(
    methods: list[str], device: str, bm3d: bool, bm3d_sigma: float | None, ensemble: int = 1
) -> list[Method]:
    """The rows besides the input: every run directory (over ``ensemble`` orientations) or
    model named, and BM3D if asked."""
    try:
        rows = [evaluation.method_for(method, device, ensemble) for method in methods]
    except (ModelError, FileNotFoundError, ValueError) as exc:
        raise CannotEvaluate(str(exc)) from exc
    if bm3d:
        rows.append(evaluation.bm3d_method(bm3d_sigma))
    return rows


def load_phantom(folder: Path) -> LcdPhantom:
    """The LCD-CT phantom in ``folder``; InputProblem for another layout."""
    try:
        return evaluation.load_lcd_phantom(folder)
    except (FileNotFoundError, ValueError) as exc:
        raise CannotEvaluate(str(exc)) from exc


def default_report_folder(kind: str) -> Path:
    """reports/KIND-YYYYmmdd-HHMMSS: a new folder for every report."""
    return Path("reports") / time.strftime(f"{kind}-%Y%m%d-%H%M%S")


@dataclass(frozen=True)
class PairsSource:
    """Where the patient pairs come from: real low-dose series paired with ``data``
    (``low``), ``data`` with its low dose simulated at ``dose``, or else the test split of
    the training run ``run``."""

    data: Path | None
    low: Path | None
    run: Path | None
    dose: float | None
    seed: int
    views: int
    max_slices: int | None
    texture_sigma_px: float = 0.0  # simulated pairs only: the noise's grain (texture.py)


def evaluate_pairs(
    source: PairsSource,
    rows: list[Method],
    device_type: str,
    out: Path | None,
    figures: int,
    vgg_weights: Path | None,
    bm3d_sigma: float | None,
    physics: bool,
) -> tuple[dict, Pairs, Path]:
    """Read the pairs (each unusable file reported), score the input and every row on them
    and write the report. Returns (metrics, pairs, report folder); raises InputProblem when
    the pairs cannot be read at all."""
    with progress() as bar:
        task = bar.add_task("Reading slices", total=None)
        pairs = _read_pairs(source, device_type, lambda: bar.advance(task))
        bar.update(task, total=len(pairs), completed=len(pairs))
        for problem in pairs.problems:
            report_problem(problem)
        steps = bar.add_task("Evaluating", total=len(pairs) * (len(rows) + 1))
        folder = out or default_report_folder("evaluate")
        settings = {"dose_percent": source.dose, "seed": source.seed, "views": source.views,
                    "noise_texture_sigma_px": source.texture_sigma_px,
                    "device": device_type, "bm3d_sigma": bm3d_sigma}  # fmt: skip
        metrics = evaluation.evaluate(
            pairs, rows, folder, figures, vgg_weights, settings=settings,
            on_step=lambda name: bar.update(steps, advance=1, description=f"Evaluating {name}"),
            physics=physics,
        )  # fmt: skip
    return metrics, pairs, folder


def _read_pairs(source: PairsSource, device_type: str, on_slice: Callable[[], None]) -> Pairs:
    if source.data is None:
        return evaluation.run_test_pairs(source.run, source.max_slices)
    if source.low is not None:
        return evaluation.matched_pairs(source.low, source.data, source.max_slices, on_slice)
    return evaluation.simulated_pairs(
        source.data, source.dose, source.seed, source.max_slices, source.views, device_type,
        on_slice, source.texture_sigma_px,
    )  # fmt: skip


def evaluate_phantom(
    phantom: LcdPhantom,
    rows: list[Method],
    device_type: str,
    out: Path | None,
    bm3d_sigma: float | None,
) -> tuple[dict, Path]:
    """The physicist's battery on the LCD-CT phantom for the input and every row, at each of
    its doses. Returns (metrics, report folder)."""
    report = out or default_report_folder("phantom")
    with progress() as bar:
        steps = bar.add_task("Phantom battery", total=len(phantom.doses) * (len(rows) + 1))
        metrics = evaluation.evaluate_phantom(
            phantom, rows, report,
            settings={"device": device_type, "bm3d_sigma": bm3d_sigma},
            on_step=lambda name: bar.update(steps, advance=1, description=f"Phantom: {name}"),
        )  # fmt: skip
    return metrics, report
