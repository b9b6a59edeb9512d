"""The paper's low-dose model (SPEC section 2): Poisson photon noise plus Gaussian electronic
noise on parallel-beam projections of the normal-dose slice, brought back by FBP.

HU -> attenuation per pixel -> line integrals y -> counts Poisson(p exp(-y)) + N(0, sigma_e^2)
-> y_hat = ln(p / counts). The default ``insertion`` mode adds FBP(y_hat - y) to the normal-
dose image, so only noise is added and the image keeps its own resolution and texture;
``reconstruction`` returns FBP(y_hat) itself, with the blur and artefacts of this projector.
Either way scanner padding outside the reconstruction circle (``hu.is_padding``) comes back
as it went in: a scanner writes that constant at every dose, with no noise in it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from manas_infer.hu import is_padding
from manas_infer.simulate.projector import ParallelBeamProjector

# Linear attenuation of water at ~70 keV, the effective energy of a 120 kVp CT beam.
MU_WATER_PER_MM = 0.0192
# HU used to pad non-square slices to a square: air, so it adds no attenuation.
PAD_HU = -1024.0
# Counts are floored at one photon before the logarithm: electronic noise can make a starved
# detector read <= 0, which has no logarithm, and a floor far below one photon would turn a
# single starved ray into a huge line integral that streaks across the whole FBP image.
COUNT_FLOOR = 1.0

Mode = Literal["insertion", "reconstruction"]
MODES: tuple[str, ...] = ("insertion", "reconstruction")


def _finite_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class DoseSettings:
    """What to simulate; recorded in manifests and series descriptions via ``to_dict``."""

    dose_percent: float  # 5.0 means 5 % of the normal dose
    p0: float = 1e6  # incident photons per detector bin at full dose
    electronic_variance: float = 10.0  # sigma_e^2, in photon counts squared
    n_views: int = 720  # projections over [0, 180) degrees
    mode: Mode = "insertion"
    mu_water: float = MU_WATER_PER_MM  # per mm

    def __post_init__(self) -> None:
        dose = _finite_number("dose_percent", self.dose_percent)
        if not 0.0 < dose <= 100.0:
            raise ValueError(
                f"dose_percent must be in (0, 100] (5.0 means 5 % of the normal dose), "
                f"got {self.dose_percent!r}"
            )
        p0 = _finite_number("p0", self.p0)
        if p0 <= 0.0:
            raise ValueError(f"p0 (incident photons at full dose) must be > 0, got {self.p0!r}")
        var = _finite_number("electronic_variance", self.electronic_variance)
        if var < 0.0:
            raise ValueError(f"electronic_variance must be >= 0, got {self.electronic_variance!r}")
        views = self.n_views
        if isinstance(views, bool) or not isinstance(views, (int, np.integer)) or views < 1:
            raise ValueError(f"n_views must be a positive integer, got {self.n_views!r}")
        mode = getattr(self.mode, "value", self.mode)  # accept a str-valued Enum from the CLI
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        mu = _finite_number("mu_water", self.mu_water)
        if mu <= 0.0:
            raise ValueError(f"mu_water (per mm) must be > 0, got {self.mu_water!r}")
        # Store plain Python types so manifests serialise and settings compare equal.
        for name, value in (
            ("dose_percent", dose),
            ("p0", p0),
            ("electronic_variance", var),
            ("n_views", int(views)),
            ("mode", str(mode)),
            ("mu_water", mu),
        ):
            object.__setattr__(self, name, value)

    @property
    def incident_photons(self) -> float:
        """p = dose * p0: photons per bin at this dose."""
        return self.dose_percent / 100.0 * self.p0

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON record of the settings."""
        return asdict(self)


def attenuation_per_pixel(
    hu: torch.Tensor,
    pixel_spacing_mm: float | torch.Tensor,
    mu_water: float = MU_WATER_PER_MM,
) -> torch.Tensor:
    """HU -> linear attenuation times pixel length (unitless), clipped at 0.

    The clip matters: scanners pad outside the field of view with values down to -3024 HU,
    which the linear HU formula would turn into negative attenuation (negative projections).
    """
    return (mu_water * (1.0 + hu / 1000.0)).clamp_min(0.0) * pixel_spacing_mm


Generators = torch.Generator | Sequence[torch.Generator | None] | None


class LowDoseSimulator:
    """Simulates low-dose slices from normal-dose HU slices on one device.

    Pixels are assumed square (the row spacing is used). One projector is kept per image size.
    """

    def __init__(self, settings: DoseSettings, device: str | torch.device = "cpu") -> None:
        self.settings = settings
        self.device = torch.device(device)
        self._projectors: dict[int, ParallelBeamProjector] = {}

    def projector(self, size: int) -> ParallelBeamProjector:
        """The cached projector for ``size x size`` images."""
        if size not in self._projectors:
            self._projectors[size] = ParallelBeamProjector(
                size, self.settings.n_views, device=self.device
            )
        return self._projectors[size]

    def _spacing(self, pixel_spacing_mm: float | torch.Tensor, batch: int) -> torch.Tensor:
        # Checked where the values are: a spacing already on the GPU (training's fresh noise,
        # every batch) is trusted, as its split's spacings were checked when prepared;
        # checking it here would stall the GPU twice a batch.
        on_gpu = isinstance(pixel_spacing_mm, torch.Tensor) and pixel_spacing_mm.is_cuda
        spacing = torch.as_tensor(pixel_spacing_mm, dtype=torch.float32, device=self.device)
        spacing = spacing.reshape(-1)
        if spacing.numel() == 1:
            spacing = spacing.expand(batch)
        if spacing.numel() != batch:
            raise ValueError(
                f"pixel_spacing_mm must be one value or one per slice ({batch}), "
                f"got {spacing.numel()}"
            )
        if not on_gpu and (not bool(torch.isfinite(spacing).all()) or bool((spacing <= 0).any())):
            raise ValueError(f"pixel_spacing_mm must be finite and > 0, got {pixel_spacing_mm!r}")
        return spacing

    def _noisy_delta(self, y: torch.Tensor, generators: Generators) -> torch.Tensor:
        """y_hat - y for line integrals ``y`` [B, views, bins], computed in float64.

        Differencing in float64 keeps the small noise exact next to ln(p) ~ 11, and counts
        of at least COUNT_FLOOR keep y_hat finite even where exp(-y) underflows.
        """
        dtype = torch.float32 if y.device.type == "mps" else torch.float64
        y = y.to(dtype)
        p = self.settings.incident_photons
        sigma = math.sqrt(self.settings.electronic_variance)

        def counts(expected: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
            c = torch.poisson(expected, generator=gen)
            if sigma > 0.0:
                noise = torch.randn(
                    expected.shape, generator=gen, device=expected.device, dtype=dtype
                )
                c = c + sigma * noise
            return c

        expected = p * torch.exp(-y)
        if generators is None or isinstance(generators, torch.Generator):
            measured = counts(expected, generators)
        else:
            gens = list(generators)
            if len(gens) != y.shape[0]:
                raise ValueError(f"need one generator per slice ({y.shape[0]}), got {len(gens)}")
            measured = torch.stack([counts(e, g) for e, g in zip(expected, gens, strict=True)])
        y_hat = math.log(p) - torch.log(measured.clamp_min(COUNT_FLOOR))
        return (y_hat - y).to(torch.float32)

    def simulate(
        self,
        hu: torch.Tensor,
        pixel_spacing_mm: float | torch.Tensor,
        generator: Generators = None,
    ) -> torch.Tensor:
        """Low-dose HU ``[B, H, W]`` (or ``[H, W]``) from normal-dose HU of the same shape.

        Runs on the simulator's device and returns float32 on the input's device. The
        generator (on the simulator's device) makes it reproducible; a sequence gives each
        slice its own stream, so a slice's noise does not depend on its batch.
        """
        if not isinstance(hu, torch.Tensor) or not hu.is_floating_point():
            raise TypeError("hu must be a floating-point torch.Tensor in HU")
        if hu.dim() not in (2, 3):
            raise ValueError(f"hu must be [H, W] or [B, H, W], got shape {tuple(hu.shape)}")
        single = hu.dim() == 2
        x = (hu[None] if single else hu).to(device=self.device, dtype=torch.float32)
        batch, height, width = x.shape
        spacing = self._spacing(pixel_spacing_mm, batch)[:, None, None]
        side = max(height, width)
        top, left = (side - height) // 2, (side - width) // 2
        if side != height or side != width:
            pad = (left, side - width - left, top, side - height - top)
            x = F.pad(x, pad, value=PAD_HU)
        s = self.settings
        mu_px = attenuation_per_pixel(x, spacing, s.mu_water)
        proj = self.projector(side)
        y = proj.forward(mu_px)
        delta = self._noisy_delta(y, generator)
        hu_per_mu_px = 1000.0 / (s.mu_water * spacing)
        if s.mode == "insertion":
            # FBP is linear: FBP(y_hat) - FBP(y) = FBP(y_hat - y), one reconstruction not two.
            out = x + proj.fbp(delta) * hu_per_mu_px
        else:
            out = proj.fbp(y + delta) * hu_per_mu_px - 1000.0
        out = torch.where(is_padding(x), x, out)
        out = out[:, top : top + height, left : left + width]
        out = out[0] if single else out
        return out.to(hu.device)

    def simulate_numpy(
        self,
        hu: np.ndarray,
        pixel_spacing_mm: float,
        seed: int | None = None,
        batch_size: int = 4,
    ) -> np.ndarray:
        """NumPy convenience: ``[H, W]`` or ``[S, H, W]`` HU in, float32 low-dose HU out.

        Slices go through in batches of ``batch_size``; with a seed each slice draws from its
        own generator (seeded from ``seed`` and its index), so the result does not depend
        on the batch size.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        arr = np.asarray(hu, dtype=np.float32)
        if arr.ndim not in (2, 3):
            raise ValueError(f"hu must be [H, W] or [S, H, W], got shape {arr.shape}")
        stack = arr[None] if arr.ndim == 2 else arr
        out = np.empty_like(stack)
        for start in range(0, stack.shape[0], batch_size):
            stop = min(start + batch_size, stack.shape[0])
            gens: list[torch.Generator | None] | None = None
            if seed is not None:
                gens = [self._slice_generator(seed, i) for i in range(start, stop)]
            chunk = torch.from_numpy(np.ascontiguousarray(stack[start:stop]))
            out[start:stop] = self.simulate(chunk, pixel_spacing_mm, gens).cpu().numpy()
        return out[0] if arr.ndim == 2 else out

    def _slice_generator(self, seed: int, index: int) -> torch.Generator:
        state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0]
        return torch.Generator(device=self.device).manual_seed(int(state) & (2**63 - 1))
