"""Which model and strength a series gets: explicit settings win, otherwise its own noise.

A real scan's dose is not one of a simulator's 10 / 5 / 2.5 %, and a normal-dose series
must come out almost untouched. So when neither a model nor a dose is given, the series'
noise is measured (``noise.py``) and compared with the noise each shipped model was trained
on (``models/noise-levels.json``, written by ``python -m manas_infer.runtime.calibrate``):

- among the models taught the series' noise grain (``noise.py``: fine, as the simulator's
  ramp filter and sharp kernels make it, or the coarser mottle of soft-tissue kernels; all
  models when none was taught it or the grain cannot be measured), the one whose training
  noise (the centre of its range, in log scale) is nearest;
- the default strength for noise the models were trained on, and less below that, in
  proportion to the noise above what the models were taught to leave in (the noise of the
  normal-dose training series, ``normal_dose_hu``): strength = default x min(1, (measured -
  normal) / (the weakest model's centre - normal)). It rises continuously with the noise
  whichever model is picked (scaling by the picked model's own centre made the strength
  drop where the choice moves to a stronger model), and a series no noisier than the
  normal-dose training data gets 0 %: returned unchanged. The ramp is linear in the SD, as
  the estimator measures it, and not in the noise added in quadrature (sqrt(sd^2 -
  normal^2)), whose slope is infinite at the normal level: there an estimate 5 % high (the
  estimator's own spread, ``bench/results/noise-choice.md``) gave a normal-dose series 12 %
  strength, and the noisiest normal-dose series here (a PET/CT's 24.6 HU) 22 % and a
  3.7 HU RMS change; now 3 % and 9 %.

Every choice carries a sentence that says what was picked and why, for the console, the
--json summary, the node's log and the derived series' DerivationDescription.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from manas_infer.data.series import CTSeries
from manas_infer.runtime.models import (
    DEFAULT_MODEL,
    ModelChoice,
    ModelError,
    models_dir,
    resolve_model,
)
from manas_infer.runtime.noise import NoiseEstimate, series_noise
from manas_infer.runtime.strength import DEFAULT_STRENGTH, check_strength

LEVELS_FILE = "noise-levels.json"
LEVELS_FORMAT = "manas-noise-levels"


@dataclass(frozen=True)
class ModelLevel:
    """The noise one model was trained on, as the estimator measures it (HU)."""

    name: str
    centre_hu: float
    low_hu: float
    high_hu: float
    grain: str = "fine"  # the noise grain it was taught: fine, or coarse too (soft kernels)


@dataclass(frozen=True)
class NoiseLevels:
    """The calibration: each model's training noise and the normal-dose noise left in."""

    models: tuple[ModelLevel, ...]
    normal_dose_hu: float
    source: Path


def levels_path(folder: Path | None = None) -> Path:
    return (folder or models_dir()) / LEVELS_FILE


def load_levels(folder: Path | None = None) -> NoiseLevels | None:
    """The calibration beside the models; None when there is none (the choice says so).

    A file that exists but cannot be used raises ModelError naming it.
    """
    path = levels_path(folder)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("format") != LEVELS_FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, not {LEVELS_FORMAT!r}")
        models = tuple(
            ModelLevel(
                name,
                float(entry["noise_hu"]),
                *map(float, entry["noise_range_hu"]),
                str(entry.get("grain", "fine")),
            )
            for name, entry in sorted(data["models"].items())
        )
        normal = float(data["normal_dose_hu"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(
            f"{path}: not a usable noise calibration ({type(e).__name__}: {e})"
        ) from None
    bad = [level.name for level in models if not 0 < normal < level.centre_hu]
    if not models or bad:
        raise ModelError(
            f"{path}: every model's noise must exceed normal_dose_hu {normal:g} "
            f"({', '.join(bad) or 'no models'})"
        )
    return NoiseLevels(models, normal, path)


@dataclass(frozen=True)
class Choice:
    """The model and strength for one series, and the sentence that says why."""

    model: ModelChoice
    strength: float  # percent of the estimated noise removed
    why: str
    noise: NoiseEstimate | None = None
    automatic: bool = False

    def summary(self) -> dict:
        """What --json and the node's record carry."""
        return {
            "model": self.model.name,
            "strength_percent": self.strength,
            "automatic": self.automatic,
            "measured_noise_hu": None
            if self.noise is None or self.noise.sd_hu is None
            else round(self.noise.sd_hu, 1),
            "why": self.why,
        }


def excess(sd: float, normal: float) -> float:
    """How far the noise SD sits above the normal-dose level (0 at or below it)."""
    return max(sd - normal, 0.0)


def fit(
    sd: float,
    levels: NoiseLevels,
    default_strength: float = DEFAULT_STRENGTH,
    grain: str | None = None,
) -> tuple[ModelLevel, float]:
    """The nearest model (log noise) among those taught ``grain`` (all when None or none
    was), and the strength for the noise above normal dose."""
    family = [level for level in levels.models if level.grain == grain] or levels.models
    model = min(family, key=lambda level: abs(math.log(sd / level.centre_hu)))
    weakest = min(level.centre_hu for level in levels.models)
    ratio = excess(sd, levels.normal_dose_hu) / excess(weakest, levels.normal_dose_hu)
    return model, float(round(default_strength * min(ratio, 1.0)))


def choose(
    series: CTSeries | None,
    model: str | None = None,
    dose: float | None = None,
    strength: float | None = None,
    folder: Path | None = None,
) -> Choice:
    """The model and strength for ``series``: --model, else --dose, else measured noise.

    An explicit ``strength`` always wins; otherwise explicit models get the default strength
    and the automatic choice its fitted one. Raises ModelError for a model that is not there.
    """
    if strength is not None:
        strength = check_strength(strength)
    if model or dose is not None:
        picked = resolve_model(model, dose, folder)
        applied = DEFAULT_STRENGTH if strength is None else strength
        source = "--strength" if strength is not None else "default strength"
        return Choice(picked, applied, f"{picked.why} -> {picked.name}, {source} {applied:g} %")
    levels = load_levels(folder)
    if levels is None or series is None:
        picked = resolve_model(None, None, folder)
        applied = DEFAULT_STRENGTH if strength is None else strength
        reason = (
            f"no noise calibration ({levels_path(folder)} is missing)"
            if levels is None
            else "no series to measure"
        )
        return Choice(
            picked, applied, f"{reason}: default model {DEFAULT_MODEL}, strength {applied:g} %"
        )
    noise = series_noise(series)
    if noise.sd_hu is None:
        picked = resolve_model(None, None, folder)
        applied = DEFAULT_STRENGTH if strength is None else strength
        return Choice(
            picked,
            applied,
            f"{noise.describe()}: default model {picked.name}, strength {applied:g} %",
            noise,
        )
    level, fitted = fit(noise.sd_hu, levels, grain=noise.grain_name)
    picked = ModelChoice(
        resolve_model(level.name, None, folder).path, level.name, "noise-based choice"
    )
    applied = fitted if strength is None else strength
    why = (
        f"{noise.describe()} -> {level.name} (trained on {level.low_hu:.0f}-"
        f"{level.high_hu:.0f} HU, centre {level.centre_hu:.0f}, {level.grain} grain), "
        f"strength {applied:g} %"
    )
    normal = f"the {levels.normal_dose_hu:.0f} HU of the normal-dose training data"
    if strength is not None:
        why += " (--strength)"
    elif fitted == 0:
        why += f" (no noisier than {normal}: left unchanged)"
    elif fitted < DEFAULT_STRENGTH:
        why += f" (less than the default {DEFAULT_STRENGTH:g} %: the noise is close to {normal})"
    else:
        why += " (the default: noise the models were trained for)"
    return Choice(picked, applied, why, noise, automatic=True)
