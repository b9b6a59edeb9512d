"""The synthetic phantom as a DICOM CT series, so the tools run with no patient data."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from pydicom.dataset import Dataset

from manas_infer import __version__
from manas_infer.data.derived import add_file_meta, derived_uid, encode_hu, write_series_folder
from manas_infer.data.phantom import (
    phantom_volume,
    pixel_spacing_mm,
    slice_positions,
    slice_spacing_mm,
)
from manas_infer.data.series import CT_IMAGE_STORAGE


class _SeriesUids(NamedTuple):
    """The UIDs every slice of one phantom series shares."""

    study: str
    series: str
    frame_of_reference: str


def phantom_datasets(
    n_slices: int = 32, size: int = 512, seed: int = 0, fov_mm: float = 400.0
) -> Iterator[Dataset]:
    """One CT Image Storage dataset per phantom slice, stored like a scanner's output
    (12-bit unsigned, intercept -1024); UIDs follow from the seed and the shape."""
    volume = phantom_volume(n_slices, size, seed, fov_mm)
    key = f"phantom:{seed}:{n_slices}:{size}:{fov_mm}"
    uids = _SeriesUids(
        study=derived_uid(key, "study"),
        series=derived_uid(key, "series"),
        frame_of_reference=derived_uid(key, "frame-of-reference"),
    )
    now = dt.datetime.now()
    for i, z in enumerate(slice_positions(n_slices)):
        ds = _series_header(uids, seed, now)
        ds.SOPInstanceUID = derived_uid(key, "instance", str(i))
        ds.InstanceNumber = i + 1
        _place(ds, float(z), n_slices, size, fov_mm)
        _pixel_format(ds, size)
        ds.PixelData = encode_hu(volume[i], ds).tobytes()
        add_file_meta(ds)
        yield ds


def _series_header(uids: _SeriesUids, seed: int, now: dt.datetime) -> Dataset:
    """What every slice of the series shares: patient, study, series, equipment and the
    labels that say it is synthetic."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.PatientName = "PHANTOM^SYNTHETIC"
    ds.PatientID = f"PHANTOM-{seed}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids.study, uids.series
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = "Synthetic phantom"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"Synthetic phantom, seed {seed}"
    ds.BodyPartExamined = "CHESTABDOMEN"
    ds.PatientPosition = "HFS"
    ds.Manufacturer = "manas-infer"
    ds.ManufacturerModelName = "synthetic phantom"
    ds.SoftwareVersions = __version__
    ds.AcquisitionNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImageComments = "Synthetic phantom image, not a patient"
    ds.BurnedInAnnotation = "NO"
    ds.KVP = "120"
    return ds


def _place(ds: Dataset, z: float, n_slices: int, size: int, fov_mm: float) -> None:
    """The image plane of the slice at ``z`` (in [0, 1]): axial, the pixel grid centred."""
    spacing = pixel_spacing_mm(size, fov_mm)
    thickness = slice_spacing_mm(n_slices)
    corner = -fov_mm / 2 + spacing / 2
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    # z = 0 is the thorax end: superior, so the highest table position (LPS: +z up).
    location = -z * thickness * max(n_slices - 1, 1)
    ds.ImagePositionPatient = [corner, corner, round(location, 3)]
    ds.SliceLocation = round(location, 3)
    ds.PixelSpacing = [spacing, spacing]
    ds.SliceThickness = round(thickness, 3)


def _pixel_format(ds: Dataset, size: int) -> None:
    """Stored like a scanner's output: 12-bit unsigned with intercept -1024, and a
    soft-tissue window."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400


def write_phantom_series(
    out_dir: Path | str,
    n_slices: int = 32,
    size: int = 512,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the phantom as a DICOM series folder (atomically, like every output)."""
    out_dir = Path(out_dir)
    write_series_folder(out_dir, phantom_datasets(n_slices, size, seed), overwrite)
    return out_dir
