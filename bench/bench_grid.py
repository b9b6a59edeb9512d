"""Where in frequency the shipped networks leave noise: the fine grid seen in their zooms.

Not a test: run it by hand,

    nice -n 10 .venv/bin/python bench/bench_grid.py [MODEL ...]

In a narrow window the networks' outputs show a faint regular pattern of alternating rows
and columns. This measures it as a physicist would: the 2-D noise power spectrum (TG-233,
``evaluate/nps.py``) of the error (output - full dose) in the most uniform soft-tissue ROIs
(64 px) of the slices of ``bench_ensemble`` (5 % simulated on whole slices of two series
that are neither trained on nor test patients), beside the NPS of the simulated noise
itself (input - full dose). Per model (ONNX file in models/, run at 100 % without the
guard, as ``evaluate`` runs it): the fraction of the input's noise power left at mid
frequency (the ring 0.2-0.3 cycles/px) and on the Nyquist row and column (0.5 cycles/px,
alternating rows / columns, within 0.1 cycles/px of the axis); and the Nyquist excess, the
NPS on that line over the NPS 2-4 bins inside it (1: no line in the spectrum). Writes
bench/results/grid.md, .json and grid.png (the 2-D NPS, log scale).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import matplotlib
import numpy as np
import onnxruntime as ort

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from bench_ensemble import SERIES, out_of_sample_slices

from manas_infer.evaluate.nps import crop, nps_2d, uniform_rois
from manas_infer.evaluate.physics_report import strict_json

REPO = Path(__file__).resolve().parents[1]
ROI = 64
AXIS_BAND = 0.1  # cycles/px: the Nyquist line is taken within this of the other axis
MID = (0.2, 0.3)  # cycles/px: the ring the mid-frequency fraction is taken over
SD_FACTOR = 3.0  # ROIs up to 3x the flattest one's SD: thin patients have few flat 64 px


def line_power(nps: np.ndarray, axis: int) -> tuple[float, float]:
    """(NPS on the Nyquist line of ``axis`` (0: rows alternate, fy = 0.5; 1: columns), mean
    NPS 2-4 bins inside it), both within AXIS_BAND of the other axis. fftshift puts the
    Nyquist frequency at index 0."""
    spectrum = nps if axis == 0 else nps.T
    n = spectrum.shape[1]
    band = np.abs(np.fft.fftshift(np.fft.fftfreq(n))) <= AXIS_BAND
    on = spectrum[0, band].mean()
    inside = np.concatenate([spectrum[2:5, band], spectrum[-4:-1, band]]).mean()
    return float(on), float(inside)


def ring_power(nps: np.ndarray) -> float:
    fy = np.fft.fftshift(np.fft.fftfreq(nps.shape[0]))
    fx = np.fft.fftshift(np.fft.fftfreq(nps.shape[1]))
    radius = np.hypot(*np.meshgrid(fy, fx, indexing="ij"))
    return float(nps[(radius >= MID[0]) & (radius < MID[1])].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "models", nargs="*", default=["manas-5pct", "manas-5pct-soft"],
        help="shipped model names, or paths of .onnx files",
    )  # fmt: skip
    parser.add_argument("--slices", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    started = time.time()
    sessions = {
        name: ort.InferenceSession(
            name if name.endswith(".onnx") else str(REPO / "models" / f"{name}.onnx"),
            providers=["CPUExecutionProvider"],
        )
        for name in args.models
    }
    errors: dict[str, list[np.ndarray]] = {"input": [], **{name: [] for name in sessions}}
    for _, full, low in out_of_sample_slices(args.slices):
        corners = uniform_rois(full, ROI, max_rois=6, sd_factor=SD_FACTOR)
        if not corners:
            continue
        errors["input"].append(crop(low - full, corners, ROI))
        for name, session in sessions.items():
            feed = {session.get_inputs()[0].name: low[None, None]}
            out = session.run(None, feed)[0][0, 0]
            errors[name].append(crop(out - full, corners, ROI))
    spectra = {name: nps_2d(np.concatenate(rois))[2] for name, rois in errors.items()}
    n_rois = len(np.concatenate(errors["input"]))
    base = spectra["input"]
    rows = {}
    for name, nps in spectra.items():
        (row_on, row_in), (col_on, col_in) = line_power(nps, 0), line_power(nps, 1)
        rows[name] = {
            "noise_sd_hu": float(np.sqrt(nps.mean())),
            "left_mid": ring_power(nps) / ring_power(base),
            "left_nyquist_rows": row_on / line_power(base, 0)[0],
            "left_nyquist_columns": col_on / line_power(base, 1)[0],
            "excess_rows": row_on / row_in,
            "excess_columns": col_on / col_in,
        }
    result = {"series": list(SERIES), "rois": n_rois, "roi_px": ROI, "models": rows,
              "seconds": round(time.time() - started, 1),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "grid.json").write_text(json.dumps(strict_json(result), indent=2) + "\n")

    fig, axes = plt.subplots(1, len(spectra), figsize=(3.4 * len(spectra), 3.6))
    top = np.log10(base.max())
    for ax, (name, nps) in zip(np.atleast_1d(axes), spectra.items(), strict=True):
        ax.imshow(np.log10(nps + 1e-9), cmap="magma", vmin=top - 3, vmax=top,
                  extent=(-0.5, 0.5, 0.5, -0.5))  # fmt: skip
        ax.set_title(f"{name}: error NPS" if name != "input" else "5 % noise (input)", fontsize=9)
        ax.set_xlabel("fx (cycles/px)", fontsize=8)
    np.atleast_1d(axes)[0].set_ylabel("fy (cycles/px)", fontsize=8)
    fig.suptitle(
        f"2-D NPS, log scale, 3 decades; {n_rois} soft-tissue ROIs of {ROI} px", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(args.out / "grid.png", dpi=100)

    lines = [
        "# Where the networks leave noise: the fine grid of alternating rows and columns",
        "",
        f"Command: `nice -n 10 .venv/bin/python bench/bench_grid.py {' '.join(args.models)}` "
        f"({result['seconds'] / 60:.1f} min, {result['machine']}). 5 % dose simulated on "
        f"whole slices of {', '.join(SERIES)} (neither trained on nor test patients); "
        f"{n_rois} of the most uniform soft-tissue ROIs of {ROI} px; the models as `evaluate` "
        "runs them (100 %, no guard). Left: the error's NPS over the input noise's, on the "
        f"ring {MID[0]}-{MID[1]} cycles/px and on the Nyquist line (0.5 cycles/px: rows or "
        "columns alternating). Excess: the NPS on the Nyquist line over the NPS 2-4 bins "
        "inside it (1: no line). Picture: `grid.png`.",
        "",
        "| | noise SD HU | left, mid ring | left, Nyquist rows | left, Nyquist columns "
        "| excess, rows | excess, columns |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['noise_sd_hu']:.1f} | {row['left_mid']:.0%} "
            f"| {row['left_nyquist_rows']:.0%} | {row['left_nyquist_columns']:.0%} "
            f"| {row['excess_rows']:.2f} | {row['excess_columns']:.2f} |"
        )
    lines.append("")
    (args.out / "grid.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
