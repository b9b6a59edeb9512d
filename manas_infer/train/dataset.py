"""Training data: normal-dose CT -> patient-wise split -> simulated low-dose pairs.

Protocol (paper Sec. 4.1, SPEC section 2): patients are split into training and test;
the training slices are split again into train-data and arch-data 7:1 (the paper: 350 and
50 of 400 images). Noise is simulated on each whole slice at its native resolution and
pixel size (the scanner's own geometry: that is where photon counts are physical), then
the pair is brought to the training size in one of two ways:
- ``resize`` (the paper): the whole slice, padded to square and resized to size x size;
- ``patch`` (CPU presets): size x size crops at native resolution, inside the body, which
  keep the noise texture the network will meet at inference time.

The pairs are cached on disk with a manifest (source UIDs, split, dose, simulator
settings); a second run with the same data and settings loads them instead of simulating.
The native normal-dose slices are cached too (int16 HU) so that ``FreshNoise`` can draw a
new realisation for every batch on the training device through the same code path.

This module is what a run reads: the spec, the views and the cache folder.
``train/prepare.py`` builds the cache.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from manas_infer.hu import HU_MIN
from manas_infer.simulate.dose import DoseSettings, LowDoseSimulator

SPLITS = ("train", "arch", "test")
CACHE_FORMAT = 3  # 3: patches cover air and lung too (patch_corners)


@dataclass(frozen=True)
class SplitConfig:
    """How patients and slices are divided."""

    test_patients: tuple[str, ...] = ()  # PatientIDs or folder names; empty: pick by seed
    n_test_patients: int = 1  # used when test_patients is empty
    arch_ratio: int = 7  # train-data : arch-data = arch_ratio : 1
    max_slices_per_patient: int | None = None  # evenly spaced subset; None: every slice
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch_ratio < 1:
            raise ValueError(f"arch ratio must be at least 1, got {self.arch_ratio}")
        if self.max_slices_per_patient is not None and self.max_slices_per_patient < 1:
            raise ValueError("max slices per patient must be at least 1")
        if not self.test_patients and self.n_test_patients < 1:
            raise ValueError("at least one test patient is needed")


@dataclass(frozen=True)
class DatasetSpec:
    """Everything that determines the cached pairs (and so the cache key)."""

    dose: DoseSettings
    size: int = 256
    split: SplitConfig = field(default_factory=SplitConfig)
    volume_hu_offset: float = 0.0  # added to volume files' values (LCD_CT: -1000)
    patch: bool = False  # native-resolution crops instead of resized whole slices
    patches_per_slice: int = 1

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"image size must be at least 16, got {self.size}")
        if self.patches_per_slice < 1:
            raise ValueError("patches per slice must be at least 1")

    def to_dict(self) -> dict:
        return {
            "dose": self.dose.to_dict(),
            "size": self.size,
            "split": asdict(self.split),
            "volume_hu_offset": self.volume_hu_offset,
            "patch": self.patch,
            "patches_per_slice": self.patches_per_slice,
        }


# --------------------------------------------------------------------------------------
# Resizing and noise


def to_training_size(hu: torch.Tensor, size: int) -> tuple[torch.Tensor, float]:
    """[B, H, W] HU -> [B, size, size]: pad to square with air below the scanner's range,
    then an antialiased bilinear resize (a proper low-pass resampler, on any device).

    Returns the resized slices and the factor by which the pixel size grows.
    """
    _, h, w = hu.shape
    side = max(h, w)
    if h != w:
        top, left = (side - h) // 2, (side - w) // 2
        hu = F.pad(hu, (left, side - w - left, top, side - h - top), value=HU_MIN)
    if side == size:
        return hu, 1.0
    resized = F.interpolate(
        hu[:, None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )[:, 0]
    return resized, side / size


def pad_to_square(hu: torch.Tensor) -> torch.Tensor:
    """[B, H, W] -> [B, M, M], M = max(H, W), padded with air below the scanner's range
    (attenuation 0, so projections and noise are unchanged)."""
    side = max(hu.shape[-2:])
    return to_training_size(hu, side)[0]


def patch_corners(normal: np.ndarray, size: int, count: int, rng: np.random.Generator):
    """``count`` top-left corners of size x size crops of one square slice, on the body.

    Random among 32 candidate crops that are at least a third tissue (> -500 HU), so patches
    cover the body's edges, air and lung as well as its inside: the first real run took only
    the most-tissue crops of an abdomen and its net then added 124 HU of bias to the air and
    lung of a chest. Slices with too few such crops fall back to the most-tissue ones.
    """
    side = normal.shape[-1]
    if side < size:
        raise ValueError(f"a {size}-pixel patch does not fit a {side}-pixel slice")
    candidates = rng.integers(0, side - size + 1, size=(32, 2))
    tissue = np.array(
        [
            float((normal[row : row + size, col : col + size] > -500).mean())
            for row, col in candidates
        ]
    )
    on_body = np.flatnonzero(tissue >= 1 / 3)
    if len(on_body) >= count:
        return candidates[rng.choice(on_body, size=count, replace=False)]
    return candidates[np.argsort(tissue, kind="stable")[::-1][:count]]


def training_views(square: torch.Tensor, size: int, corners: torch.Tensor | None) -> torch.Tensor:
    """Square native slices [B, M, M] -> the network's inputs [B, size, size]: resized
    whole slices (``corners`` None) or the crops at ``corners`` [B, 2]."""
    if corners is None:
        return to_training_size(square, size)[0]
    return torch.stack(
        [
            square[index, row : row + size, col : col + size]
            for index, (row, col) in enumerate(corners.tolist())
        ]
    )


class FreshNoise:
    """A new low-dose realisation of each batch on the training device, every call, so a
    network never sees the same noise twice (an option of the training loop). It simulates
    the native slice and then takes the same view as the cache did."""

    def __init__(self, spec: DatasetSpec, device: torch.device | str, seed: int = 0):
        self.spec = spec
        self.simulator = LowDoseSimulator(spec.dose, device=device)
        self.generator = torch.Generator(device=self.simulator.device).manual_seed(seed)

    def __call__(
        self, native: torch.Tensor, spacing_mm: torch.Tensor, corners: torch.Tensor | None
    ) -> torch.Tensor:
        """native: [B, M, M] HU on the device; spacing_mm: [B] -> low dose [B, 1, S, S]."""
        low = self.simulator.simulate(native, spacing_mm, generator=self.generator)
        return training_views(low, self.spec.size, corners)[:, None]


# --------------------------------------------------------------------------------------
# The cache


@dataclass
class PreparedDataset:
    """A cached dataset folder: ``normal.npy`` and ``low.npy`` [N, size, size] float32 HU,
    ``spacing.npy`` [N] (mm: the native pixel size of each pair's source slice, the one its
    noise was simulated at, whatever resizing came after), and ``manifest.json``; for fresh
    noise also ``native.npy`` (the square native slices, int16 HU), ``native_index.npy``
    (each pair's native slice) and, for patches, ``corners.npy``."""

    folder: Path
    manifest: dict
    reused: bool = False

    @classmethod
    def load(cls, folder: Path, reused: bool = True) -> PreparedDataset:
        manifest = json.loads((folder / "manifest.json").read_text())
        return cls(folder, manifest, reused)

    def indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: use one of {SPLITS}")
        return np.asarray(self.manifest["splits"][split], dtype=np.int64)

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(low, normal, spacing) of one split, loaded into memory."""
        idx = self.indices(split)
        return tuple(  # type: ignore[return-value]
            np.ascontiguousarray(np.load(self.folder / name, mmap_mode="r")[idx])
            for name in ("low.npy", "normal.npy", "spacing.npy")
        )

    def native(self, split: str) -> tuple[np.ndarray, np.ndarray | None] | None:
        """(native square normal-dose slices [n, M, M] HU, crop corners [n, 2] or None) of
        one split, for fresh noise; None when the slices had different matrix sizes."""
        if not (self.folder / "native.npy").is_file():
            return None
        idx = self.indices(split)
        which = np.load(self.folder / "native_index.npy")[idx]
        native = np.load(self.folder / "native.npy", mmap_mode="r")[which].astype(np.float32)
        corners_file = self.folder / "corners.npy"
        corners = np.load(corners_file)[idx] if corners_file.is_file() else None
        return native, corners

    def counts(self) -> dict[str, int]:
        return {split: len(self.manifest["splits"][split]) for split in SPLITS}


def evenly_spaced(n: int, limit: int | None) -> np.ndarray:
    """At most ``limit`` indices of ``range(n)``, evenly spread from the first to the last:
    the slices a run (``--max-slices``) or an evaluation keeps of a series."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))
