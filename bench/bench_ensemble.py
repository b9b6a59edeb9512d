"""Which self-ensemble to ship: the network averaged over orientations of the slice
(``export/graph.py``), measured on series that are neither trained on nor test patients.

Not a test: run it by hand,

    nice -n 10 .venv/bin/python bench/bench_ensemble.py [RUN ...]

For each run (default: the shipped 5 % model's run) it simulates 5 % dose on 3 whole slices
of each out-of-sample series (the whole-body PET/CT and the demo chest, seed = slice index),
runs the network once on each orientation of ``ORIENTATIONS`` (each its own inverse) and
scores the mean of every candidate set of turned-back outputs against the full dose (PSNR,
full range, and the noise left in uniform soft tissue). The test patients are not used: the
choice is made here and checked once on them (compare-v7). Writes
bench/results/ensemble.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from manas_infer.data.series import scan
from manas_infer.evaluate.physics_report import strict_json
from manas_infer.evaluate.scorecard import slice_scores
from manas_infer.export.graph import ORIENTATIONS, HUModel
from manas_infer.simulate.dose import DoseSettings, LowDoseSimulator
from manas_infer.train.run import load_trained

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MANAS_SHARED_DATA", REPO.parent / "shared" / "data"))
SERIES = ("tcga-thca-de-a4ma-wholebody", "lung-pet-ct-dx-a0001")
DEFAULT_RUN = REPO / "models/training/tuned-v6/fine/20261203-042708-manas-5pct-cpu-long"
SETS = (
    ("identity",),
    ("identity", "mirror"),
    ("identity", "flip"),
    ("identity", "half turn"),
    ("identity", "transpose"),
    ("identity", "mirror", "flip"),
    ("identity", "transpose", "half turn"),
    ("identity", "mirror", "flip", "half turn"),
    ("identity", "transpose", "half turn", "anti-transpose"),
    tuple(ORIENTATIONS),
)


def psnr(image: np.ndarray, full: np.ndarray) -> float:
    """Full-range PSNR (dB) as the scorecard and evaluate compute it."""
    return slice_scores([image], [full])["psnr"]


def out_of_sample_slices(count: int) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(label, full dose, simulated 5 %) for ``count`` evenly spaced whole slices of each
    of ``SERIES`` (seed = slice index): the same slices for every bench that uses them."""
    simulator = LowDoseSimulator(DoseSettings(dose_percent=5.0))
    for name in SERIES:
        series = scan(SHARED / "ct" / name).series[0]
        picks = np.linspace(0, series.n_slices - 1, count + 2)[1:-1].astype(int)
        for i in picks.tolist():
            full = series.read_slice_hu(i).astype(np.float32)
            low = simulator.simulate_numpy(full, series.pixel_spacing[0], seed=i)
            yield f"{name}, slice {i}", full, low


def turned_outputs(graph: HUModel, low: np.ndarray) -> dict[str, np.ndarray]:
    """The network's output on each orientation of ``low``, turned back (HU)."""
    x = torch.from_numpy(np.ascontiguousarray(low, dtype=np.float32))[None, None]
    outs = {}
    with torch.no_grad():
        for name, turn in ORIENTATIONS.items():
            outs[name] = turn(graph(turn(x)))[0, 0].numpy()
    return outs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, default=[DEFAULT_RUN])
    parser.add_argument("--slices", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    started = time.time()
    result: dict = {"series": list(SERIES), "dose_percent": 5.0, "runs": {}}
    for run in args.runs:
        net, _ = load_trained(run)
        graph = HUModel(net, net.size_multiple).eval()  # one pass; the sets are formed here
        scores: dict[str, list[float]] = {" + ".join(s): [] for s in SETS}
        inputs: list[float] = []
        for _, full, low in out_of_sample_slices(args.slices):
            outs = turned_outputs(graph, low)
            inputs.append(psnr(low, full))
            for members in SETS:
                mean = np.mean([outs[m] for m in members], axis=0)
                scores[" + ".join(members)].append(psnr(mean, full))
        single = scores["identity"]
        sets = {}
        for key, values in scores.items():
            gains = [a - b for a, b in zip(values, single, strict=True)]
            sets[key] = {"passes": key.count("+") + 1, "psnr": float(np.mean(values)),
                         "gain_db": float(np.mean(gains)), "per_slice_gain_db": gains}  # fmt: skip
        result["runs"][run.name] = {"input_psnr": float(np.mean(inputs)), "sets": sets}
    result["seconds"] = round(time.time() - started, 1)
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ensemble.json").write_text(json.dumps(strict_json(result), indent=2) + "\n")
    given = "".join(
        f" {run.resolve().relative_to(REPO)}" for run in args.runs if args.runs != [DEFAULT_RUN]
    )
    lines = [
        "# Self-ensemble: the network averaged over orientations of the slice",
        "",
        f"Command: `nice -n 10 .venv/bin/python bench/bench_ensemble.py{given}` "
        f"({result['seconds'] / 60:.1f} min, {result['machine']}). 5 % dose simulated on "
        f"{args.slices} whole slices each of {', '.join(SERIES)}: series neither trained on "
        "nor held out as test patients. PSNR full range against the full dose, mean over "
        "the slices; gain over one pass.",
        "",
    ]
    for run, entry in result["runs"].items():
        lines += [
            f"## {run} (input {entry['input_psnr']:.2f} dB)",
            "",
            "| orientations | passes | PSNR dB | gain dB | slices gaining |",
            "|---|---|---|---|---|",
        ]
        for key, row in entry["sets"].items():
            gaining = sum(g > 0 for g in row["per_slice_gain_db"])
            lines.append(
                f"| {key} | {row['passes']} | {row['psnr']:.2f} | {row['gain_db']:+.3f} "
                f"| {gaining} of {len(row['per_slice_gain_db'])} |"
            )
        lines.append("")
    (args.out / "ensemble.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
