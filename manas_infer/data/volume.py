"""CT volumes stored as files (NIfTI, MetaImage, NRRD), read through SimpleITK.

Training data often comes as volumes rather than DICOM (challenge data sets, phantoms);
they enter the same pipeline as ``CTVolume`` objects with the same few properties that
``CTSeries`` offers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from manas_infer.errors import InputProblem
from manas_infer.hashing import text_sha256

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mhd", ".mha", ".nrrd")


def is_volume_file(path: Path) -> bool:
    return path.name.lower().endswith(VOLUME_SUFFIXES)


@dataclass
class CTVolume:
    """A CT volume file: slices [S, H, W] in HU after ``hu_offset`` is added."""

    path: Path
    hu_offset: float = 0.0
    patient_key: str = ""

    def __post_init__(self) -> None:
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(self.path))
            reader.ReadImageInformation()
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
            raise InputProblem(self.path, f"cannot be read as a volume ({first})") from None
        size = reader.GetSize()
        if len(size) not in (2, 3) or reader.GetNumberOfComponents() != 1:
            raise InputProblem(self.path, f"not a greyscale 2-D/3-D volume (size {size})")
        self._size = size
        self._spacing = reader.GetSpacing()
        if not self.patient_key:
            self.patient_key = self.path.name.split(".")[0]

    @property
    def series_uid(self) -> str:
        return f"file:{self.path.resolve()}"

    @property
    def n_slices(self) -> int:
        return int(self._size[2]) if len(self._size) == 3 else 1

    @property
    def shape(self) -> tuple[int, int]:
        return int(self._size[1]), int(self._size[0])

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """(row spacing, column spacing) in mm."""
        return float(self._spacing[1]), float(self._spacing[0])

    @property
    def patient_hash(self) -> str:
        return text_sha256(self.patient_key, 12)

    @property
    def description(self) -> str:
        return self.path.name

    def slice_uid(self, index: int) -> str:
        return f"{self.series_uid}#{index}"

    def read_hu(self) -> np.ndarray:
        """float32 [S, H, W] in HU."""
        try:
            array = sitk.GetArrayFromImage(sitk.ReadImage(str(self.path)))
        except RuntimeError as exc:
            raise InputProblem(self.path, f"cannot read voxels ({exc})") from None
        if array.ndim == 2:
            array = array[None]
        return array.astype(np.float32) + np.float32(self.hu_offset)
