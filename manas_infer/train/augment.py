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
  soft-tissue kernels make it a coarse mottle that a net never shown it leaves in place;
- lesions: small, faint round lesions inserted into the anatomy (``insert_lesions``), the
  same in both images of the pair. Trained with MSE, a denoiser removes what it cannot tell
  from noise, and a few training patients hold few small faint lesions, so the first nets
  flattened them: at the LCD phantom's 10 % dose the 5 % model lowered the CHO AUC of its
  4 mm, 14 HU rod at every strength from 50 % (bench/results/physics-lcd.md). Inserted
  lesions put the cost of erasing one into the loss.

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
    # Mean number of inserted lesions per patch (Poisson); 0 is off (the runs made before it).
    lesions: float = 0.0

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
        if not 0 <= self.lesions <= 20:
            raise ValueError(f"augmentation lesions must be 0-20 per patch, got {self.lesions}")

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
            lesions=float(data.get("lesions", 0.0)),
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
    if aug.lesions > 0:
        normal = insert_lesions(normal, aug.lesions, generator)
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


# Inserted lesions: diameters and contrasts of the low-contrast lesions a radiologist looks
# for (liver and brain metastases, nodules in soft tissue: a few mm to a centimetre, a few
# to some tens of HU), darker or brighter than their surroundings, with a partial-volume edge.
LESION_DIAMETER_PX = (3.0, 14.0)  # uniform; about 2-12 mm at 0.7-0.9 mm pixels
LESION_CONTRAST_HU = (4.0, 40.0)  # log-uniform magnitude, either sign
LESION_EDGE_PX = 0.6  # the logistic edge's scale, about a native pixel's blur
LESION_TISSUE_HU = (-150.0, 250.0)  # only where the centre lies in soft tissue (not air, bone)


def insert_lesions(normal: Tensor, mean_count: float, generator: torch.Generator) -> Tensor:
    """``normal`` [B, 1, H, W] HU with a Poisson(``mean_count``) number of round lesions added
    to each image, each centred on soft tissue (a draw that lands elsewhere is dropped).
    Written here: no library inserts lesions into CT patches."""
    count, _, height, width = normal.shape
    numbers = torch.poisson(
        torch.full((count,), float(mean_count), dtype=torch.float64), generator=generator
    ).long()
    rows = torch.arange(height, dtype=normal.dtype, device=normal.device)[:, None]
    cols = torch.arange(width, dtype=normal.dtype, device=normal.device)[None, :]
    out = normal.clone()
    tissue = ~is_padding(normal)  # scanner padding stays the constant it is
    lo_c, hi_c = (math.log(v) for v in LESION_CONTRAST_HU)
    for index, number in enumerate(numbers.tolist()):
        draws = torch.rand((number, 5), generator=generator, dtype=torch.float64).tolist()
        for u_size, u_row, u_col, u_contrast, u_sign in draws:
            radius = (
                LESION_DIAMETER_PX[0] + (LESION_DIAMETER_PX[1] - LESION_DIAMETER_PX[0]) * u_size
            ) / 2
            row, col = u_row * (height - 1), u_col * (width - 1)
            centre = float(normal[index, 0, round(row), round(col)])
            if not LESION_TISSUE_HU[0] <= centre <= LESION_TISSUE_HU[1]:
                continue
            contrast = math.exp(lo_c + (hi_c - lo_c) * u_contrast) * (1 if u_sign < 0.5 else -1)
            distance = torch.sqrt((rows - row) ** 2 + (cols - col) ** 2)
            profile = torch.sigmoid((radius - distance) / LESION_EDGE_PX)
            out[index, 0] += contrast * profile * tissue[index, 0]
    return out


def _orient(image: Tensor, turns: int, flip: int) -> Tensor:
    image = torch.rot90(image, turns, dims=(-2, -1))
    return torch.flip(image, dims=(-1,)) if flip else image
