"""Record a finished training run in the repository: its metrics, timing and command.

    python bench/record_run.py RUN_DIR NAME "the exact command"

writes bench/results/NAME.json (metrics without the per-slice lists, plus the run's
config) and bench/results/NAME.md (the table a reader wants), and copies the run's
genotype and curves pictures beside them.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(run_dir: Path, name: str, command: str) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    genotype = json.loads((run_dir / "genotype.json").read_text())
    summary = {k: v for k, v in metrics.items() if k != "per_slice"}
    record = {"command": command, "machine": platform.processor() or platform.machine(),
              "metrics": summary, "config": config, "genotype": genotype}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2))
    for picture in ("genotype.png", "curves.png"):
        if (run_dir / picture).is_file():
            shutil.copy(run_dir / picture, RESULTS / f"{name}-{picture}")
    rows = []
    for label, key in (("low-dose input (FBP)", "low_dose"), ("MANAS (retrained)", "network")):
        m = metrics["mean_sd"][key]
        digits = {"psnr": 2, "ssim": 4, "psnr_window": 2, "ssim_window": 4}
        cells = [f"{m[k][0]:.{d}f} ± {m[k][1]:.{d}f}" for k, d in digits.items()]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    preset = config["preset"]
    seconds = metrics["seconds"]
    cells = "; ".join(
        f"{t}: " + " ".join(edge["op"] for edge in ops) for t, ops in genotype["cells"].items()
    )
    text = f"""# {name}

Command: `{command}`

Preset `{preset["name"]}` (C={preset["C"]}, L={preset["L"]}, D={preset["D"]}, K={preset["K"]},
P={preset["P"]}, {preset["search_epochs"]} search epochs ({preset["warmup_epochs"]} weights
only), {preset["retrain_epochs"]} retrain epochs, batch {preset["batch"]}, lr {preset["lr"]});
{metrics["dose_percent"]:g} % dose; images: {metrics["images"]}; perceptual weight
{metrics["perceptual_weight"]} (no VGG-16 weights on this machine); device {metrics["device"]}.
Test split: {metrics["test_slices"]} images of the held-out patient(s).

| | PSNR full range (dB) | SSIM full range | PSNR [-160, 240] HU (dB) | SSIM [-160, 240] HU |
|---|---|---|---|---|
{chr(10).join(rows)}

Mean ± SD over the test images. Full range = [-1024, 3072] HU.

- Parameters: {metrics["parameters"]:,}; FLOPs at 512x512: {metrics["gflops_512"]:.2f} G
- Wall time: search {seconds["search"]:.0f} s, retrain {seconds["retrain"]:.0f} s
- Best validation epoch: {metrics["best_epoch"]} (PSNR {metrics["val_psnr_best"]:.2f} dB)
- Search stopped early by the skip rule: {metrics["search_stopped_early"] or "no"}
- Derived cells: {cells}

![derived network]({name}-genotype.png)
![curves]({name}-curves.png)
"""
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
