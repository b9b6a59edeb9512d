"""Helpers the command modules share: device parsing, scanning with a progress bar, dose
settings."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path

import typer

from manas_infer.console import progress, report_problem


class SimulationMode(StrEnum):
    insertion = "insertion"
    reconstruction = "reconstruction"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:40] or "series"


def series_folder_name(series) -> str:
    """A readable, unique folder name for one series among several."""
    number = series.first.get("SeriesNumber") or "x"
    return f"{number}-{_slug(series.description)}-{series.series_uid[-6:].replace('.', '')}"


def _device(name: str):
    from manas_infer.device import resolve_device

    try:
        return resolve_device(name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--device") from None


def _scan(paths: list[Path]):
    """Scan inputs with a progress bar; print every problem; return (series, problems)."""
    from manas_infer.data.series import count_files, scan

    found, problems = [], []
    with progress() as bar:
        for path in paths:
            task = bar.add_task(f"Reading {path.name or path}", total=count_files(path) or None)
            report = scan(path, on_file=lambda t=task: bar.advance(t))
            found += report.series
            problems += report.problems
    for problem in problems:
        report_problem(problem)
    return found, problems


def _dose_settings(dose: float, views: int, mode: str):
    from manas_infer.simulate.dose import DoseSettings

    try:
        return DoseSettings(dose_percent=dose, n_views=views, mode=mode)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
