"""Strength, bias guard and the automatic choice, measured on every real series here.

Not a test: run it by hand, ``nice -n 10 .venv/bin/python bench/bench_noise_choice.py``.
For each CT series in ../shared/data/ct, on 4 whole slices spread through it, as it is
(normal dose) and simulated at 10 / 5 / 2.5 % (the project's simulator, seed 0):

- the noise the runtime's estimator measures, against the truth where it is known
  (the simulated noise, SD(low - normal), added in quadrature to the series' own);
- the model and strength the automatic choice picks, the RMS change it makes to a
  normal-dose series, and its error against the full dose on the simulated ones;
- with the model trained for each simulated dose: the error against the full dose over
  strengths 0-100 % (the default strength's defence), and the mean HU of air, fat, soft
  tissue and bone against the full dose with and without the bias guard (sigma 8 / 12 / 16
  px), with the noise left in soft tissue.

Network outputs and simulations are cached (~/.cache/manas-infer), so a rerun is quick.
Writes bench/results/noise-choice.json and noise-choice.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from manas_infer.config import cache_root
from manas_infer.runtime import Denoiser, read_card, resolve_model
from manas_infer.runtime.calibrate import simulated_slices
from manas_infer.runtime.choice import fit, load_levels
from manas_infer.runtime.guard import BIAS_GUARD_SIGMA_PX, UNIFORM_REGIONS, uniform_regions
from manas_infer.runtime.noise import soft_tissue_mask, volume_noise
from manas_infer.runtime.strength import DEFAULT_STRENGTH, apply_strength

REPO = Path(__file__).resolve().parents[1]
SHARED_CT = Path(os.environ.get("MANAS_SHARED_DATA", REPO.parent / "shared" / "data")) / "ct"
DOSES = (10.0, 5.0, 2.5)
STRENGTHS = (0, 25, 50, 60, 70, 80, 90, 100)
NOISE_AT = (0, 50, 70, 100)
MIN_REGION_PX = 2000
SIGMAS = (None, 8.0, 12.0, 16.0)
# The calibration's six simulated slices per series (cached); the networks run on every
# other one, which is what a shared 2-core CPU affords.
EVERY = 2


class Nets:
    """The shipped models, loaded once, with their outputs cached on disk by content."""

    def __init__(self, device: str) -> None:
        self.device, self.loaded = device, {}
        self.folder = cache_root() / "bench-noise-choice"
        self.folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, hu: np.ndarray) -> np.ndarray:
        digest = hashlib.sha256(np.ascontiguousarray(hu).tobytes()).hexdigest()[:20]
        model_id = str(read_card(resolve_model(name).path).get("sha256", name))[:12]
        path = self.folder / f"{name}-{model_id}-{digest}.npy"
        if path.is_file():
            return np.load(path)
        if name not in self.loaded:
            self.loaded[name] = Denoiser(name, device=self.device, batch=2, warm_up=None)
        out = self.loaded[name](hu)
        np.save(path, out)
        return out


def body(normal: np.ndarray) -> np.ndarray:
    return normal > -500


def rms(a: np.ndarray, mask: np.ndarray) -> float:
    return float(np.sqrt(np.mean(a[mask].astype(np.float64) ** 2)))


def biases(out: np.ndarray, ref: np.ndarray, masks: dict[str, np.ndarray]) -> dict:
    """Mean of ``out - ref`` per region; None for a region too small for its mean to say
    more than its noise (thin bone in 3 slices at 2.5 % dose moved by +-35 HU that way)."""
    return {
        k: (round(float((out - ref)[m].mean()), 2) if m.sum() >= MIN_REGION_PX else None)
        for k, m in masks.items()
    }


def soft_noise(out: np.ndarray) -> float | None:
    sd = volume_noise(out).sd_hu
    return None if sd is None else round(sd, 1)


def measure_series(name: str, nets: Nets, levels) -> dict:
    indices, normal, lows = simulated_slices(SHARED_CT / name, list(DOSES))
    indices, normal = indices[::EVERY], normal[::EVERY]
    lows = {d: v[::EVERY] for d, v in lows.items()}
    masks, inside = uniform_regions(normal), body(normal)
    own = volume_noise(normal).sd_hu
    result: dict = {"series": name, "slices": indices, "own_noise_hu": own, "variants": {}}
    for label, x in [("normal", normal), *((f"{d:g} %", lows[d]) for d in DOSES)]:
        estimate = volume_noise(x)
        sd = estimate.sd_hu
        v: dict = {"measured_noise_hu": None if sd is None else round(sd, 1)}
        if label != "normal":
            dose = float(label.split()[0])
            added = [
                float((lo - no)[soft_tissue_mask(lo)].std())
                for lo, no in zip(x, normal, strict=True)
                if soft_tissue_mask(lo).sum() > 1500
            ]
            true = float(np.hypot(np.median(added), own or 0.0))
            v.update(added_noise_hu=round(float(np.median(added)), 1), true_noise_hu=round(true, 1))
            v["input_rmse_hu"] = round(rms(x - normal, inside), 1)
        # The automatic choice.
        level, strength = (
            fit(sd, levels, grain=estimate.grain_name)
            if sd is not None
            else (None, DEFAULT_STRENGTH)
        )
        model = level.name if level else "manas-5pct"
        out = (
            x if strength == 0 else apply_strength(x, nets(model, x), strength, BIAS_GUARD_SIGMA_PX)
        )
        v["auto"] = {
            "model": model,
            "strength": strength,
            "rms_change_hu": round(rms(out - x, inside), 2),
            "rmse_vs_full_dose_hu": round(rms(out - normal, inside), 1),
            "roi_bias_hu": biases(out, normal, masks),
            "roi_shift_vs_input_hu": biases(out, x, masks),
            "noise_hu": soft_noise(out),
        }
        # The old default (manas-5pct, all of it, no guard) and the explicit model for a dose.
        explicit = "manas-5pct" if label == "normal" else resolve_model(None, dose).name
        raw = nets(explicit, x)
        v["explicit_model"] = explicit
        v["sweep_rmse_hu"] = {
            str(s): round(rms(apply_strength(x, raw, s, BIAS_GUARD_SIGMA_PX) - normal, inside), 2)
            for s in STRENGTHS
        }
        v["sweep_noise_hu"] = {
            str(s): soft_noise(apply_strength(x, raw, s, BIAS_GUARD_SIGMA_PX)) for s in NOISE_AT
        }
        v["guard"] = {}
        for sigma in SIGMAS:
            full = apply_strength(x, raw, 100.0, sigma)
            v["guard"][str(sigma)] = {
                "roi_bias_hu": biases(full, normal, masks),
                "roi_shift_vs_input_hu": biases(full, x, masks),
                "slice_mean_shift_hu": round(float((full - x)[inside].mean()), 2),
                "rmse_vs_full_dose_hu": round(rms(full - normal, inside), 2),
                "rms_change_hu": round(rms(full - x, inside), 2),
                "noise_hu": soft_noise(full),
            }
        result["variants"][label] = v
        print(
            f"{name} {label}: noise {v['measured_noise_hu']} -> {model} {strength:g} %", flush=True
        )
    result["roi_pixels"] = {k: int(m.sum()) for k, m in masks.items()}
    result["input_roi_bias_hu"] = {
        label: biases(lows[d], normal, masks) for label, d in ((f"{d:g} %", d) for d in DOSES)
    }
    return result


def minimax_strength(rows: list[dict]) -> dict:
    """The strength whose worst excess error over each series' best is smallest."""
    excess: dict[str, list[float]] = {str(s): [] for s in STRENGTHS}
    for r in rows:
        for d in DOSES:
            sweep = r["variants"][f"{d:g} %"]["sweep_rmse_hu"]
            best = min(sweep.values())
            for s in STRENGTHS:
                excess[str(s)].append(sweep[str(s)] / best - 1.0)
    worst = {s: max(v) for s, v in excess.items()}
    return {
        "worst": worst,
        "mean": {s: float(np.mean(v)) for s, v in excess.items()},
        "best": int(min(worst, key=worst.get)),
    }


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def mean_of(values: list[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return float(np.mean(found)) if found else None


def markdown(report: dict) -> str:
    levels, rows = report["calibration"], report["series"]
    lines = [
        "# Strength, CT-number bias guard and the automatic model choice",
        "",
        f"Command: `{report['command']}`. {report['machine']}. Models: the shipped "
        "manas-10pct / 5pct / 2.5pct (the --dose rows) and, where the automatic choice measures "
        "a coarse noise grain, their -soft family. Each series: 3 whole slices spread over its "
        "middle 70 % "
        "(every other one of the calibration's six, the same simulation: seed 1), as it is and "
        "simulated at 10 / 5 / 2.5 %. Errors and changes are RMS inside the body (normal dose "
        "> -500 HU); noise is the runtime's estimate in soft tissue (on these 3 slices). "
        f"This run took {report['seconds']:.0f} s (simulations and network outputs are cached).",
        "",
        "## Calibration (models/noise-levels.json)",
        "",
        f"`{levels['command']}`; normal-dose noise of the training-style series "
        f"{levels['normal_dose_hu']} HU.",
        "",
        "| model | dose | noise gain | noise at centre (HU) | trained range (HU) |",
        "|---|---|---|---|---|",
    ]
    for name, m in sorted(levels["models"].items(), key=lambda kv: -kv[1]["dose_percent"]):
        g, r = m["noise_gain"], m["noise_range_hu"]
        lines.append(
            f"| {name} | {m['dose_percent']:g} % | x{g[0]:g}-{g[1]:g} | {m['noise_hu']} | "
            f"{r[0]}-{r[1]} |"
        )
    lines += [
        "",
        "## The noise estimator against the truth",
        "",
        "true = SD(low - normal) in soft tissue, added in quadrature to the series' own noise "
        "(the estimate on the normal-dose slices).",
        "",
        "| series | own noise | dose | added SD | true | estimated | est / true |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for d in DOSES:
            v = r["variants"][f"{d:g} %"]
            ratio = v["measured_noise_hu"] / v["true_noise_hu"] if v["measured_noise_hu"] else None
            lines.append(
                f"| {r['series']} | {fmt(r['own_noise_hu'])} | {d:g} % | {v['added_noise_hu']} | "
                f"{v['true_noise_hu']} | {fmt(v['measured_noise_hu'])} | {fmt(ratio, '.3f')} |"
            )
    lines += [
        "",
        "## The automatic choice per series",
        "",
        "normal: the series as it is (RMS change is what the choice does to it; the old "
        "default, manas-5pct at 100 % without the guard, for comparison). Simulated doses: "
        "error against the full dose, input -> output.",
        "",
        "| series | input | measured noise (HU) | model | strength | RMS change (HU) | "
        "RMSE vs full dose: input -> auto (HU) | old default: change / RMSE (HU) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for label, v in r["variants"].items():
            a, old = v["auto"], v["guard"]["None"]
            before = "0" if label == "normal" else v["input_rmse_hu"]
            lines.append(
                f"| {r['series']} | {label} | {fmt(v['measured_noise_hu'])} | {a['model']} | "
                f"{a['strength']:g} % | {a['rms_change_hu']} | {before} -> "
                f"{a['rmse_vs_full_dose_hu']} | {old['rms_change_hu']} / "
                f"{old['rmse_vs_full_dose_hu']} ({v['explicit_model']}) |"
            )
    lines += [
        "",
        "Summary, mean RMSE against the full dose over the six series (HU): the simulated "
        f"input, the model trained for that dose at the default {report['default_strength']:g} "
        "% (what --dose gives), and the automatic choice (which does not know the dose); and "
        "the RMS change the automatic choice makes to each series as it is.",
        "",
        "| dose | input | --dose model | automatic |",
        "|---|---|---|---|",
    ]
    default = str(int(report["default_strength"]))
    for d in DOSES:
        v = [r["variants"][f"{d:g} %"] for r in rows]
        lines.append(
            f"| {d:g} % | {mean_of([x['input_rmse_hu'] for x in v]):.1f} | "
            f"{mean_of([x['sweep_rmse_hu'].get(default) for x in v]):.1f} | "
            f"{mean_of([x['auto']['rmse_vs_full_dose_hu'] for x in v]):.1f} |"
        )
    lines += ["", "| series as it is | measured noise (HU) | model, strength | RMS change (HU) |",
              "|---|---|---|---|"]  # fmt: skip
    for r in rows:
        v = r["variants"]["normal"]
        lines.append(
            f"| {r['series']} | {fmt(v['measured_noise_hu'])} | {v['auto']['model']}, "
            f"{v['auto']['strength']:g} % | {v['auto']['rms_change_hu']} |"
        )
    lines += [
        "",
        "## Strength: error against the full dose (the model trained for the dose, guard on)",
        "",
        "Mean over the six series of the RMSE inside the body (HU); in brackets the "
        "soft-tissue noise left (HU) where measured; 0 % is the input.",
        "",
        "| dose | " + " | ".join(f"{s} %" for s in STRENGTHS) + " | best |",
        "|---|" + "---|" * (len(STRENGTHS) + 1),
    ]
    for d in DOSES:
        variants = [r["variants"][f"{d:g} %"] for r in rows]
        means = [mean_of([v["sweep_rmse_hu"][str(s)] for v in variants]) for s in STRENGTHS]
        cells = []
        for s, m in zip(STRENGTHS, means, strict=True):
            noise = mean_of([v["sweep_noise_hu"].get(str(s)) for v in variants])
            cells.append(f"{m:.1f}" + ("" if noise is None else f" ({noise:.0f})"))
        best = STRENGTHS[int(np.argmin(means))]
        lines.append(f"| {d:g} % | " + " | ".join(cells) + f" | {best} % |")
    regret = minimax_strength(rows)
    lines += [
        "",
        "Excess error over each series' own best strength (RMSE / lowest RMSE - 1), worst "
        "and mean over the six series and three doses; the default is the strength with the "
        f"smallest worst case: **{regret['best']} %** (the runtime's default: "
        f"{report['default_strength']:g} %).",
        "",
        "| strength | " + " | ".join(f"{s} %" for s in STRENGTHS) + " |",
        "|---|" + "---|" * len(STRENGTHS),
        "| worst | " + " | ".join(f"{regret['worst'][str(s)]:.0%}" for s in STRENGTHS) + " |",
        "| mean | " + " | ".join(f"{regret['mean'][str(s)]:.0%}" for s in STRENGTHS) + " |",
    ]
    lines += ["", "Per series, the strength with the lowest error:", ""]
    for r in rows:
        best = []
        for d in DOSES:
            sweep = r["variants"][f"{d:g} %"]["sweep_rmse_hu"]
            best.append(f"{d:g} %: {min(STRENGTHS, key=lambda s: sweep[str(s)])} %")
        lines.append(f"- {r['series']}: " + ", ".join(best))
    lines += [
        "",
        "## CT-number bias guard, at 100 % strength",
        "",
        "Mean HU in uniform regions of the normal-dose slices (regions of at least "
        f"{MIN_REGION_PX} pixels over the 3 slices), averaged over the series that have them. "
        "First what the runtime itself shifts (output - its own input): what the guard is "
        "for. Then against the full dose, where 'input' is the simulated low dose's own "
        "offset (the simulator's log-of-counts bias in thick bodies, not the network's). "
        "'worst' is the largest |mean| of one region in one series; noise is the soft-tissue "
        "estimate of the output; whole-body shift is the mean change inside the body.",
        "",
        "| dose | guard | air | fat | soft tissue | bone | worst | whole-body shift | "
        "noise (HU) | RMSE (HU) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def region_row(label: str, guard: str, items: list[dict], tail: str) -> str:
        roi = {k: mean_of([x[k] for x in items]) for k in UNIFORM_REGIONS}
        worst = max((abs(x[k]) for x in items for k in UNIFORM_REGIONS if x[k] is not None),
                    default=None)  # fmt: skip
        cells = " | ".join(fmt(roi[k], "+.1f") for k in UNIFORM_REGIONS)
        return f"| {label} | {guard} | {cells} | {fmt(worst)} | {tail} |"

    for key, title in (("roi_shift_vs_input_hu", "output - input"),
                       ("roi_bias_hu", "output - full dose")):  # fmt: skip
        lines.append(f"| **{title}** | | | | | | | | | |")
        for d in DOSES:
            label = f"{d:g} %"
            if key == "roi_bias_hu":
                items = [r["input_roi_bias_hu"][label] for r in rows]
                lines.append(region_row(label, "input", items, "- | - | -"))
            for sigma in SIGMAS:
                g = [r["variants"][label]["guard"][str(sigma)] for r in rows]
                tail = (
                    f"{fmt(mean_of([x['slice_mean_shift_hu'] for x in g]), '+.1f')} | "
                    f"{fmt(mean_of([x['noise_hu'] for x in g]))} | "
                    f"{fmt(mean_of([x['rmse_vs_full_dose_hu'] for x in g]))}"
                )
                name = "none" if sigma is None else f"sigma {sigma:g} px"
                lines.append(region_row(label, name, [x[key] for x in g], tail))
    lines += [
        "",
        "The old default on the normal-dose series (manas-5pct, 100 %), against the series itself:",
        "",
        "| series | guard | air | fat | soft tissue | bone | RMS change (HU) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for sigma in (None, BIAS_GUARD_SIGMA_PX):
            g = r["variants"]["normal"]["guard"][str(sigma)]
            lines.append(
                f"| {r['series']} | {'none' if sigma is None else f'sigma {sigma:g} px'} | "
                + " | ".join(fmt(g["roi_bias_hu"][k], "+.1f") for k in UNIFORM_REGIONS)
                + f" | {g['rms_change_hu']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--series", nargs="*", default=None, help="names under ../shared/data/ct")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    levels = load_levels()
    if levels is None:
        raise SystemExit("models/noise-levels.json is missing: run the calibration first")
    names = args.series or sorted(p.name for p in SHARED_CT.iterdir() if p.is_dir())
    nets = Nets(args.device)
    start = time.perf_counter()
    rows = [measure_series(name, nets, levels) for name in names]
    report = {
        "command": "nice -n 10 .venv/bin/python bench/bench_noise_choice.py",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, device {args.device}",
        "seconds": round(time.perf_counter() - start, 1),
        "default_strength": DEFAULT_STRENGTH,
        "bias_guard_sigma_px": BIAS_GUARD_SIGMA_PX,
        "calibration": json.loads(levels.source.read_text()),
        "series": rows,
    }
    report["minimax_strength"] = minimax_strength(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "noise-choice.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "noise-choice.md").write_text(markdown(report))
    print(f"wrote {args.out / 'noise-choice.md'}")


if __name__ == "__main__":
    main()
