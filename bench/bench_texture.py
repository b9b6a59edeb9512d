"""Noise grain: how coarse real scans' noise is, and what the denoisers do with coarse noise.

Not a test: run it by hand, ``nice -n 10 .venv/bin/python bench/bench_texture.py``.

The simulator brings its projection noise back through a plain ramp filter: the finest grain
FBP can give, as fine as a lung kernel's. Most low-dose series are read in a soft-tissue
kernel, whose noise is a coarser mottle at the same dose (``simulate/texture.py``). This
measures
- the grain of real scans: the TG-233 NPS centroid in uniform soft tissue of each full-dose
  series in ../shared/data/ct (with its ConvolutionKernel) and of the LCD phantom's real
  FBP noise (realisations less their mean: pure noise);
- on the untouched test patients (lung-pet-ct-dx-a0002, ge-head-std) at 5 %, seed 0, the
  slices of ``compare-v3``: the simulator's ramp grain (sigma 0) and the grain of a Gaussian-
  apodized ramp (sigma 0.8 and 1.2 pixels, the soft kernels' range), at the same noise SD.
  For each: the runtime's noise estimate against the truth, and for the input, the shipped
  default (automatic choice), the raw manas-5pct, BM3D and any --method given (a model or a
  run directory): RMSE in the body, PSNR, window SSIM and the noise left in uniform soft
  tissue, with one picture per grain.

Writes bench/results/noise-texture.md, .json and noise-texture-*.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from manas_infer.data.series import scan
from manas_infer.dicom_node.routing import series_kernel
from manas_infer.evaluate import bm3d_method, low_dose_input, method_for, simulated_pairs
from manas_infer.evaluate.lcd import load_lcd_phantom
from manas_infer.evaluate.methods import Method, automatic_method
from manas_infer.evaluate.nps import crop, noise_power_spectrum, uniform_rois
from manas_infer.evaluate.pairs import Pairs
from manas_infer.evaluate.physics import PatientPhysics
from manas_infer.evaluate.report import Scored, score, slice_figure
from manas_infer.metrics import mean_sd
from manas_infer.runtime.noise import sample_indices, slice_noise, soft_tissue_mask

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MANAS_SHARED_DATA", REPO.parent / "shared" / "data"))
TEST_PATIENTS = ("lung-pet-ct-dx-a0002", "ge-head-std")
SIGMAS = (0.0, 0.8, 1.2)
ROI = 32
COMMAND = "nice -n 10 .venv/bin/python bench/bench_texture.py"


def _nps(images: list[np.ndarray], fulls: list[np.ndarray], spacing: float) -> dict | None:
    """TG-233 NPS of ``images`` in the uniform soft tissue of the matching full-dose slices:
    the real series' own grain, where no method runs (``PatientPhysics`` measures outputs)."""
    rois = []
    for image, full in zip(images, fulls, strict=True):
        corners = uniform_rois(full, ROI, max_rois=6)
        if corners:
            rois.append(crop(image, corners, ROI))
    if not rois:
        return None
    nps = noise_power_spectrum(np.concatenate(rois), spacing)
    return {
        "sd_hu": nps.sd,
        "centroid_per_mm": nps.mean_frequency,
        "centroid_per_pixel": nps.mean_frequency * spacing,
        "rois": nps.n_rois,
    }


def real_grain() -> list[dict]:
    """The full-dose grain of every series here, and of the LCD phantom's real noise."""
    rows = []
    for folder in sorted((SHARED / "ct").iterdir()):
        report = scan(folder)
        if not report.series:
            continue
        series = report.series[0]
        fulls = [series.read_slice_hu(i) for i in sample_indices(series.n_slices)]
        kernel = series_kernel(series) or "?"
        measured = _nps(fulls, fulls, series.pixel_spacing[0])
        estimate = [slice_noise(full) for full in fulls]
        rows.append({
            "series": folder.name,
            "kernel": kernel,
            "pixel_mm": series.pixel_spacing[0],
            "runtime_noise_hu": float(np.median([e for e in estimate if e is not None])),
            **(measured or {}),
        })  # fmt: skip
    phantom = load_lcd_phantom(SHARED / "phantom" / "lcd-ct")
    for dose in phantom.doses:
        images = phantom.images(dose, "absent")
        noise = (images - images.mean(axis=0)) * np.sqrt(len(images) / (len(images) - 1))
        centre = [int(c) for c in phantom.centre]
        box = noise[:, centre[0] - 48 : centre[0] + 48, centre[1] - 48 : centre[1] + 48]
        rois = box.reshape(len(box), 3, ROI, 3, ROI).transpose(0, 1, 3, 2, 4).reshape(-1, ROI, ROI)
        nps = noise_power_spectrum(rois, phantom.spacing)
        rows.append({
            "series": f"LCD phantom {dose} % (noise only)",
            "kernel": "sharp FBP",
            "pixel_mm": phantom.spacing,
            "sd_hu": nps.sd,
            "centroid_per_mm": nps.mean_frequency,
            "centroid_per_pixel": nps.mean_frequency * phantom.spacing,
            "rois": nps.n_rois,
        })  # fmt: skip
    return rows


def methods(extra: list[str], bm3d: bool) -> list[Method]:
    rows = [low_dose_input(), automatic_method("cpu"), method_for("manas-5pct", "cpu")]
    rows += [method_for(name, "cpu") for name in extra]
    if bm3d:
        rows.append(bm3d_method())
    return rows


def one_grain(pairs: Pairs, rows: list[Method], figure: Path) -> dict:
    """Every method on the pairs: quality, RMSE in the body, and the noise left in uniform
    soft tissue as ``evaluate`` measures it (``PatientPhysics``: the input's row is the
    inserted noise)."""
    rmse: dict[str, list[float]] = {}
    physics = PatientPhysics(pairs.full, pairs.spacing)

    def keep(method: Method, index: int, out: np.ndarray) -> None:
        full = pairs.full[index]
        body = full > -500
        rmse.setdefault(method.name, []).append(
            float(np.sqrt(np.mean((out - full)[body].astype(np.float64) ** 2)))
        )
        physics.add(method, index, out)

    scored: list[Scored] = score(pairs, rows, [0], on_output=keep)
    spacing = physics.pixel_spacing
    nps = {row["method"]: row.get("nps") for row in physics.result()["rows"]}
    truth = [
        float(np.std((low - full)[soft_tissue_mask(full)]))
        for low, full in zip(pairs.low, pairs.full, strict=True)
    ]
    estimate = [slice_noise(low) for low in pairs.low]
    inserted = nps[rows[0].name]
    result = {
        "slices": pairs.labels,
        "inserted_noise": {
            "sd_hu": inserted["sd_hu"],
            "centroid_per_pixel": inserted["mean_frequency"] * spacing,
            "rois": inserted["n_rois"],
        },
        "runtime_estimate_over_truth": mean_sd(
            [e / t for e, t in zip(estimate, truth, strict=True) if e is not None]
        ),
        "methods": {},
    }
    for item in scored:
        name = item.method.name
        left = nps.get(name)
        result["methods"][name] = {
            **{key: item.summary()[key] for key in ("psnr", "ssim_window")},
            "rmse_body_hu": mean_sd(rmse[name]),
            "noise_left_hu": left and left["sd_hu"],
            "noise_left_centroid_per_pixel": left and left["mean_frequency"] * spacing,
            "seconds_per_slice": float(np.mean(item.seconds)),
        }
    slice_figure(figure, pairs.labels[0], pairs.full[0], pairs.low[0], scored, 0)
    return result


def markdown(results: dict) -> str:
    lines = [
        "# Noise grain: real scans' noise, and the denoisers on coarse noise",
        "",
        f"Command: `{results['command']}` ({results['minutes']:.1f} min on {results['machine']}).",
        "",
        "## How coarse real noise is",
        "",
        "TG-233 NPS centroid (mean frequency of the radial NPS) in uniform soft tissue of each "
        "full-dose series (32-px ROIs, the most uniform ones of 5 slices; in a quiet image the "
        "anatomy's own texture counts too, so low SDs are an upper bound on coarseness), and of "
        "the LCD phantom's real scanner noise (ten realisations less their mean).",
        "",
        "| series | kernel | pixel mm | SD in ROIs HU | runtime estimate HU | centroid cycles/px "
        "| centroid mm⁻¹ |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["real"]:
        estimate = row.get("runtime_noise_hu")
        lines.append(
            f"| {row['series']} | {row['kernel']} | {row['pixel_mm']:.3f} | "
            f"{row.get('sd_hu', float('nan')):.1f} | "
            f"{'' if estimate is None else f'{estimate:.1f}'} | "
            f"{row.get('centroid_per_pixel', float('nan')):.3f} | "
            f"{row.get('centroid_per_mm', float('nan')):.3f} |"
        )
    lines += ["", "## The denoisers on noise of another grain (5 %, untouched test patients)", ""]
    for patient, grains in results["patients"].items():
        lines += [f"### {patient}", ""]
        names = list(next(iter(grains.values()))["methods"])
        header = "| grain (sigma px) | inserted noise centroid c/px | estimate / truth |"
        header += "".join(f" {name} RMSE HU / window SSIM |" for name in names)
        lines += [header, "|" + "---|" * (3 + len(names))]
        for sigma, grain in grains.items():
            inserted = grain["inserted_noise"]
            row = (
                f"| {sigma} | {inserted['centroid_per_pixel']:.3f} | "
                f"{grain['runtime_estimate_over_truth'][0]:.2f} |"
            )
            for name in names:
                m = grain["methods"][name]
                row += f" {m['rmse_body_hu'][0]:.1f} / {m['ssim_window'][0]:.3f} |"
            lines.append(row)
        lines += ["", "Noise left in uniform soft tissue (SD HU / NPS centroid c/px):", ""]
        lines += ["| grain (sigma px) |" + "".join(f" {n} |" for n in names),
                  "|" + "---|" * (1 + len(names))]  # fmt: skip
        for sigma, grain in grains.items():
            row = f"| {sigma} |"
            for name in names:
                m = grain["methods"][name]
                sd, centroid = m["noise_left_hu"], m["noise_left_centroid_per_pixel"]
                row += " - |" if sd is None else f" {sd:.1f} / {centroid:.3f} |"
            lines.append(row)
        lines += [""]
        lines += [
            f"![{patient}, grain {sigma}](noise-texture-{patient}-{sigma}.png)" for sigma in grains
        ]
        lines += [""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--method",
        action="append",
        default=[],
        help="another row: a model name or file, or a training run directory",
    )
    parser.add_argument("--slices", type=int, default=6, help="whole slices per patient")
    parser.add_argument("--no-bm3d", action="store_true", help="leave BM3D out (slow)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()  # fmt: skip
    started = time.perf_counter()
    os.environ.setdefault("MANAS_NO_PROGRESS", "1")
    rows = methods(args.method, not args.no_bm3d)
    results: dict = {"real": real_grain(), "patients": {}}
    for patient in TEST_PATIENTS:
        results["patients"][patient] = {}
        for sigma in SIGMAS:
            pairs = simulated_pairs(SHARED / "ct" / patient, 5.0, 0, args.slices,
                                    texture_sigma_px=sigma)  # fmt: skip
            figure = args.out / f"noise-texture-{patient}-{sigma:g}.png"
            results["patients"][patient][f"{sigma:g}"] = one_grain(pairs, rows, figure)
            print(f"{patient} grain {sigma:g}: done", flush=True)
    results.update(
        command=COMMAND + "".join(f" --method {m}" for m in args.method),
        minutes=(time.perf_counter() - started) / 60,
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs",
    )
    (args.out / "noise-texture.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "noise-texture.md").write_text(markdown(results))
    print(f"wrote {args.out / 'noise-texture.md'}")


if __name__ == "__main__":
    main()
