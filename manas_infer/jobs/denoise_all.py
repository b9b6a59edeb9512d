"""Denoise every CT series under some folders (the ``denoise`` command and the demo): each
series gets the model and strength its own measured noise calls for unless a model or dose
is given, one loaded runtime per model file serves every series that uses it, and a summary
says what was done for the table and ``--json``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from manas_infer.console import console
from manas_infer.data.series import CTSeries
from manas_infer.errors import InputProblem
from manas_infer.jobs.denoise import denoise_series
from manas_infer.jobs.each_series import (
    DerivedVolumes,
    Panel,
    for_each_series,
    scan_inputs,
    skip,
)
from manas_infer.runtime import Denoiser, ModelChoice, ModelError, resolve_model
from manas_infer.runtime.choice import Choice, choose
from manas_infer.runtime.strength import StrengthError, check_strength


class DenoiseSettingsError(Exception):
    """A model, dose, device or strength that cannot be used; raised before anything is
    written."""


class Denoisers:
    """One loaded runtime per model file, shared by every series that uses it."""

    def __init__(self, device: str, batch: int) -> None:
        self.device = device
        self.batch = batch
        self.loaded: dict[str, Denoiser] = {}

    def get(self, model: ModelChoice) -> Denoiser:
        key = str(model.path.resolve())
        if key not in self.loaded:
            try:
                self.loaded[key] = Denoiser(model, device=self.device, batch=self.batch)
            except (ModelError, ValueError, RuntimeError) as exc:
                raise DenoiseSettingsError(str(exc)) from exc
        return self.loaded[key]

    def first(self) -> Denoiser | None:
        """The runtime loaded first: its provider stands for the run in the summary."""
        return next(iter(self.loaded.values()), None)


@dataclass(frozen=True)
class DenoiseJob:
    """The denoise job for ``for_each_series``: one series with its model and strength."""

    denoiser: Denoiser
    choice: Choice
    overwrite: bool
    explain: bool  # say why this model and strength (they were chosen, not given)
    normal_dose: np.ndarray | None = None  # the demo's reference volume, shown in the preview

    def label(self, series: CTSeries) -> str:
        return f"Denoising {series.description[:30]}"

    def run(
        self, series: CTSeries, folder: Path, on_slice: Callable[[int], None]
    ) -> DerivedVolumes:
        if self.explain:
            console.print(f"{series.folder}: {self.choice.why}", soft_wrap=True)
        return denoise_series(
            series,
            self.denoiser,
            folder,
            self.overwrite,
            on_slice=on_slice,
            strength=self.choice.strength,
            why=self.choice.why,
        )

    def finish(self, series: CTSeries, done: DerivedVolumes, seconds: float) -> dict:
        return {"slices_per_s": round(done.written.n_slices / seconds, 2), **self.choice.summary()}

    def panels(self, done: DerivedVolumes, middle: int) -> tuple[list[Panel], Panel]:
        label = f"Denoised ({self.choice.model.name}, {self.choice.strength:g} %)"
        panels = [("Input", done.source[middle]), (label, done.output[middle])]
        if self.normal_dose is not None:
            panels.insert(0, ("Normal dose", self.normal_dose[middle]))
        return panels, ("Removed (input - denoised)", done.source[middle] - done.output[middle])


def default_denoise_out(series_dir: Path, model_name: str) -> Path:
    """A sibling of the input whose name says what it holds: CT -> CT-denoised-manas-5pct."""
    resolved = series_dir.resolve()
    return resolved.parent / f"{resolved.name}-denoised-{model_name}"


def denoise_all(
    inputs: Sequence[Path],
    out: Path | None = None,
    model: str | None = None,
    dose: float | None = None,
    device: str = "auto",
    batch: int = 4,
    preview: Path | None = None,
    overwrite: bool = False,
    reference: dict[str, np.ndarray] | None = None,
    strength: float | None = None,
) -> tuple[dict, list[InputProblem]]:
    """Denoise every CT series under ``inputs``; one line per series and per problem.

    ``model``/``dose`` pick one model for every series; without them each series gets the
    model and strength its own measured noise calls for (``runtime/choice.py``). An explicit
    ``strength`` wins either way. ``reference`` maps a source folder to normal-dose HU (the
    demo), shown in the preview. Raises DenoiseSettingsError for settings that cannot work.
    """
    denoisers = Denoisers(device, batch)
    explicit = model is not None or dose is not None
    try:
        if strength is not None:
            check_strength(strength)
        if explicit:  # a wrong name, dose or device stops before anything is read
            denoisers.get(resolve_model(model, dose))
    except (ModelError, StrengthError) as exc:
        raise DenoiseSettingsError(str(exc)) from exc
    found, problems = scan_inputs(inputs)
    if not found and not problems:
        skip(InputProblem(inputs[0], "no DICOM CT series found"), problems)
    chosen = _choose_each(found, model, dose, strength, problems)
    if out is None:
        named = resolve_model(model, dose).name if explicit else _one_name(chosen)
        out = default_denoise_out(inputs[0], named)
    reference = reference or {}
    work = []
    for series, choice in chosen:
        normal_dose = reference.get(str(Path(series.folder).resolve()))
        job = DenoiseJob(denoisers.get(choice.model), choice, overwrite, not explicit, normal_dose)
        work.append((series, job))
    results = for_each_series(work, out, preview, len(found) > 1, problems)
    return denoise_summary([choice for _, choice in chosen], denoisers, results, problems), problems


def _choose_each(
    found: list[CTSeries],
    model: str | None,
    dose: float | None,
    strength: float | None,
    problems: list[InputProblem],
) -> list[tuple[CTSeries, Choice]]:
    """Each series with its model and strength; a series whose noise cannot be measured (a
    slice read for the estimate is unreadable) is reported and left out."""
    chosen = []
    for series in found:
        try:
            chosen.append((series, choose(series, model, dose, strength)))
        except InputProblem as problem:
            skip(problem, problems)
        except ModelError as exc:
            raise DenoiseSettingsError(str(exc)) from exc
    return chosen


def _one_name(chosen: list[tuple[CTSeries, Choice]]) -> str:
    """The model's name when every series got the same one, else "auto"."""
    names = {choice.model.name for _, choice in chosen}
    return names.pop() if len(names) == 1 else "auto"


def denoise_summary(
    chosen: list[Choice], denoisers: Denoisers, results: list[dict], problems: list[InputProblem]
) -> dict:
    """What the run did, as ``--json`` prints it: the model(s), strength and provider, one
    result a written series, the problems, and the totals."""
    first = denoisers.first()
    one_model = len({choice.model.name for choice in chosen}) == 1
    one_strength = len({choice.strength for choice in chosen}) == 1
    return {
        "model": chosen[0].model.name if one_model else ("mixed" if chosen else None),
        "model_path": str(chosen[0].model.path) if one_model else None,
        "model_choice": chosen[0].model.why if one_model else "noise-based choice per series",
        "strength_percent": chosen[0].strength if one_strength else None,
        "provider": first.provider if first else None,
        "provider_reason": first.why if first else None,
        "series": results,
        "problems": [str(problem) for problem in problems],
        "slices": sum(result["slices"] for result in results),
        "seconds": round(sum(result["seconds"] for result in results), 2),
    }
