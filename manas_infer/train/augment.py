"""Training-time augmentation of (low-dose, normal-dose) pairs, so that a net trained on a
few patients meets other anatomy, contrasts and noise levels than its own.

Why: trained on an abdomen reconstructed with an iterative method (smooth: nothing above
its own resolution), the small preset's net learnt that every sharp detail is noise. On the
held-out chest (FBP, sharp) it blurred every edge by about one pixel: it changed the clean
normal-dose chest by 85 HU RMSE and pulled dense bone down by ~250 HU, but a chest blurred
by a 1.5-pixel Gaussian by only 16 HU (bench/results/train-small-5pct.md). The same
nominal dose also gives very different noise by patient size: 5 % is 118 HU in the pancreas
patient's soft tissue and 56 HU in the chest's. Four label-preserving transforms, each
drawn per pair, teach the net what is signal and what is noise across that spread:

- orientation: one of the 8 flips and quarter turns;
- sharpness: the anatomy sharpened by an unsharp mask, ``normal' = normal + a (normal -
  G * normal)`` with G a Gaussian of ``SHARPEN_SIGMA`` pixels and a uniform in ``sharpen``,
  so sharp edges exist in the targets as they do in FBP and sharp-kernel images;
- contrast: the anatomy scaled about air, ``normal' = AIR + s (normal - AIR)``, s
  log-uniform in ``contrast``; the simulated noise ``low - normal`` is kept as it is
  (to first order image-domain noise does not depend on the object's contrast);
- noise level: ``low' = normal' + t (low - normal)``, t log-uniform in ``noise``: the noise
  of a dose ``dose / t^2``, because photon noise scales as 1/sqrt(dose);
- noise grain: the noise given the grain of another reconstruction kernel (a ramp
  apodized by a Gaussian of sigma pixels, uniform in ``texture``, at the same SD;
  ``simulate/texture.py``): the simulator's ramp noise is as fine as a lung kernel's, while
  soft-tissue kernels make it a coarse mottle that a net never shown it leaves in place.

Everything is clamped to the networks' HU range afterwards. The validation and test splits
are never augmented, so the numbers a run reports are on untouched pairs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from manas_infer.hu import HU_MAX, HU_MIN, is_padding
from manas_infer.simulate.texture import apodize, gaussian_blur

AIR_HU = -1000.0
SHARPEN_SIGMA = 1.0  # pixels; about the blur the unaugmented net applied to the chest


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random transforms; (1, 1) switches a transform off."""

    orientation: bool = True
    sharpen: tuple[float, float] = (0.0, 8.0)  # uniform; (0, 0) is off
    contrast: tuple[float, float] = (0.5, 2.0)
    # x0.4-3.0: a nominal dose gives 2-3x more noise in a large abdomen than in a head or a
    # thin chest; x0.4-1.4 (the first shipped models) learnt to remove too little there.
    noise: tuple[float, float] = (0.4, 3.0)
    # Gaussian apodization sigma, pixels, uniform; (0, 0) is off (the runs made before it).
    # 0-1.4 spans the ramp's grain to the soft-tissue kernels' (noise-texture.md).
    texture: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        for name in ("sharpen", "texture"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(
                    f"augmentation {name} range must be 0 <= low <= high, got {lo}, {hi}"
                )
        for name in ("contrast", "noise"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(
                    f"augmentation {name} range must be 0 < low <= high, got {lo}, {hi}"
                )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Augmentation:
        return cls(
            orientation=bool(data["orientation"]),
            sharpen=tuple(data["sharpen"]),  # type: ignore[arg-type]
            contrast=tuple(data["contrast"]),  # type: ignore[arg-type]
            noise=tuple(data["noise"]),  # type: ignore[arg-type]
            texture=tuple(data.get("texture", (0.0, 0.0))),  # type: ignore[arg-type]
        )


def _log_uniform(bounds: tuple[float, float], n: int, generator: torch.Generator) -> Tensor:
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    return torch.exp(lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64))


def augment_pairs(
    low: Tensor, normal: Tensor, aug: Augmentation, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """low, normal: [B, 1, H, W] HU (square patches) -> augmented copies, same shape.
    ``generator`` is a CPU generator, so a run's draws do not depend on the device."""
    count = normal.shape[0]
    scale = _log_uniform(aug.contrast, count, generator).to(normal)[:, None, None, None]
    gain = _log_uniform(aug.noise, count, generator).to(normal)[:, None, None, None]
    amount = aug.sharpen[0] + (aug.sharpen[1] - aug.sharpen[0]) * torch.rand(
        count, generator=generator, dtype=torch.float64
    )
    amount = amount.to(normal)[:, None, None, None]
    noise = low - normal
    if aug.texture[1] > 0:
        lo, hi = aug.texture
        sigma = lo + (hi - lo) * torch.rand(count, generator=generator, dtype=torch.float64)
        noise = apodize(noise, sigma)
    noise = torch.where(is_padding(normal), 0.0, noise)  # padding stays noise-free (hu.py)
    if aug.sharpen[1] > 0:
        normal = normal + amount * (normal - gaussian_blur(normal, SHARPEN_SIGMA))
    normal = AIR_HU + scale * (normal - AIR_HU)
    low = normal + gain * noise
    if aug.orientation:
        turns = torch.randint(0, 4, (count,), generator=generator).tolist()
        flips = torch.randint(0, 2, (count,), generator=generator).tolist()
        low = torch.stack(
            [
                _orient(image, turn, flip)
                for image, turn, flip in zip(low, turns, flips, strict=True)
            ]
        )
        normal = torch.stack(
            [
                _orient(image, turn, flip)
                for image, turn, flip in zip(normal, turns, flips, strict=True)
            ]
        )
    return low.clamp(HU_MIN, HU_MAX), normal.clamp(HU_MIN, HU_MAX)


def _orient(image: Tensor, turns: int, flip: int) -> Tensor:
    image = torch.rot90(image, turns, dims=(-2, -1))
    return torch.flip(image, dims=(-1,)) if flip else image
