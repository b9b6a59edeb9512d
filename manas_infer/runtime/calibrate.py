"""Regenerate ``models/noise-levels.json``: the noise each model was trained on, measured
with the runtime's own estimator, for the automatic choice (``choice.py``). One command::

    .venv/bin/python -m manas_infer.runtime.calibrate

Why a file beside the models rather than a table in code: the numbers belong to the models
(their dose and the noise-gain range of their training, both read from their cards) and the
models are replaced by retraining; rerunning this command after a retrain keeps the choice
in step, and the file says which command, data and estimator made it.

How: for every float32 model with a card (its ``dose_percent`` and
``training.augmentation.noise`` gain range, [1, 1] when absent), the dose is simulated
(the project's simulator, seed 0) on a few slices spread through each training-style
series (the iterative-reconstruction pancreas abdomen and the neck-to-thigh PET/CT), and
the estimator is applied to ``normal + gain x (low - normal)`` at the low, centre
(geometric mean) and high gain: the noise the network saw. Per series the median over
slices; across series the geometric mean (each series counts once however many slices
it has). ``normal_dose_hu`` is the same estimate on the normal-dose slices: the noise the
networks were taught to leave in.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
from pathlib import Path

import numpy as np

from manas_infer.config import cache_root, shared_ct_root
from manas_infer.data.series import scan
from manas_infer.hashing import text_sha256
from manas_infer.runtime.choice import LEVELS_FORMAT, levels_path
from manas_infer.runtime.models import list_models, models_dir, taught_grain
from manas_infer.runtime.noise import volume_noise

TRAINING_STYLE = ("pancreas-ct-cb-001", "tcga-thca-de-a4ma-wholebody")
SLICES = 6
SEED = 1
COMMAND = ".venv/bin/python -m manas_infer.runtime.calibrate"


def simulated_slices(
    series_dir: Path, doses: list[float], count: int = SLICES, seed: int = SEED
) -> tuple[list[int], np.ndarray, dict[float, np.ndarray]]:
    """(slice indices, normal-dose HU [S, H, W], {dose: simulated HU}) for ``count`` slices
    spread over the middle 70 % of the series; cached, since the projector takes seconds a
    slice."""
    report = scan(series_dir)
    if len(report.series) != 1:
        raise SystemExit(f"{series_dir}: expected one CT series, found {len(report.series)}")
    series = report.series[0]
    at = np.linspace(0.15 * (series.n_slices - 1), 0.85 * (series.n_slices - 1), count)
    indices = sorted({round(float(i)) for i in at})
    normal = np.stack([series.read_slice_hu(i) for i in indices])
    key = text_sha256(f"{series.series_uid}|{indices}|{seed}", 16)
    folder = cache_root() / "noise-calibration"
    folder.mkdir(parents=True, exist_ok=True)
    low: dict[float, np.ndarray] = {}
    for dose in doses:
        path = folder / f"{series_dir.name}-{key}-{dose:g}pct.npy"
        if not path.is_file():
            from manas_infer.simulate.dose import DoseSettings, LowDoseSimulator

            sim = LowDoseSimulator(DoseSettings(dose_percent=dose))
            spacing = series.pixel_spacing[0]
            np.save(path, sim.simulate_numpy(normal, spacing, seed=seed))
        low[dose] = np.load(path)
    return indices, normal, low


def geometric_mean(values: list[float]) -> float:
    return float(math.exp(np.mean(np.log(values))))


def model_doses(folder: Path) -> dict[str, tuple[float, tuple[float, float]]]:
    """{model name: (dose percent, (low gain, high gain))} for the float32 models."""
    found = {}
    for info in list_models(folder):
        card = info.card
        if info.name.endswith(".fp16") or card.get("precision") == "float16":
            continue
        dose = card.get("dose_percent")
        if not isinstance(dose, int | float):
            print(f"skipped {info.path}: its card has no dose_percent", file=sys.stderr)
            continue
        gains = (card.get("training") or {}).get("augmentation", {}).get("noise") or [1.0, 1.0]
        found[info.name] = (float(dose), (float(gains[0]), float(gains[1])))
    return found


def calibrate(data: Path, folder: Path, count: int = SLICES) -> dict:
    """The calibration as a dict (what the JSON file holds)."""
    models = model_doses(folder)
    if not models:
        raise SystemExit(f"{folder}: no float32 model with a dose in its card")
    doses = sorted({dose for dose, _ in models.values()})
    per_series: dict[str, dict] = {}
    for name in TRAINING_STYLE:
        indices, normal, low = simulated_slices(data / name, doses, count)
        noise = {dose: low[dose] - normal for dose in doses}
        own = volume_noise(normal).sd_hu
        per_series[name] = {"slices": indices, "normal_hu": own, "models": {}}
        for model, (dose, (g0, g1)) in models.items():
            gc = math.sqrt(g0 * g1)
            at = {g: volume_noise(normal + g * noise[dose]).sd_hu for g in (g0, gc, g1)}
            per_series[name]["models"][model] = [round(at[g], 2) for g in (g0, gc, g1)]
    grains = {info.name: taught_grain(info.card) for info in list_models(folder)}
    result_models = {}
    for model, (dose, gains) in models.items():
        by_gain = [
            geometric_mean([per_series[s]["models"][model][i] for s in TRAINING_STYLE])
            for i in range(3)
        ]
        result_models[model] = {
            "dose_percent": dose,
            "noise_gain": list(gains),
            "noise_hu": round(by_gain[1], 1),
            "noise_range_hu": [round(by_gain[0], 1), round(by_gain[2], 1)],
            "grain": grains[model],
        }
    normal = geometric_mean([per_series[s]["normal_hu"] for s in TRAINING_STYLE])
    return {
        "format": LEVELS_FORMAT,
        "version": 1,
        "what": "noise SD (HU) each model was trained on, as manas_infer.runtime.noise "
        "measures it (soft tissue, 7x7 mean residual, MAD); noise_hu at the centre of the "
        "training noise gain, noise_range_hu at its ends; grain: the noise grain it was "
        "taught (fine: the simulator's ramp; coarse: a soft-tissue kernel's too)",
        "command": COMMAND,
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "data": [str(Path("../shared/data/ct") / s) for s in TRAINING_STYLE],
        "slices_per_series": count,
        "seed": SEED,
        "normal_dose_hu": round(normal, 1),
        "models": result_models,
        "per_series": per_series,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=shared_ct_root(), help="folder of the CT series"
    )
    parser.add_argument("--models", type=Path, default=None, help="models folder")
    parser.add_argument("--slices", type=int, default=SLICES, help="slices per series")
    args = parser.parse_args(argv)
    folder = args.models or models_dir()
    for name in TRAINING_STYLE:
        if not (args.data / name).is_dir():
            raise SystemExit(f"{args.data / name}: training-style series not found (--data)")
    result = calibrate(args.data, folder, args.slices)
    out = levels_path(folder)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name, m in result["models"].items():
        low, high = m["noise_range_hu"]
        print(f"{name}: {m['noise_hu']} HU (trained on {low}-{high} HU)")
    print(f"normal dose: {result['normal_dose_hu']} HU; wrote {out}")


if __name__ == "__main__":
    main()
