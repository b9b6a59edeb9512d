"""The rows of the comparison: each a way to turn a low-dose HU slice into a denoised one.

- the low-dose input itself (the paper's FBP row);
- a model file (name in models/ or .onnx path), run by the one runtime (``Denoiser``);
- a training run directory (MANAS, RED-CNN or DnCNN), its best net in torch inside the
  same HU graph the export writes (``HUModel``), so an unexported run can be compared too;
- BM3D from the ``bm3d`` package, with the noise level estimated from each low-dose slice
  or given in HU.

Every method gets [H, W] float32 HU and returns the same; values outside the networks'
[-1024, 3072] HU range pass through unchanged for every method alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from manas_infer.hu import HU_MAX, HU_MIN

Denoise = Callable[[np.ndarray], np.ndarray]


@dataclass
class Method:
    """One row of the table."""

    name: str
    kind: str  # input | model | run | bm3d
    denoise: Denoise
    parameters: int | None = None
    gflops_512: float | None = None
    detail: str = ""


def low_dose_input() -> Method:
    return Method("low dose (input)", "input", lambda hu: hu, 0, 0.0, "no processing")


def model_method(model: str | Path, device: str = "auto") -> Method:
    """A model file through the one runtime, as ``denoise`` and the node run it."""
    from manas_infer.runtime import Denoiser

    denoiser = Denoiser(model, device=device, warm_up=None)
    card = denoiser.card
    return Method(
        card.get("name", Path(str(model)).stem),
        "model",
        denoiser.run,
        card.get("parameters"),
        card.get("gflops_512"),
        f"{denoiser.path.name} on {denoiser.provider}",
    )


def automatic_method(device: str = "auto") -> Method:
    """What ``denoise`` gives without ``--model`` or ``--dose``: the image's own noise (its SD
    and grain) picks the model and the strength (``runtime/choice.py``), then the runtime
    applies them with its CT-number guard. Chosen per image: the phantom's images are
    single slices."""
    from manas_infer.runtime import Denoiser
    from manas_infer.runtime.choice import fit, load_levels
    from manas_infer.runtime.models import DEFAULT_MODEL
    from manas_infer.runtime.noise import grain_name, slice_grain, slice_noise, soft_tissue_mask
    from manas_infer.runtime.strength import DEFAULT_STRENGTH

    levels = load_levels()
    if levels is None:
        raise FileNotFoundError("models/noise-levels.json is missing: no automatic choice")
    denoisers: dict[str, Denoiser] = {}

    def denoise(hu: np.ndarray) -> np.ndarray:
        mask = soft_tissue_mask(hu)
        sd = slice_noise(hu, mask)
        name, strength = DEFAULT_MODEL, DEFAULT_STRENGTH
        if sd is not None:
            grain = grain_name(slice_grain(hu, mask, sd))
            level, strength = fit(sd, levels, grain=grain)
            name = level.name
        if name not in denoisers:
            denoisers[name] = Denoiser(name, device=device, warm_up=None)
        return denoisers[name].denoise(hu, strength)

    return Method(
        "automatic (shipped default)",
        "model",
        denoise,
        None,
        None,
        "model and strength chosen from each image's noise, CT-number guard on",
    )


def run_method(run_dir: Path, device: str = "cpu", ensemble: int = 1) -> Method:
    """The best retrained net of a run directory, in torch, HU in and HU out; ``ensemble``
    N averages it over N orientations, as ``export --ensemble N`` writes it (the shipped
    models: 3), so a run scores as its exported file will."""
    from manas_infer.export.graph import HUModel
    from manas_infer.train.profile import count_flops, count_parameters
    from manas_infer.train.run import load_run_config, load_trained

    config = load_run_config(run_dir)
    net, best = load_trained(run_dir)
    graph = HUModel(net, net.size_multiple, ensemble=ensemble).to(device).eval()

    @torch.no_grad()
    def denoise(hu: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))[None, None].to(device)
        return graph(x)[0, 0].cpu().numpy()

    passes = f", {ensemble} orientations" if ensemble > 1 else ""
    return Method(
        f"{config.arch}-{config.dose:g}pct ({run_dir.name}{passes})",
        "run",
        denoise,
        count_parameters(net),
        ensemble * count_flops(net, 512, 512) / 1e9,
        f"{run_dir} best epoch {best['epoch']}, torch on {device}{passes}",
    )


def estimate_noise_hu(hu: np.ndarray) -> float:
    """Noise SD of a CT slice from its finest diagonal Haar detail (Donoho's MAD rule),
    over 2x2 blocks inside the body only: air outside the patient is clipped at -1024 HU
    and noise-free, and would drag a whole-image estimate (scikit-image's) down."""
    h, w = (hu.shape[0] // 2) * 2, (hu.shape[1] // 2) * 2
    a, b = hu[0:h:2, 0:w:2], hu[0:h:2, 1:w:2]
    c, d = hu[1:h:2, 0:w:2], hu[1:h:2, 1:w:2]
    inside = np.minimum(np.minimum(a, b), np.minimum(c, d)) > -900.0
    if inside.sum() < 64:
        inside = np.ones_like(inside)
    detail = (a - b - c + d)[inside] / 2.0
    return float(np.median(np.abs(detail)) / 0.6745)


def bm3d_method(sigma_hu: float | None = None) -> Method:
    """BM3D (the ``bm3d`` package) on the slice in HU with a white-noise model of SD
    ``sigma_hu``, or of the SD estimated on each slice when None."""
    import bm3d

    def denoise(hu: np.ndarray) -> np.ndarray:
        inside = np.clip(hu, HU_MIN, HU_MAX).astype(np.float64)
        sigma = sigma_hu if sigma_hu is not None else estimate_noise_hu(inside)
        out = np.asarray(bm3d.bm3d(inside, sigma_psd=max(sigma, 1e-3)), dtype=np.float64)
        return (hu + (out - inside)).astype(np.float32)

    detail = f"sigma {sigma_hu:g} HU" if sigma_hu is not None else "sigma estimated per slice"
    return Method("BM3D", "bm3d", denoise, None, None, f"bm3d package, {detail}")
