"""The comparison tables of ``scripts/compare-v3.sh`` (and, with ``--name compare-v4 --grain
0 --grain 0.8``, of ``compare-v4.sh``; ``--name compare-v5`` for its v5 run), one per dose,
from its report folders. ``--also compare-v6`` adds the rows of an earlier comparison's
reports on the same slices and noise (checked), so a new model is scored once, not every
baseline again (``scripts/compare-v7.sh``).

Not a test: run it after the script, ``.venv/bin/python bench/compare_tables.py``. For each
dose and untouched test patient it reads ``bench/results/compare-v3-DOSEpct-SERIES/
metrics.json`` (written by ``manas-infer evaluate``), with each baseline's rows from its
sibling report ``...-ARCH`` on the same slices and noise, and writes one markdown table a dose
into ``bench/results/compare-v3-tables.md``: PSNR and SSIM, full range and soft-tissue
window (mean ± SD over the whole slices), the noise SD in flat regions, the NPS mean
frequency and the body-outline TTF f50 (the physicist's columns), parameters, GFLOPs per
512 x 512 slice and seconds per slice on this machine's CPU. The full-dose row gives the
reference's own noise, texture and sharpness, and the PSNR a perfect output would score
against it (``reference_floor``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from manas_infer.hu import HU_MAX, HU_MIN

REPO = Path(__file__).resolve().parents[1]
DOSES = ("10", "5", "2.5")
SERIES = ("lung-pet-ct-dx-a0002", "ge-head-std")
HEADER = (
    "| patient | method | PSNR dB | SSIM | PSNR window dB | SSIM window | noise SD HU "
    "| NPS mean f mm⁻¹ | TTF f50 mm⁻¹ | parameters | GFLOPs 512² | s / slice CPU |\n"
    + "|---" * 12
    + "|"
)


def _mean_sd(pair: list[float], digits: int) -> str:
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def _physics(row: dict | None) -> str:
    if not row:
        return "| | |"
    nps, ttf = row.get("nps") or {}, row.get("ttf_body_edge") or {}
    parts = [
        f"{nps['sd_hu']:.1f}" if "sd_hu" in nps else "",
        f"{nps['mean_frequency']:.3f}" if "mean_frequency" in nps else "",
        f"{ttf['f50']:.3f}" if ttf.get("f50") else "",
    ]
    return " | ".join(parts)


def _method_row(label: str, method: dict, physics: dict) -> str:
    scores = method["mean_sd"]
    seconds = method.get("seconds_per_slice")
    params, gflops = method.get("parameters"), method.get("gflops_512")
    return (
        f"| {label} | {method['name']} "
        f"| {_mean_sd(scores['psnr'], 2)} | {_mean_sd(scores['ssim'], 3)} "
        f"| {_mean_sd(scores['psnr_window'], 2)} | {_mean_sd(scores['ssim_window'], 3)} "
        f"| {_physics(physics.get(method['name']))} "
        f"| {f'{params:,}' if params else '—'} | {f'{gflops:.1f}' if gflops else '—'} "
        f"| {f'{seconds[0]:.2f}' if seconds and seconds[0] >= 0.005 else '—'} |"
    )


def _input(metrics: dict) -> dict:
    """The report's low-dose input row."""
    return next(m for m in metrics["methods"] if m["kind"] == "input")


def reference_floor(metrics: dict, physics: dict) -> tuple[float, float] | None:
    """(the full dose's own noise over the whole slice, HU; the PSNR of a perfect output
    against it, dB): PSNR is taken against the full dose, whose noise no denoiser can know.
    Its soft-tissue SD (NPS ROIs) scaled by the simulated noise's whole-slice RMS over that
    noise's soft-tissue SD on the same slices: quantum noise is lower in air and lung, and
    the HU range clips air, so the soft-tissue SD alone overstates it."""
    low = _input(metrics)
    sd_low = (physics.get(low["name"]) or {}).get("nps", {}).get("sd_hu")
    sd_ref = (physics.get("full dose") or {}).get("nps", {}).get("sd_hu")
    if not sd_low or not sd_ref or sd_low <= sd_ref:
        return None
    span = HU_MAX - HU_MIN
    rmse = np.sqrt(np.mean([(span * 10 ** (-p / 20)) ** 2 for p in low["per_slice"]["psnr"]]))
    floor = sd_ref * rmse / np.sqrt(sd_low**2 - sd_ref**2)  # the input's SD includes sd_ref
    return float(floor), float(20 * np.log10(span / floor))


def _same_input(a: dict, b: dict) -> bool:
    """Two reports scored the same slices with the same simulated noise."""
    first, second = _input(a)["per_slice"]["psnr"], _input(b)["per_slice"]["psnr"]
    same_noise = all(abs(x - y) < 1e-3 for x, y in zip(first, second, strict=True))
    return a["labels"] == b["labels"] and same_noise


def table_rows(folder: Path, patient: str, also: tuple[Path, ...] = ()) -> list[str]:
    """Markdown rows, one a method and one for the full dose, of one report folder, of its
    sibling reports ``FOLDER-ARCH`` and of the folders in ``also`` and their siblings (the
    rows they repeat left out; same slices and noise, checked)."""
    metrics = json.loads((folder / "metrics.json").read_text())
    methods = list(metrics["methods"])
    physics = {row["method"]: row for row in metrics.get("physics", {}).get("rows", [])}
    siblings = sorted(folder.parent.glob(f"{folder.name}-*/metrics.json"))
    for other in also:
        siblings += [
            other / "metrics.json",
            *sorted(other.parent.glob(f"{other.name}-*/metrics.json")),
        ]
    siblings = [path for path in siblings if path.is_file()]
    for sibling in siblings:
        extra = json.loads(sibling.read_text())
        if not _same_input(metrics, extra):
            raise SystemExit(f"{sibling}: not the same slices or noise as {folder.name}")
        names = {m["name"] for m in methods}  # at 5 % a sibling repeats MANAS and BM3D
        methods += [m for m in extra["methods"] if m["name"] not in names]
        physics = {row["method"]: row for row in extra.get("physics", {}).get("rows", [])} | physics
    rows = []
    label = f"{patient} ({metrics['slices']} slices)"
    for method in methods:
        rows.append(_method_row(label, method, physics))
        label = ""
    floor = reference_floor(metrics, physics)
    ceiling = f"ceiling {floor[1]:.1f} (own noise {floor[0]:.1f} HU)" if floor else ""
    rows.append(
        f"| | full dose (reference) | {ceiling} | | | | "
        f"{_physics(physics.get('full dose'))} | | | |"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", default="compare-v3", help="report folders' prefix")
    parser.add_argument(
        "--grain",
        action="append",
        default=[],
        help="noise grain (sigma px) of folders named ...-grainSIGMA (scripts/compare-v4.sh)",
    )
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        help="an earlier comparison's prefix whose reports on the same slices add their rows",
    )
    parser.add_argument(
        "--dose", action="append", default=[], choices=DOSES, help="only these doses (default all)"
    )
    args = parser.parse_args()
    lines = ["# Comparison tables (generated by bench/compare_tables.py)", ""]
    for grain in args.grain or [None]:
        for dose in args.dose or DOSES:
            title = f"## {dose} % dose"
            if grain is not None:
                kind = "ramp (the simulator's)" if float(grain) == 0 else "soft-tissue kernel's"
                title += f", noise grain sigma {grain} px: {kind}"
            lines += [title, "", HEADER]
            for series in SERIES:
                folder = args.results / f"{args.name}-{dose}pct-{series}"
                suffix = f"-grain{grain}" if grain is not None else ""
                folder = folder.with_name(folder.name + suffix)
                also = tuple(
                    args.results / f"{name}-{dose}pct-{series}{suffix}" for name in args.also
                )
                if (folder / "metrics.json").is_file():
                    lines += table_rows(folder, series, also)
                else:
                    lines.append(f"| {series} | (no report: {folder.name}) |" + " |" * 10)
            lines.append("")
    out = args.results / f"{args.name}-tables.md"
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
