"""Helpers the command modules share: options turned into library values, a bad value
reported as the option's error (exit code 2)."""

from __future__ import annotations

from enum import StrEnum

import typer


class SimulationMode(StrEnum):
    insertion = "insertion"
    reconstruction = "reconstruction"


def _device(name: str):
    from manas_infer.device import resolve_device

    try:
        return resolve_device(name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--device") from None


def _dose_settings(dose: float, views: int, mode: str):
    from manas_infer.simulate.dose import DoseSettings

    try:
        return DoseSettings(dose_percent=dose, n_views=views, mode=mode)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _simulator(dose: float, views: int, mode: str, device: str):
    """The dose simulator the options describe; a bad dose, mode or device is an option
    error."""
    from manas_infer.simulate.dose import LowDoseSimulator

    settings = _dose_settings(dose, views, mode)
    return LowDoseSimulator(settings, device=_device(device))
