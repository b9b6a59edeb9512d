"""Export verification: onnxruntime against torch on real slices, in HU."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

# Largest |onnxruntime - torch| allowed, in HU. Float32 differences come from summation
# order only (measured ~2e-3 HU on real 512 x 512 slices); a tenth of a HU is far below CT
# noise. The float16 variant runs the network body in half precision against the float32
# torch model while the input and the residual sum stay float32 (export/graph.py). In true
# float16 on a GPU that measured 1.7 HU at single pixels at 5 % dose and 3.1-3.7 HU at 2.5 %;
# the CPU provider, which computes float16 convolutions in float32, showed at most ~1.4 HU.
# 2 HU stays well below the 5 %-dose noise the model removes (~50 HU) and below one grey step
# of a 400-HU display window (1.6 HU): a variant over it on the GPU is not written.
TOLERANCE_HU = {"float32": 0.1, "float16": 2.0}

# Where the check runs: through the runtime itself (``Denoiser``), on the device the export
# is given, so it checks the very session configuration the runtime will serve. On a GPU
# that is the CUDA provider with TF32 off (``runtime/providers.py``), for float32 too: with
# TF32 off a float32 model runs in true float32 there and holds the 0.1 HU gate, and the
# runtime opens CUDA with the same options. Checking float32 on the CPU instead would leave
# the GPU kernels that serve the model unchecked, and the check would no longer describe the
# run. The card records the provider, its options and whether that was a GPU; the runtime
# picks a float16 variant automatically only when that record is a GPU one that passed.


@dataclass(frozen=True)
class Parity:
    """How an exported file compares with torch, and on what."""

    precision: str
    max_abs_diff_hu: float
    mean_abs_diff_hu: float
    tolerance_hu: float
    provider: str
    checked_on: str
    on_gpu: bool = False
    provider_options: dict[str, str] = field(default_factory=dict)

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
    """Run torch (float32, CPU) and the exported file through the runtime on the same slices.

    ``device`` as the runtime takes it (auto, cpu, cuda, cuda:N, ...); precision float32 makes
    the runtime run exactly this file, never a variant beside it.
    """
    from manas_infer.runtime import Denoiser, ModelChoice

    denoiser = Denoiser(
        ModelChoice(model_file, model_file.stem, "export check"),
        device=device,
        warm_up=None,
        precision="float32",
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
        precision,
        worst,
        total / count,
        TOLERANCE_HU[precision],
        denoiser.provider,
        checked_on,
        denoiser.on_gpu,
        denoiser.provider_options,
    )
