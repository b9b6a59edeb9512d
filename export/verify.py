"""Export verification: onnxruntime against torch on real slices, in HU."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

# Largest |onnxruntime - torch| allowed, in HU. Float32 differences come from summation
# order only (measured ~2e-3 HU on real 512 x 512 slices); a tenth of a HU is far below CT
# noise. The float16 variant runs the network body in half precision against the float32
# torch model while the input and the residual sum stay float32 (export/graph.py): measured
# up to ~1.4 HU at single pixels, ~0.04 HU on average; 2 HU stays well below the 5 %-dose
# noise it removes (~50 HU) and below one grey step of a 400-HU display window (1.6 HU).
TOLERANCE_HU = {"float32": 0.1, "float16": 2.0}


@dataclass(frozen=True)
class Parity:
    """How an exported file compares with torch, and on what."""

    precision: str
    max_abs_diff_hu: float
    mean_abs_diff_hu: float
    tolerance_hu: float
    provider: str
    checked_on: str

    @property
    def ok(self) -> bool:
        return self.max_abs_diff_hu <= self.tolerance_hu

    def to_dict(self) -> dict:
        return {**self.__dict__, "ok": self.ok}


def check_batches(slices: np.ndarray) -> list[np.ndarray]:
    """Two batch sizes and two image sizes from the same slices: the whole slices in pairs,
    and one crop whose sides are not multiples of 8 (the in-graph padding path)."""
    n, H, W = slices.shape
    batches = [slices[: min(2, n)]]
    h, w = max(8, H - 5 - H // 7), max(8, W - 3 - W // 5)
    batches.append(slices[-1:, :h, :w])
    return batches


def compare(
    reference: nn.Module,
    model_file: Path,
    slices: np.ndarray,
    precision: str,
    checked_on: str,
    device: str = "auto",
) -> Parity:
    """Run torch (float32, CPU) and the exported file through the runtime on the same slices."""
    from manas_infer.runtime import Denoiser, ModelChoice

    denoiser = Denoiser(
        ModelChoice(model_file, model_file.stem, "export check"), device=device, warm_up=None
    )
    worst, total, count = 0.0, 0.0, 0
    reference = reference.float().eval()
    for batch in check_batches(slices.astype(np.float32)):
        with torch.no_grad():
            expected = reference(torch.from_numpy(batch)[:, None])[:, 0].numpy()
        got = denoiser.run(batch)
        diff = np.abs(got.astype(np.float64) - expected)
        worst = max(worst, float(diff.max()))
        total += float(diff.sum())
        count += diff.size
    return Parity(
        precision, worst, total / count, TOLERANCE_HU[precision], denoiser.provider, checked_on
    )
