"""Score every method on the same pairs and write the report folder:

REPORT/report.md      the table (mean +- SD per method, as the paper's Tables 2 and 3)
                      with the figures inline and what the numbers mean
REPORT/metrics.json   every number: per slice, mean and SD, sizes, times, the settings
REPORT/slice-K.png    for chosen slices: full dose, low dose and each method side by
                      side in the soft-tissue window, a zoomed region, and the
                      difference from full dose, as radiologists compare them
REPORT/psnr.png       the per-slice PSNR of every method, to see spread, not only means
REPORT/physics-*.png  noise power spectra and edge TTFs (``physics``), when measured
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle

from manas_infer.evaluate.methods import Method
from manas_infer.evaluate.pairs import Pairs
from manas_infer.evaluate.physics_plots import save_figure
from manas_infer.evaluate.physics_report import patient_section
from manas_infer.hu import SOFT_TISSUE_WINDOW, normalize, window_bounds
from manas_infer.metrics import mean_sd, quality

RANGES = {
    "psnr, ssim": "full range [-1024, 3072] HU (data range 4096 HU)",
    "psnr_window, ssim_window": "soft-tissue window [-160, 240] HU (level 40, width 400)",
    "perceptual": "VGG-16 relu5_3 feature MSE of the [0, 1]-normalised images (lower is better)",
}


@dataclass
class Scored:
    method: Method
    per_slice: dict[str, list[float]] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    shown: dict[int, np.ndarray] = field(default_factory=dict)  # figure slices' outputs

    def summary(self) -> dict[str, tuple[float, float]]:
        return {name: mean_sd(values) for name, values in self.per_slice.items()}


def _to_unit(hu: np.ndarray) -> torch.Tensor:
    return normalize(torch.from_numpy(np.asarray(hu, dtype=np.float32)))[None, None].clamp(0, 1)


def score(
    pairs: Pairs,
    methods: list[Method],
    figure_slices: list[int],
    perceptual: torch.nn.Module | None = None,
    on_step: Callable[[str], None] | None = None,
    on_output: Callable[[Method, int, np.ndarray], None] | None = None,
) -> list[Scored]:
    """Run every method on every pair; keep the outputs of ``figure_slices`` for pictures
    and hand every output to ``on_output`` (the physics battery) as it is made."""
    results = []
    for method in methods:
        scored = Scored(method)
        for i, (low, full) in enumerate(zip(pairs.low, pairs.full, strict=True)):
            start = time.perf_counter()
            out = method.denoise(low)
            scored.seconds.append(time.perf_counter() - start)
            pred, target = _to_unit(out), _to_unit(full)
            for name, value in quality(pred, target).items():
                scored.per_slice.setdefault(name, []).append(float(value[0]))
            if perceptual is not None:
                with torch.no_grad():
                    perceptual_loss = float(perceptual(pred, target))
                scored.per_slice.setdefault("perceptual", []).append(perceptual_loss)
            if i in figure_slices:
                scored.shown[i] = out
            if on_output is not None:
                on_output(method, i, out)
            if on_step is not None:
                on_step(method.name)
        results.append(scored)
    return results


def zoom_box(full: np.ndarray, side: int) -> tuple[int, int]:
    """(row, col) of the ``side`` x ``side`` square holding the most soft tissue: where
    noise and lost detail show (an integral image finds it in one pass)."""
    low, high = window_bounds(SOFT_TISSUE_WINDOW)
    tissue = ((full > low) & (full < high)).astype(np.float64)
    side = min(side, *full.shape)
    summed = np.pad(tissue.cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # summed-area table
    counts = summed[side:, side:] - summed[:-side, side:] - summed[side:, :-side]
    counts += summed[:-side, :-side]
    row, col = np.unravel_index(int(np.argmax(counts)), counts.shape)
    return int(row), int(col)


def slice_figure(
    path: Path, label: str, full: np.ndarray, low: np.ndarray, rows: list[Scored], index: int
) -> Path:
    """Full dose, low dose and each method: the slice, a zoom, and the difference."""
    panels = [("full dose", full), ("low dose", low)] + [
        (scored.method.name, scored.shown[index])
        for scored in rows
        if scored.method.kind != "input"
    ]
    side = max(32, min(full.shape) // 4)
    top, left = zoom_box(full, side)
    lo, hi = window_bounds(SOFT_TISSUE_WINDOW)
    diffs = [image - full for _, image in panels[1:]]
    scale = 3 * float(np.std(diffs[0])) or 1.0  # the low-dose noise sets one common scale
    n_panels = len(panels)
    fig, axes = plt.subplots(3, n_panels, figsize=(3.3 * n_panels, 10.2), squeeze=False)
    for k, (name, image) in enumerate(panels):
        axes[0][k].imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        axes[0][k].add_patch(Rectangle((left, top), side, side, fill=False, color="yellow", lw=1))
        axes[0][k].set_title(name, fontsize=9)
        zoomed = image[top : top + side, left : left + side]
        axes[1][k].imshow(zoomed, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        if k == 0:
            axes[2][k].axis("off")
            axes[2][k].text(0.5, 0.5, f"difference from\nfull dose\n(+-{scale:.0f} HU)",
                            ha="center", va="center", fontsize=10)  # fmt: skip
        else:
            diff = diffs[k - 1]
            axes[2][k].imshow(diff, cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
            axes[2][k].set_title(f"RMSE {math.sqrt(float(np.mean(diff**2))):.1f} HU", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"{label}: soft-tissue window (level {SOFT_TISSUE_WINDOW[0]:g}, width "
        f"{SOFT_TISSUE_WINDOW[1]:g} HU); middle row: the yellow square enlarged",
        fontsize=10,
    )
    return save_figure(fig, path)


def psnr_figure(path: Path, rows: list[Scored]) -> Path:
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4))
    finite = [[v for v in scored.per_slice["psnr"] if math.isfinite(v)] for scored in rows]
    ax.boxplot(finite, showmeans=True)
    names = [scored.method.name for scored in rows]
    ax.set_xticks(range(1, len(rows) + 1), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("PSNR, full range (dB)")
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def _cell(value: tuple[float, float], digits: int) -> str:
    mean, sd = value
    if math.isinf(mean):
        return "inf"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def write_report(
    out: Path,
    pairs: Pairs,
    rows: list[Scored],
    figure_slices: list[int],
    perceptual_note: str,
    settings: dict,
    physics: dict | None = None,
) -> dict:
    """report.md, metrics.json and the figures; returns the metrics dictionary. ``physics``
    (``PatientPhysics.result()``) adds the noise-texture and edge-sharpness section."""
    out.mkdir(parents=True, exist_ok=True)
    physics_lines, physics_figures = patient_section(out, physics) if physics else ([], [])
    figures = [
        slice_figure(
            out / f"slice-{i + 1}.png", pairs.labels[i], pairs.full[i], pairs.low[i], rows, i
        ).name
        for i in figure_slices
    ]
    figures.append(psnr_figure(out / "psnr.png", rows).name)
    metrics = {
        "source": pairs.source,
        "slices": len(pairs),
        "labels": pairs.labels,
        "ranges": RANGES,
        "perceptual": perceptual_note,
        "settings": settings,
        "methods": [_method_metrics(scored) for scored in rows],
        "figures": figures,
    }
    if physics:
        metrics["physics"] = {**physics, "figures": physics_figures}
    (out / "metrics.json").write_text(json.dumps(_finite(metrics), indent=2, allow_nan=False))
    lines = [
        "# Denoising comparison",
        "",
        f"Pairs: {pairs.source}; {len(pairs)} slices. Mean ± SD over slices.",
        "",
        *_table(rows),
        *_notes(rows, perceptual_note),
        *[f"![{name}]({name})" for name in figures],
        "",
        *physics_lines,
    ]
    (out / "report.md").write_text("\n".join(lines))
    return metrics


def _method_metrics(scored: Scored) -> dict:
    """One method's entry in metrics.json: what it is, its cost and every score."""
    method = scored.method
    return {
        "name": method.name,
        "kind": method.kind,
        "detail": method.detail,
        "parameters": method.parameters,
        "gflops_512": method.gflops_512,
        "seconds_per_slice": mean_sd(scored.seconds),
        "mean_sd": scored.summary(),
        "per_slice": scored.per_slice,
    }


def _table(rows: list[Scored]) -> list[str]:
    """The comparison table, one line per method; the perceptual column only when measured."""
    has_perceptual = any("perceptual" in scored.per_slice for scored in rows)
    lines = [
        "| method | PSNR (dB) | SSIM | PSNR window (dB) | SSIM window |"
        + (" perceptual |" if has_perceptual else "")
        + " parameters | GFLOPs 512² | s / slice |",
        "|---|---|---|---|---|" + ("---|" if has_perceptual else "") + "---|---|---|",
    ]
    for scored in rows:
        summary, method = scored.summary(), scored.method
        params = "—" if method.parameters is None else f"{method.parameters:,}"
        flops = "—" if method.gflops_512 is None else f"{method.gflops_512:.1f}"
        perceptual = f" {_cell(summary['perceptual'], 4)} |" if has_perceptual else ""
        lines.append(
            f"| {method.name} | {_cell(summary['psnr'], 2)} | {_cell(summary['ssim'], 4)} | "
            f"{_cell(summary['psnr_window'], 2)} | {_cell(summary['ssim_window'], 4)} |"
            f"{perceptual} {params} | {flops} | {mean_sd(scored.seconds)[0]:.3f} |"
        )
    return lines


def _notes(rows: list[Scored], perceptual_note: str) -> list[str]:
    """What the table's numbers mean, then each method's own description."""
    return [
        "",
        f'- PSNR and SSIM over the {RANGES["psnr, ssim"]}; "window": the '
        f"{RANGES['psnr_window, ssim_window']}.",
        f"- Perceptual metric: {perceptual_note}",
        "- FLOPs: 2 x multiply-accumulates of every convolution for one 512 x 512 slice "
        "(halve to compare with tables that count MACs); — where the method has none.",
        "- Seconds per slice: this machine, including each method's own overheads.",
        "",
        *[f"- {scored.method.name}: {scored.method.detail}" for scored in rows],
        "",
    ]


def _finite(value: object) -> object:
    """Strict JSON: a perfect slice's infinite PSNR is written as the string "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
