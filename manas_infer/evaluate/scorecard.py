"""The shipped models' scorecard: each model scored as ``denoise`` runs it (its default
strength, the CT-number guard) on a fixed set of whole slices of the patients no model was
trained or tuned on, at the model's own dose. The numbers go on the model's card, and CI
scores the model again and holds it to them: a green CI means the shipped denoiser helps on
data it never saw, and the card says by how much.

    python -m manas_infer.evaluate.scorecard [--write] [--data CT_ROOT]

prints every float32 model's scores beside its card's; ``--write`` puts them on the cards.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from manas_infer.config import shared_ct_root
from manas_infer.evaluate.pairs import Pairs, simulated_pairs, with_grain
from manas_infer.hu import normalize
from manas_infer.metrics import quality
from manas_infer.runtime import Denoiser
from manas_infer.runtime.models import card_path, list_models
from manas_infer.runtime.strength import DEFAULT_STRENGTH

# The untouched test patients of the training recipe (scripts/v2-runs.sh): a chest from a
# scanner model no training series has, and the only head (the only GE scanner).
TEST_SERIES = ("lung-pet-ct-dx-a0002", "ge-head-std")
SLICES_PER_SERIES = 3  # evenly spaced whole 512 x 512 slices: about a minute for all models
SEED = 0
METRICS = ("psnr", "ssim", "psnr_window", "ssim_window", "rmse_hu")
CARD_KEY = "scorecard"


# The same noise again with the grain of a soft-tissue kernel (simulate/texture.py; TG-233
# NPS centroid about 0.17 cycles/px, the measured B/B30f/B40f/Br38f series' 0.14-0.19): the
# kernels most low-dose series are read in, and the grain the v3 models left in place.
SOFT_KERNEL_SIGMA_PX = 0.8


def scored_pairs(ct_root: Path, dose: float) -> dict[str, Pairs]:
    """The fixed slices of each test series, full dose and simulated at ``dose`` percent."""
    return {
        name: simulated_pairs(ct_root / name, dose, seed=SEED, max_slices=SLICES_PER_SERIES)
        for name in TEST_SERIES
    }


def series_by_grain(entry: dict) -> dict[str, dict]:
    """A scorecard entry's scores per test series, at the simulator's ramp grain and at a
    soft-tissue kernel's."""
    return {"ramp grain": entry["series"],
            "soft-kernel grain": entry["soft_kernel_grain"]["series"]}  # fmt: skip


def slice_scores(images: list[np.ndarray], full: list[np.ndarray]) -> dict[str, float]:
    """Mean PSNR / SSIM (full range and soft-tissue window) and RMSE in HU over slices."""
    pred = normalize(torch.from_numpy(np.stack(images))[:, None].float())
    target = normalize(torch.from_numpy(np.stack(full))[:, None].float())
    scores = {name: float(values.mean()) for name, values in quality(pred, target).items()}
    errors = [float(np.sqrt(np.mean((a - b) ** 2))) for a, b in zip(images, full, strict=True)]
    scores["rmse_hu"] = float(np.mean(errors))
    return {name: round(scores[name], 4) for name in METRICS}


def score_model(model: Path, ct_root: Path, device: str = "cpu") -> dict:
    """The card's ``scorecard`` entry for one model: input and denoised, per test series."""
    denoiser = Denoiser(model, device=device, warm_up=None)
    dose = float(denoiser.card["dose_percent"])

    ramp = scored_pairs(ct_root, dose)
    soft = {name: with_grain(pairs, SOFT_KERNEL_SIGMA_PX) for name, pairs in ramp.items()}

    def series(pairs_by_name: dict[str, Pairs]) -> dict:
        scores = {}
        for name, pairs in pairs_by_name.items():
            denoised = [denoiser.denoise(low) for low in pairs.low]
            scores[name] = {
                "slices": pairs.labels,
                "input": slice_scores(pairs.low, pairs.full),
                "denoised": slice_scores(denoised, pairs.full),
            }
        return scores

    return {
        "what": (
            f"whole slices of the untouched test patients, simulated at {dose:g} % dose "
            f"(seed {SEED}), denoised at the default strength ({DEFAULT_STRENGTH:g} %) with "
            "the CT-number guard, as `manas-infer denoise --model` runs it"
        ),
        "command": "python -m manas_infer.evaluate.scorecard --write",
        "dose_percent": dose,
        "strength_percent": DEFAULT_STRENGTH,
        "series": series(ramp),
        "soft_kernel_grain": {
            "what": (
                f"the same slices and noise SD, the noise given a soft-tissue kernel's grain "
                f"(Gaussian-apodized ramp, sigma {SOFT_KERNEL_SIGMA_PX:g} px)"
            ),
            "sigma_px": SOFT_KERNEL_SIGMA_PX,
            "series": series(soft),
        },
    }


def shipped_models(folder: Path | None = None) -> list[Path]:
    """The float32 models the scorecard covers (float16 variants are opt-in, GPU only)."""
    return [m.path for m in list_models(folder) if m.card.get("precision") == "float32"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=shared_ct_root(), help="CT root")
    parser.add_argument("--write", action="store_true", help="put the scores on the cards")
    args = parser.parse_args()
    for model in shipped_models():
        entry = score_model(model, args.data)
        for grain, series in series_by_grain(entry).items():
            for name, scores in series.items():
                low, net = scores["input"], scores["denoised"]
                print(
                    f"{model.name} {name}, {grain}: PSNR {low['psnr']:.2f} -> "
                    f"{net['psnr']:.2f} dB, window SSIM {low['ssim_window']:.3f} -> "
                    f"{net['ssim_window']:.3f}, RMSE {low['rmse_hu']:.1f} -> "
                    f"{net['rmse_hu']:.1f} HU"
                )
        if args.write:
            path = card_path(model)
            card = json.loads(path.read_text())
            card[CARD_KEY] = entry
            path.write_text(json.dumps(card, indent=2) + "\n")


if __name__ == "__main__":
    main()
