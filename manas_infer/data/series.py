"""The one CT series reader: a folder of files -> the DICOM CT series in it, sorted, in HU.

Every consumer (simulate, datasets, denoise, the DICOM node) goes through ``scan`` and
``CTSeries.read_hu`` so that grouping, slice order and rescaling are decided once.
Headers are read without pixel data; pixels are decoded only when asked for, through
pydicom's pixel handlers (pylibjpeg plugins for JPEG 2000, JPEG-LS, JPEG lossless, RLE).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from manas_infer.data.header import check_geometry, rescale_of
from manas_infer.errors import InputProblem
from manas_infer.hashing import text_sha256

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
# DICOMDIR and other non-image instances that can sit in a series folder.
_NOT_IMAGES = {"1.2.840.10008.1.3.10"}


def sop_class_of(ds: Dataset) -> str:
    """The SOP class, from the dataset or, when that is empty, from the file meta.

    Real data (the TotalSegmentator example) carries an empty SOPClassUID while its file
    meta names CT Image Storage.
    """
    value = str(ds.get("SOPClassUID", "") or "")
    if not value and hasattr(ds, "file_meta"):
        value = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    return value


def sop_instance_of(ds: Dataset) -> str:
    """The SOP instance UID, from the dataset or, when that is empty, from the file meta."""
    value = str(ds.get("SOPInstanceUID", "") or "")
    if not value and hasattr(ds, "file_meta"):
        value = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
    return value


# How a series key made without a SeriesInstanceUID begins (``series_key_of``).
NO_UID_PREFIX = "no-series-uid:"


def is_series_uid(key: str) -> bool:
    """True when a series key is the files' own SeriesInstanceUID, not a stand-in."""
    return not key.startswith(NO_UID_PREFIX)


def series_key_of(ds: Dataset, path: Path) -> str:
    """Group key: SeriesInstanceUID, or for files without one (real data has them) the
    folder, frame of reference and series number, which together stand for the series."""
    uid = str(ds.get("SeriesInstanceUID", "") or "")
    if uid:
        return uid
    parts = (path.parent, ds.get("FrameOfReferenceUID", ""), ds.get("SeriesNumber", ""))
    return NO_UID_PREFIX + "|".join(str(part) for part in parts)


def portable_series_key(key: str) -> str:
    """``series_key_of``'s key without this machine's path (a key without a
    SeriesInstanceUID names its folder's path): the folder's name only, for model cards."""
    if is_series_uid(key):
        return key
    folder, *rest = key.removeprefix(NO_UID_PREFIX).split("|")
    return "|".join([Path(folder).name, *rest])


def _sop_class_name(uid: str) -> str:
    return UID(uid).name if uid else "no SOP class"


@dataclass(frozen=True)
class SliceHeader:
    """One slice's header (no pixel data) and where it lies along the slice normal."""

    path: Path
    dataset: Dataset
    location: float  # ImagePositionPatient projected on the slice normal, in mm

    @property
    def sop_instance_uid(self) -> str:
        return sop_instance_of(self.dataset)


@dataclass
class CTSeries:
    """A CT series as found on disk: sorted slice headers and its geometry."""

    series_uid: str  # SeriesInstanceUID, or a "no-series-uid:..." key when the files lack one
    slices: list[SliceHeader]
    normal: np.ndarray
    dropped_duplicates: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def first(self) -> Dataset:
        return self.slices[0].dataset

    @property
    def folder(self) -> Path:
        return self.slices[0].path.parent

    @property
    def n_slices(self) -> int:
        return len(self.slices)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.first.Rows), int(self.first.Columns)

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """(row spacing, column spacing) in mm."""
        row, col = (float(v) for v in self.first.PixelSpacing)
        return row, col

    @property
    def slice_spacing(self) -> float | None:
        """Median distance between neighbouring slices in mm, None for a single slice."""
        if self.n_slices < 2:
            return None
        return float(np.median(np.diff([header.location for header in self.slices])))

    @property
    def study_uid(self) -> str:
        return str(self.first.get("StudyInstanceUID", "") or "")

    @property
    def description(self) -> str:
        return str(self.first.get("SeriesDescription", "") or "")

    @property
    def patient_key(self) -> str:
        """Who the series belongs to, for patient-wise splits: PatientID, else the study."""
        pid = str(self.first.get("PatientID", "") or "")
        return pid or self.study_uid or str(self.folder)

    @property
    def patient_hash(self) -> str:
        """A short hash of the patient key: safe to log, unlike the ID itself."""
        return text_sha256(self.patient_key, 12)

    @property
    def transfer_syntax(self) -> str:
        meta = getattr(self.first, "file_meta", None)
        uid = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        return UID(uid).name if uid else "unknown"

    def read_slice_hu(self, index: int) -> np.ndarray:
        """Decode one slice to float32 HU (RescaleSlope * stored + RescaleIntercept)."""
        return read_hu_file(self.slices[index].path)

    def iter_hu(self, batch: int = 16) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (start index, HU array [n, H, W]) in batches, for work that streams."""
        for start in range(0, self.n_slices, batch):
            stop = min(start + batch, self.n_slices)
            yield start, np.stack([self.read_slice_hu(i) for i in range(start, stop)])

    def read_hu(self, on_slice: Callable[[], None] | None = None) -> np.ndarray:
        """The whole series as float32 HU [S, H, W] in slice order."""
        out = np.empty((self.n_slices, *self.shape), dtype=np.float32)
        for i in range(self.n_slices):
            out[i] = self.read_slice_hu(i)
            if on_slice is not None:
                on_slice()
        return out

    def summary(self) -> str:
        rows, cols = self.shape
        return (
            f"{self.description or '(no description)'}: {self.n_slices} slices, "
            f"{rows}x{cols}, {self.pixel_spacing[0]:.3f} mm pixels, {self.transfer_syntax}"
        )


def read_hu_file(path: Path) -> np.ndarray:
    """Decode one file's pixels to float32 HU, or raise InputProblem naming the file."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise InputProblem(path, f"cannot be read as DICOM ({exc})") from None
    if "PixelData" not in ds:
        raise InputProblem(path, "no pixel data")
    try:
        stored = ds.pixel_array
    except Exception as exc:
        ts = UID(str(ds.file_meta.get("TransferSyntaxUID", ""))).name
        raise InputProblem(path, f"pixel data cannot be decoded ({ts}): {exc}") from None
    if stored.ndim != 2:
        raise InputProblem(path, f"expected one 2-D frame, found pixel array {stored.shape}")
    slope, intercept = rescale_of(ds, path)
    return stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)


@dataclass
class ScanReport:
    """What a folder holds: the good CT series, the problems, and what was ignored."""

    series: list[CTSeries] = field(default_factory=list)
    problems: list[InputProblem] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # files that are not DICOM at all


def _files_under(root: Path) -> list[Path]:
    """Every non-hidden file below ``root``, following folder links (data roots are often
    assembled from links) but visiting each real folder once, so link cycles end."""
    if root.is_file():
        return [root]
    files: list[Path] = []
    seen: set[str] = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
        files += [Path(folder) / name for name in names if not name.startswith(".")]
    return sorted(files)


def _read_header(path: Path) -> Dataset | None:
    """The header without pixel values; None when the file is not DICOM."""
    try:
        # Deferring large values keeps memory low yet tells us whether PixelData exists.
        ds = pydicom.dcmread(path, defer_size="64 KB")
    except InvalidDicomError:
        return None
    except Exception as exc:
        raise InputProblem(path, f"unreadable DICOM ({exc})") from None
    ds.has_pixels = "PixelData" in ds  # type: ignore[attr-defined]
    if "PixelData" in ds:
        del ds.PixelData
    return ds


def _check_series(series_uid: str, items: list[tuple[Path, Dataset]]) -> CTSeries:
    """Validate one series' headers and sort them; raise InputProblem for the whole series."""
    path0, ds0 = items[0]
    sop_class = sop_class_of(ds0)
    modality = str(ds0.get("Modality", "") or "")
    if sop_class == ENHANCED_CT_IMAGE_STORAGE or int(ds0.get("NumberOfFrames", 1) or 1) > 1:
        raise InputProblem(
            path0, "multi-frame (Enhanced) CT is not supported; export it as classic CT slices"
        )
    if modality != "CT" or (sop_class and sop_class != CT_IMAGE_STORAGE):
        raise InputProblem(
            path0, f"not CT (modality {modality or 'missing'}, {_sop_class_name(sop_class)})"
        )
    image_type = [str(v).upper() for v in (ds0.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        raise InputProblem(path0, "a localizer (scout) image, not an axial CT slice")

    seen: dict[str, Path] = {}
    unique: list[tuple[Path, Dataset]] = []
    for path, ds in items:
        uid = sop_instance_of(ds)
        if not uid:
            raise InputProblem(path, "no SOPInstanceUID (neither in the dataset nor its meta)")
        if uid in seen:
            continue
        seen[uid] = path
        unique.append((path, ds))
    dropped = len(items) - len(unique)

    sizes = {(int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) for _, ds in unique}
    if len(sizes) > 1:
        listed = " and ".join(f"{rows}x{cols}" for rows, cols in sorted(sizes))
        raise InputProblem(path0.parent, f"mixed matrix sizes in one series ({listed})")
    for path, ds in unique:
        if not ds.has_pixels:
            raise InputProblem(path, "no pixel data")
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise InputProblem(path, "not a greyscale image (SamplesPerPixel != 1)")
        rescale_of(ds, path)

    normal, _ = check_geometry(ds0, path0)
    slices: list[SliceHeader] = []
    for path, ds in unique:
        slice_normal, ipp = check_geometry(ds, path)
        if abs(float(np.dot(slice_normal, normal))) < 0.999:
            raise InputProblem(path, "slice orientation differs from the rest of the series")
        slices.append(SliceHeader(path, ds, float(np.dot(ipp, normal))))
    slices.sort(
        key=lambda header: (header.location, int(header.dataset.get("InstanceNumber", 0) or 0))
    )

    warnings = []
    if not is_series_uid(series_uid):
        warnings.append("no SeriesInstanceUID: files grouped by folder and frame of reference")
    locations = np.array([header.location for header in slices])
    if len(locations) > 1 and np.any(np.diff(locations) < 1e-3):
        n_shared = int(np.sum(np.diff(locations) < 1e-3))
        warnings.append(f"{n_shared} slice(s) share a position with a neighbour")
    return CTSeries(series_uid, slices, normal, dropped, warnings)


def scan(
    root: Path | str,
    on_file: Callable[[], None] | None = None,
) -> ScanReport:
    """Find every CT series under ``root`` (a folder, searched recursively, or one file).

    Non-DICOM files are ignored (listed in ``ignored``); every unusable file or series is
    reported as an ``InputProblem`` and the rest are still returned.
    """
    root = Path(root)
    report = ScanReport()
    if not root.exists():
        report.problems.append(InputProblem(root, "does not exist"))
        return report
    groups: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path in _files_under(root):
        try:
            ds = _read_header(path)
        except InputProblem as problem:
            report.problems.append(problem)
            continue
        finally:
            if on_file is not None:
                on_file()
        if ds is None:
            report.ignored.append(path)
            continue
        if sop_class_of(ds) in _NOT_IMAGES:
            report.ignored.append(path)
            continue
        groups[series_key_of(ds, path)].append((path, ds))
    for series_uid, items in groups.items():
        try:
            report.series.append(_check_series(series_uid, items))
        except InputProblem as problem:
            report.problems.append(problem)
    report.series.sort(key=lambda series: (str(series.folder), series.series_uid))
    if not groups and not report.problems:
        report.problems.append(InputProblem(root, "no DICOM files found"))
    return report


def count_files(root: Path | str) -> int:
    """How many files ``scan`` will look at (for progress bars)."""
    return len(_files_under(Path(root)))
