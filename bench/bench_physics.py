"""The CT physicist's battery on the shipped models: LCD phantom and a held-out chest.

Not a test: run it by hand, ``nice -n 10 .venv/bin/python bench/bench_physics.py``. It
takes every float32 model in models/ (whatever is shipped when it runs), BM3D and the
unprocessed input, and
- on the FDA LCD-CT phantom (../shared/data/phantom/lcd-ct; 10, 55 and 100 % of its own
  protocol, ten realisations each): noise SD and NPS, TTF of the phantom's outline and rods,
  CHO AUC per rod with 95 % intervals; every model on every dose, since the phantom's doses
  are not the models' (the noise the models were trained on is noted beside them);
- on one chest series not used in training (Lung-PET-CT-Dx A0002, simulated at 5 % dose by
  the project's simulator exactly as ``manas-infer evaluate --data`` does): the same NPS and
  body-outline TTF, beside evaluate's PSNR / SSIM table.
Writes bench/results/physics-lcd.md, .json and physics-lcd-*.png, and
bench/results/physics-patient.md with its full evaluate report in physics-patient/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from manas_infer.evaluate import bm3d_method, evaluate, model_method, simulated_pairs
from manas_infer.evaluate.lcd import load_lcd_phantom, run_lcd_battery
from manas_infer.evaluate.methods import Method, automatic_method
from manas_infer.evaluate.physics_report import lcd_section, patient_section, strict_json
from manas_infer.runtime import list_models

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MANAS_SHARED_DATA", REPO.parent / "shared" / "data"))
PHANTOM = SHARED / "phantom" / "lcd-ct"
CHEST = SHARED / "ct" / "lung-pet-ct-dx-a0002"
COMMAND = "nice -n 10 .venv/bin/python bench/bench_physics.py"


def shipped_methods(device: str) -> list[Method]:
    """Every float32 model in models/ through the one runtime (the fp16 twins are the same
    model for GPUs), the automatic choice as ``denoise`` makes it without ``--model``
    (model and strength from each image's noise, guard on), then BM3D with its noise level
    estimated on each image."""
    names = [m.name for m in list_models() if m.card.get("precision", "float32") == "float32"]
    automatic = automatic_method(device)
    return [model_method(name, device) for name in names] + [automatic, bm3d_method()]


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def run_phantom(methods: list[Method], out: Path) -> float:
    start = time.perf_counter()
    phantom = load_lcd_phantom(PHANTOM)
    unprocessed = Method(
        "input (FBP)", "input", lambda hu: hu, 0, 0.0, "the phantom's own FBP images, unprocessed"
    )
    lcd = run_lcd_battery(
        phantom, [unprocessed, *methods], on_step=lambda name: print(f"  phantom: {name} done")
    )
    seconds = time.perf_counter() - start
    result = {"command": COMMAND, "seconds": round(seconds, 1), "machine": machine()}
    write_phantom(out, result | lcd)
    return seconds


def write_phantom(out: Path, lcd: dict) -> None:
    """physics-lcd.md, .json and the figures from the battery's result (``--render`` redraws
    them from physics-lcd.json without running anything again)."""
    seconds = lcd["seconds"]
    lines, figures = lcd_section(out, lcd)
    header = [
        "# The physicist's battery on the LCD phantom: shipped models, BM3D, input",
        "",
        f"Command: `{lcd['command']}` ({seconds / 60:.1f} min on {lcd['machine']}, shared "
        "with other work). Every model is applied to every dose: the phantom's 10 / 55 / 100 % are "
        "fractions of its own protocol (noise about 70 / 30 / 22 HU in the rings measured "
        "below), not the models' training doses (simulated 10 / 5 / 2.5 % of the paper's "
        "protocol: about 38 / 54 / 76 HU in a chest, README). By noise level, manas-2.5pct "
        "matches the 10 % images and manas-10pct the 55 % ones; none was trained for noise "
        "as low as the 100 % images. The phantom's images are another scanner model and "
        "kernel than any training data (a 220 mm field of view, 0.86 mm pixels, sharp FBP).",
        "",
    ]
    text = header + lines + ["Methods:", ""]
    text += [f"- {m['name']}: {m['detail']}" for m in lcd["methods"]] + [""]
    (out / "physics-lcd.md").write_text("\n".join(text))
    result = {**lcd, "figures": figures}
    (out / "physics-lcd.json").write_text(json.dumps(strict_json(result), indent=1) + "\n")


def run_patient(methods: list[Method], out: Path, max_slices: int, seed: int) -> float:
    start = time.perf_counter()
    pairs = simulated_pairs(CHEST, dose=5.0, seed=seed, max_slices=max_slices)
    folder = out / "physics-patient"
    settings = {"dose_percent": 5.0, "seed": seed, "views": 720, "bm3d_sigma": None}
    metrics = evaluate(pairs, methods, folder, n_figures=1, settings=settings)
    seconds = time.perf_counter() - start
    physics = metrics["physics"]
    lines, _ = patient_section(folder, physics)  # the figures are already in the folder
    lines = [line.replace("](physics-", "](physics-patient/physics-") for line in lines]
    table = [
        "| method | PSNR (dB) | SSIM | PSNR window (dB) | SSIM window |",
        "|---|---|---|---|---|",
    ]
    for m in metrics["methods"]:
        ms = m["mean_sd"]
        table.append(
            f"| {m['name']} | {ms['psnr'][0]:.2f} | {ms['ssim'][0]:.4f} | "
            f"{ms['psnr_window'][0]:.2f} | {ms['ssim_window'][0]:.4f} |"
        )
    text = [
        "# The physicist's battery on a held-out chest: shipped models, BM3D, input",
        "",
        f"Command: `{COMMAND}` ({seconds / 60:.1f} min on {machine()}, shared with other "
        f"work). {pairs.source}; {len(pairs)} slices evenly spaced over the series (a chest no "
        "shipped model was trained on; its file 1-30.dcm is truncated and left out). Every "
        "model is applied at this one dose; manas-5pct is the one trained for it. The full "
        "evaluate report (slices side by side, per-slice numbers) is in "
        "[physics-patient/report.md](physics-patient/report.md).",
        "",
        "Mean over slices (the report has the SDs):",
        "",
        *table,
        "",
        *lines,
        "Methods: " + "; ".join(f"{m['name']}: {m['detail']}" for m in metrics["methods"]),
        "",
    ]
    (out / "physics-patient.md").write_text("\n".join(text))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--slices", type=int, default=8, help="chest slices, evenly spaced")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-phantom", action="store_true")
    parser.add_argument("--skip-patient", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--render", action="store_true", help="only redraw physics-lcd.md and its figures"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.render:
        write_phantom(args.out, json.loads((args.out / "physics-lcd.json").read_text()))
        return
    methods = shipped_methods(args.device)
    print("methods:", ", ".join(m.name for m in methods), flush=True)
    if not args.skip_phantom:
        seconds = run_phantom(methods, args.out)
        print(f"wrote {args.out / 'physics-lcd.md'} ({seconds:.0f} s)", flush=True)
    if not args.skip_patient:
        seconds = run_patient(methods, args.out, args.slices, args.seed)
        print(f"wrote {args.out / 'physics-patient.md'} ({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
