"""The one derived-series writer: new slices in HU -> a conformant derived CT series.

Used by ``simulate`` now and by ``denoise`` and the DICOM node: one place decides which
attributes are kept from the source, which are new, and how pixels are encoded (SPEC
section 4). Output is classic CT Image Storage in explicit VR little endian, written into a
hidden temporary folder and renamed into place at the end, so an interrupted run never
leaves a half series that looks complete.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from manas_infer import __version__
from manas_infer.data.header import check_header, rescale_of
from manas_infer.data.series import (
    CT_IMAGE_STORAGE,
    CTSeries,
    SliceHeader,
    is_series_uid,
    sop_class_of,
    sop_instance_of,
)
from manas_infer.errors import InputProblem

NOT_FOR_DIAGNOSIS = "Not for primary diagnosis"

# Body parts (DICOM defined terms) that are not paired: Laterality must then be absent.
# For any other or unknown body part Laterality is Type 2C-required, so it is left empty.
_UNPAIRED_BODY_PARTS = {
    "HEAD",
    "SKULL",
    "BRAIN",
    "NECK",
    "HEADNECK",
    "CHEST",
    "THORAX",
    "HEART",
    "ABDOMEN",
    "PELVIS",
    "ABDOMENPELVIS",
    "CHESTABDOMEN",
    "CHESTABDPELVIS",
    "WHOLEBODY",
    "SPINE",
    "CSPINE",
    "TSPINE",
    "LSPINE",
    "SSPINE",
    "COCCYX",
    "LIVER",
    "PANCREAS",
    "AORTA",
}

# Attributes copied from each source slice, by module of the CT Image IOD. Everything else,
# private tags included, is left behind: a derived image must not claim what it is not.
KEPT_BY_MODULE = {
    "Patient": "PatientName PatientID IssuerOfPatientID PatientBirthDate PatientSex "
    "PatientAge PatientSize PatientWeight PatientIdentityRemoved DeidentificationMethod "
    "DeidentificationMethodCodeSequence",
    "General Study": "StudyInstanceUID StudyDate StudyTime ReferringPhysicianName StudyID "
    "AccessionNumber StudyDescription",
    # The series itself is new; these describe the acquisition it comes from.
    "General Series": "Modality BodyPartExamined PatientPosition ProtocolName Laterality",
    "Frame of Reference": "FrameOfReferenceUID PositionReferenceIndicator",
    # The scanner; our own equipment goes into ContributingEquipmentSequence.
    "General Equipment": "Manufacturer InstitutionName StationName ManufacturerModelName "
    "DeviceSerialNumber SoftwareVersions",
    "General Image": "InstanceNumber PatientOrientation ContentDate ContentTime "
    "AcquisitionNumber AcquisitionDate AcquisitionTime AcquisitionDateTime "
    "LossyImageCompression LossyImageCompressionRatio LossyImageCompressionMethod",
    "Image Plane": "PixelSpacing ImageOrientationPatient ImagePositionPatient SliceThickness "
    "SpacingBetweenSlices SliceLocation",
    "Image Pixel": "Rows Columns BitsAllocated BitsStored HighBit PixelRepresentation "
    "PixelPaddingValue",
    "CT Image": "RescaleIntercept RescaleSlope RescaleType KVP DataCollectionDiameter "
    "ReconstructionDiameter DistanceSourceToDetector DistanceSourceToPatient "
    "GantryDetectorTilt TableHeight RotationDirection ExposureTime XRayTubeCurrent Exposure "
    "FilterType GeneratorPower FocalSpots ConvolutionKernel RevolutionTime "
    "SingleCollimationWidth TotalCollimationWidth TableSpeed TableFeedPerRotation "
    "SpiralPitchFactor CTDIvol CTDIPhantomTypeCodeSequence ReconstructionAlgorithm",
    "VOI LUT": "WindowCenter WindowWidth WindowCenterWidthExplanation",
    "SOP Common": "SpecificCharacterSet TimezoneOffsetFromUTC",
}
_KEEP = tuple(keyword for names in KEPT_BY_MODULE.values() for keyword in names.split())


def _code(value: str, meaning: str, scheme: str = "DCM") -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


@dataclass(frozen=True)
class Derivation:
    """What produced a derived series; it names it, describes it and seeds its UIDs.

    ``identity`` must change whenever the output would (model file hash, simulator
    settings and seed), and stay the same otherwise: UIDs are hashed from it and from the
    source UIDs, so processing the same series twice yields the same UIDs and a PACS can
    deduplicate the resend.
    """

    identity: str
    series_description: str  # shown in the viewer's series list, at most 64 characters
    derivation_description: str  # what was done, for the DerivationDescription attribute
    series_number_offset: int = 1000
    equipment_model: str = "manas-infer"
    contribution: str = "AI denoising"


@dataclass(frozen=True)
class WrittenSeries:
    """Where a derived series went and what it is called."""

    folder: Path
    series_uid: str
    n_slices: int


def derived_uid(*parts: str) -> str:
    """A deterministic UID from the given strings (pydicom hashes them under its root)."""
    return str(generate_uid(entropy_srcs=["manas-infer", *parts]))


def encode_hu(hu: np.ndarray, source: Dataset) -> np.ndarray:
    """HU -> stored values in the source's pixel format, clipped to what it can hold."""
    # The reader's own check: a slope of 0 in the header is refused, never read as 1.
    slope, intercept = rescale_of(source, Path(str(getattr(source, "filename", "") or "?")))
    bits_stored = int(source.BitsStored)
    if int(source.PixelRepresentation) == 1:
        low, high = -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1
        dtype = np.int16 if int(source.BitsAllocated) == 16 else np.int32
    else:
        low, high = 0, 2**bits_stored - 1
        dtype = np.uint16 if int(source.BitsAllocated) == 16 else np.uint32
    stored = np.rint((hu.astype(np.float64) - intercept) / slope)
    return np.clip(stored, low, high).astype(dtype)


def _slice_dataset(
    series: CTSeries,
    index: int,
    hu: np.ndarray,
    derivation: Derivation,
    series_uid: str,
    now: dt.datetime,
) -> Dataset:
    """The derived dataset of slice ``index``: the source's kept attributes, completed to a
    valid CT image, marked as derived, referencing its source, with ``hu`` as pixels."""
    header = series.slices[index]
    # Rescale and geometry are copied as they are: a value the reader would refuse must not
    # reach the output (callers normally pass series from ``scan``, which checked them).
    check_header(header.dataset, header.path)
    ds = _kept_attributes(header.dataset, header.path)
    _complete_required(ds, series.series_uid)
    _identify(ds, header.dataset, index, derivation, series_uid, now)
    _mark_derived(ds, derivation)
    _reference_source(ds, series, header)
    ds.ContributingEquipmentSequence = Sequence([_our_equipment(derivation, now)])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = _stored_pixels(hu, header.dataset, header.path).tobytes()
    add_file_meta(ds)
    return ds


def _kept_attributes(src: Dataset, path: Path) -> Dataset:
    """The attributes of ``KEPT_BY_MODULE`` that the source has, and nothing else."""
    ds = Dataset()
    for keyword in _KEEP:
        if keyword in src:
            ds[keyword] = src[keyword]
    if "RescaleSlope" not in ds and "RescaleIntercept" not in ds:
        ds.RescaleSlope, ds.RescaleIntercept = "1", "0"  # stored values were HU already (Type 1)
    if int(src.BitsAllocated) not in (16, 32):
        raise InputProblem(path, f"BitsAllocated {src.BitsAllocated}")
    return ds


# Type 2 attributes of the CT Image IOD: present, and empty when the source lacks them.
_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "PositionReferenceIndicator",
    "Manufacturer",
    "KVP",
    "AcquisitionNumber",
)


def _complete_required(ds: Dataset, source_series_uid: str) -> None:
    """Type 1 identifiers that real sources sometimes lack, derived so output stays valid;
    Type 2 attributes present (empty when unknown); Laterality where it is Type 2C."""
    if not ds.get("StudyInstanceUID"):
        ds.StudyInstanceUID = derived_uid("study", source_series_uid)
    if not ds.get("FrameOfReferenceUID"):
        ds.FrameOfReferenceUID = derived_uid("frame-of-reference", source_series_uid)
    for keyword in _TYPE_2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    body_part = str(ds.get("BodyPartExamined", "") or "").upper()
    if "Laterality" not in ds and body_part not in _UNPAIRED_BODY_PARTS:
        ds.Laterality = ""  # Type 2C and unknown to us


def _identify(
    ds: Dataset,
    src: Dataset,
    index: int,
    derivation: Derivation,
    series_uid: str,
    now: dt.datetime,
) -> None:
    """The new instance's UIDs, series number and description, and its creation time."""
    stamp_date, stamp_time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = derived_uid(derivation.identity, "instance", sop_instance_of(src))
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    source_number = int(src.get("SeriesNumber") or 0)
    ds.SeriesNumber = source_number + derivation.series_number_offset
    ds.SeriesDescription = derivation.series_description[:64]
    ds.SeriesDate, ds.SeriesTime = stamp_date, stamp_time
    ds.InstanceCreationDate, ds.InstanceCreationTime = stamp_date, stamp_time
    if "InstanceNumber" not in ds:
        ds.InstanceNumber = index + 1
    if "ContentDate" not in ds:
        ds.ContentDate, ds.ContentTime = stamp_date, stamp_time


def _mark_derived(ds: Dataset, derivation: Derivation) -> None:
    """What a viewer shows to say this image is processed and not for diagnosis."""
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.DerivationDescription = derivation.derivation_description[:1024]
    ds.ImageComments = f"AI-processed by manas-infer {__version__}. {NOT_FOR_DIAGNOSIS}."
    ds.BurnedInAnnotation = "NO"


def _reference_source(ds: Dataset, series: CTSeries, header: SliceHeader) -> None:
    """The source image this one was made from, and (when it has a real UID) its series."""
    source_class = sop_class_of(header.dataset) or CT_IMAGE_STORAGE
    source_sop = header.sop_instance_uid
    source_item = Dataset()
    source_item.ReferencedSOPClassUID = source_class
    source_item.ReferencedSOPInstanceUID = source_sop
    source_item.PurposeOfReferenceCodeSequence = Sequence(
        [_code("121322", "Source image for image processing operation")]
    )
    source_item.SpatialLocationsPreserved = "YES"
    ds.SourceImageSequence = Sequence([source_item])
    if not is_series_uid(series.series_uid):
        return
    instance = Dataset()
    instance.ReferencedSOPClassUID = source_class
    instance.ReferencedSOPInstanceUID = source_sop
    referenced = Dataset()
    referenced.SeriesInstanceUID = series.series_uid
    referenced.ReferencedInstanceSequence = Sequence([instance])
    ds.ReferencedSeriesSequence = Sequence([referenced])


def _our_equipment(derivation: Derivation, now: dt.datetime) -> Dataset:
    """The ContributingEquipmentSequence item naming manas-infer as processing equipment."""
    equipment = Dataset()
    equipment.PurposeOfReferenceCodeSequence = Sequence([_code("109102", "Processing Equipment")])
    equipment.Manufacturer = "manas-infer"
    equipment.ManufacturerModelName = derivation.equipment_model[:64]
    equipment.SoftwareVersions = __version__
    equipment.ContributionDateTime = now.strftime("%Y%m%d%H%M%S")
    equipment.ContributionDescription = derivation.contribution[:1024]
    return equipment


def _stored_pixels(hu: np.ndarray, src: Dataset, path: Path) -> np.ndarray:
    """``hu`` in the source's pixel format; padding outside the field of view stays padding,
    since it is not anatomy to denoise."""
    stored = encode_hu(hu, src)
    padding = src.get("PixelPaddingValue")
    if padding is not None:
        original = pydicom.dcmread(path).pixel_array
        stored[original == padding] = padding
    return stored


def add_file_meta(ds: Dataset) -> None:
    """File meta for explicit VR little endian, the encoding every output uses."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_series_folder(
    out_dir: Path,
    datasets: Iterable[Dataset],
    overwrite: bool = False,
    on_slice: Callable[[], None] | None = None,
) -> int:
    """Write datasets as ``CT00001.dcm``... so the folder appears only once complete.

    Files go into a hidden sibling folder, each fsynced, then the folder is renamed into
    place. An existing ``out_dir`` is refused unless ``overwrite``. Returns the file count.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise InputProblem(out_dir, "output folder exists (use --overwrite to replace it)")
    partial = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    count = 0
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        for count, ds in enumerate(datasets, start=1):
            with open(partial / f"CT{count:05d}.dcm", "wb") as f:
                ds.save_as(f, enforce_file_format=True)
                f.flush()
                os.fsync(f.fileno())
            if on_slice is not None:
                on_slice()
        fsync_dir(partial)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(partial, out_dir)
        fsync_dir(out_dir.parent)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        reason = exc.strerror or str(exc)
        # Chained, so the node can tell a full disk (it waits and retries) from the rest.
        raise InputProblem(out_dir, f"cannot write the series ({reason})") from exc
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return count


def write_derived_series(
    series: CTSeries,
    hu: np.ndarray,
    derivation: Derivation,
    out_dir: Path,
    overwrite: bool = False,
    on_slice: Callable[[], None] | None = None,
) -> WrittenSeries:
    """Write ``hu`` [S, H, W] (in the series' slice order) as a derived series in ``out_dir``."""
    if hu.shape != (series.n_slices, *series.shape):
        expected = (series.n_slices, *series.shape)
        raise ValueError(f"pixels {hu.shape} do not match the series {expected}")
    series_uid = derived_uid(derivation.identity, "series", series.series_uid)
    now = dt.datetime.now()
    datasets = (
        _slice_dataset(series, i, hu[i], derivation, series_uid, now)
        for i in range(series.n_slices)
    )
    count = write_series_folder(Path(out_dir), datasets, overwrite, on_slice)
    return WrittenSeries(Path(out_dir), series_uid, count)
