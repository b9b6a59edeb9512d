"""Does lesion insertion in training keep faint lesions? A shipped model against the same
model fine-tuned with ``--lesions`` (``train/augment.py``), each as ``denoise`` runs it
(strength, CT-number guard).

Not a test: run it by hand after such a fine-tune,

    nice -n 10 .venv/bin/python bench/bench_lesions.py RUN_OR_MODEL [RUN_OR_MODEL ...]

(a run directory is run through the export's HU graph in torch, a model name or .onnx
through the runtime). It measures what the lesions are for and what they may cost:
- the FDA LCD-CT phantom (its own scanner noise: nothing simulated, nothing trained on),
  CHO AUC of each rod at 10 and 55 % of its protocol, each method against the input (paired
  bootstrap, as bench_physics.py), at the default strength and at 100 %;
- whole slices of the untouched test patients at the model's dose, ramp grain, as the
  scorecard scores them (PSNR, window SSIM, RMSE), at the default strength.
Writes bench/results/lesions.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from manas_infer.config import shared_ct_root
from manas_infer.evaluate import is_run_dir
from manas_infer.evaluate.lcd import load_lcd_phantom, run_lcd_battery
from manas_infer.evaluate.methods import Method, low_dose_input, run_method
from manas_infer.evaluate.physics_report import strict_json
from manas_infer.evaluate.scorecard import scored_pairs, slice_scores
from manas_infer.runtime import Denoiser
from manas_infer.runtime.guard import BIAS_GUARD_SIGMA_PX
from manas_infer.runtime.strength import DEFAULT_STRENGTH, apply_strength
from manas_infer.train.run import load_run_config

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MANAS_SHARED_DATA", REPO.parent / "shared" / "data"))
PHANTOM = SHARED / "phantom" / "lcd-ct"
LCD_DOSES = (10, 55)
STRENGTHS = (DEFAULT_STRENGTH, 100.0)


def network(item: str) -> tuple[str, float, Callable[[np.ndarray], np.ndarray]]:
    """(label, dose, HU -> network output in HU) of a run directory or a model."""
    path = Path(item)
    if is_run_dir(path):
        config = load_run_config(path)
        lesions = (config.augment or {}).get("lesions", 0)
        return f"{path.name} (lesions {lesions:g})", float(config.dose), run_method(path).denoise
    denoiser = Denoiser(item, device="cpu", warm_up=None)
    return denoiser.card.get("name", path.stem), float(denoiser.card["dose_percent"]), denoiser.run


def at_strength(net: Callable, strength: float) -> Callable[[np.ndarray], np.ndarray]:
    """What ``denoise --strength`` gives: the runtime's strength and guard on ``net``."""

    def denoise(hu: np.ndarray) -> np.ndarray:
        hu = np.asarray(hu, dtype=np.float32)
        return apply_strength(hu, net(hu), strength, BIAS_GUARD_SIGMA_PX)

    return denoise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("items", nargs="+", help="run directories or model names / files")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    start = time.perf_counter()
    nets = [network(item) for item in args.items]

    phantom = load_lcd_phantom(PHANTOM)
    phantom.doses = [d for d in phantom.doses if d in LCD_DOSES]
    methods = [low_dose_input()]
    for label, _, net in nets:
        for strength in STRENGTHS:
            methods.append(
                Method(f"{label}, {strength:g} %", "model", at_strength(net, strength), 0, 0, "")
            )
    lcd = run_lcd_battery(phantom, methods, on_step=lambda name: print(f"  phantom: {name}"))

    ct_root = shared_ct_root()
    slices = {}
    for label, dose, net in nets:
        pairs = scored_pairs(ct_root, dose)
        denoise = at_strength(net, DEFAULT_STRENGTH)
        slices[label] = {
            name: {
                "input": slice_scores(p.low, p.full),
                "denoised": slice_scores([denoise(low) for low in p.low], p.full),
            }
            for name, p in pairs.items()
        }
        print(f"  slices: {label}")

    result = {
        "command": "nice -n 10 .venv/bin/python bench/bench_lesions.py " + " ".join(args.items),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "seconds": round(time.perf_counter() - start, 1),
        "lcd": lcd,
        "slices": slices,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lesions.json").write_text(json.dumps(strict_json(result), indent=1))
    (args.out / "lesions.md").write_text(report(result))
    print(f"wrote {args.out / 'lesions.md'} ({result['seconds']:.0f} s)")


def report(result: dict) -> str:
    lines = [
        "# Lesion insertion in training: faint lesions kept, at what cost",
        "",
        f"Command: `{result['command']}` ({result['seconds'] / 60:.1f} min, {result['machine']}).",
        "",
        "## LCD phantom (MITA CCT189, its own FBP noise): CHO AUC per rod",
        "",
        "Each method against the input at the same dose: paired bootstrap 95 % interval of "
        "the AUC change (as bench_physics.py); **lowers** / **raises** when it excludes 0.",
        "",
    ]
    rows = result["lcd"]["rows"]
    labels = list(rows[0]["cho"])
    lines += ["| dose | method | " + " | ".join(labels) + " |",
              "|---|---|" + "---|" * len(labels)]  # fmt: skip
    for row in rows:
        cells = []
        for label in labels:
            entry = row["cho"][label]
            change = entry.get("vs_input")
            if change is None:
                cells.append(f"{entry['auc']:.3f}")
            else:
                lo, hi = change["delta_ci95"]
                cells.append(
                    f"{entry['auc']:.3f} ({change['delta_auc']:+.3f} [{lo:+.3f}, {hi:+.3f}]) "
                    f"**{change['verdict']}**"
                )
        lines.append(f"| {row['dose_percent']} % | {row['method']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Whole slices of the untouched test patients (scorecard slices, default strength)",
        "",
        "| method | patient | PSNR dB: input -> out | window SSIM | RMSE HU |",
        "|---|---|---|---|---|",
    ]
    for label, by_series in result["slices"].items():
        for name, s in by_series.items():
            i, d = s["input"], s["denoised"]
            lines.append(
                f"| {label} | {name} | {i['psnr']:.2f} -> {d['psnr']:.2f} | "
                f"{i['ssim_window']:.3f} -> {d['ssim_window']:.3f} | "
                f"{i['rmse_hu']:.1f} -> {d['rmse_hu']:.1f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
