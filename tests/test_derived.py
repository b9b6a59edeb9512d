"""The derived-series writer: SPEC section 4, checked attribute by attribute and by dciodvfy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import CHEST, J2K, PANCREAS, copy_slices, dciodvfy_errors, need
from pydicom.uid import ExplicitVRLittleEndian

from manas_infer.data.derived import Derivation, write_derived_series
from manas_infer.data.series import CTSeries, scan
from manas_infer.errors import InputProblem

DERIVATION = Derivation(
    identity="test-model:sha256:0123",
    series_description="MANAS denoised (test, 5 %)",
    derivation_description="Denoised by manas-infer test model, 5 % dose",
)


def _series(folder: Path) -> CTSeries:
    (series,) = scan(folder).series
    return series


@pytest.fixture
def chest_subset(tmp_path: Path) -> CTSeries:
    copy_slices(CHEST, tmp_path / "source", 6, start=29)
    return _series(tmp_path / "source")


def _write(series: CTSeries, out: Path, hu: np.ndarray | None = None) -> list[pydicom.Dataset]:
    pixels = series.read_hu() + 7.0 if hu is None else hu
    written = write_derived_series(series, pixels, DERIVATION, out)
    assert written.n_slices == series.n_slices
    return [pydicom.dcmread(f) for f in sorted(out.glob("*.dcm"))]


@pytest.mark.parametrize("source", [CHEST, J2K, PANCREAS], ids=lambda p: p.name)
def test_every_slice_passes_dciodvfy(tmp_path: Path, source: Path) -> None:
    copy_slices(need(source), tmp_path / "in", 4, start=8)
    _write(_series(tmp_path / "in"), tmp_path / "out")
    for f in sorted((tmp_path / "out").glob("*.dcm")):
        assert dciodvfy_errors(f) == [], f.name


def test_spec_attributes(chest_subset: CTSeries, tmp_path: Path) -> None:
    out = _write(chest_subset, tmp_path / "out")
    sources = [s.dataset for s in chest_subset.slices]
    series_uids = {ds.SeriesInstanceUID for ds in out}
    assert len(series_uids) == 1 and chest_subset.series_uid not in series_uids
    for ds, src, header in zip(out, sources, chest_subset.slices, strict=True):
        # Kept: patient, study, frame of reference, geometry, pixel format, rescale.
        for keyword in (
            "PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "FrameOfReferenceUID",
            "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
            "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "RescaleSlope",
            "RescaleIntercept", "Rows", "Columns", "InstanceNumber",
        ):  # fmt: skip
            assert ds[keyword].value == src[keyword].value, keyword
        assert ds.Modality == "CT"
        # New identifiers, series number and description.
        assert ds.SOPInstanceUID != header.sop_instance_uid
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SeriesNumber == int(src.SeriesNumber) + 1000
        assert ds.SeriesDescription == "MANAS denoised (test, 5 %)"
        assert len(ds.InstanceCreationDate) == 8 and ds.InstanceCreationTime
        # Set: image type, derivation, references, equipment, the intended-use note.
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert ds.DerivationDescription == DERIVATION.derivation_description
        (ref,) = ds.SourceImageSequence
        assert ref.ReferencedSOPInstanceUID == header.sop_instance_uid
        assert ref.ReferencedSOPClassUID == src.SOPClassUID
        assert ref.SpatialLocationsPreserved == "YES"
        (purpose,) = ref.PurposeOfReferenceCodeSequence
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("121322", "DCM")
        assert purpose.CodeMeaning == "Source image for image processing operation"
        (referenced,) = ds.ReferencedSeriesSequence
        assert referenced.SeriesInstanceUID == chest_subset.series_uid
        assert referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == (
            header.sop_instance_uid
        )
        (equipment,) = ds.ContributingEquipmentSequence
        assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
        assert equipment.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Equipment"
        assert equipment.Manufacturer == "manas-infer" and equipment.SoftwareVersions
        assert "Not for primary diagnosis" in ds.ImageComments
        assert not [e for e in ds if e.tag.is_private], "private tags must not be copied"


def test_pixels_round_trip_and_clip(chest_subset: CTSeries, tmp_path: Path) -> None:
    hu = chest_subset.read_hu()
    shifted = hu + 7.0
    shifted[:, :8, :8] = -5000.0  # below what 12-bit unsigned with intercept -1024 can hold
    shifted[:, -8:, -8:] = 9000.0  # above it
    _write(chest_subset, tmp_path / "out", shifted)
    back = _series(tmp_path / "out").read_hu()
    inside = (slice(None), slice(8, -8), slice(8, -8))
    np.testing.assert_allclose(back[inside], np.clip(shifted[inside], -1024, 3071), atol=0.5)
    assert float(back[:, :8, :8].max()) == -1024.0
    assert float(back[:, -8:, -8:].min()) == 4095 - 1024.0


def test_geometry_and_order_are_preserved(chest_subset: CTSeries, tmp_path: Path) -> None:
    _write(chest_subset, tmp_path / "out")
    derived = _series(tmp_path / "out")
    assert [s.location for s in derived.slices] == [s.location for s in chest_subset.slices]
    assert derived.pixel_spacing == chest_subset.pixel_spacing


def test_uids_are_deterministic(chest_subset: CTSeries, tmp_path: Path) -> None:
    first = _write(chest_subset, tmp_path / "one")
    second = _write(chest_subset, tmp_path / "two")
    assert [d.SOPInstanceUID for d in first] == [d.SOPInstanceUID for d in second]
    assert first[0].SeriesInstanceUID == second[0].SeriesInstanceUID
    other = Derivation("another-model", "x", "y")
    write_derived_series(chest_subset, chest_subset.read_hu(), other, tmp_path / "three")
    third = pydicom.dcmread(sorted((tmp_path / "three").glob("*.dcm"))[0])
    assert third.SeriesInstanceUID != first[0].SeriesInstanceUID


def test_existing_output_is_refused_unless_overwrite(chest_subset: CTSeries, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    hu = chest_subset.read_hu()
    with pytest.raises(InputProblem, match="output folder exists"):
        write_derived_series(chest_subset, hu, DERIVATION, out)
    assert (out / "keep.txt").exists()
    write_derived_series(chest_subset, hu, DERIVATION, out, overwrite=True)
    assert len(list(out.glob("*.dcm"))) == chest_subset.n_slices
    assert not (out / "keep.txt").exists()


def test_interrupted_write_leaves_nothing_that_looks_complete(
    chest_subset: CTSeries, tmp_path: Path
) -> None:
    written = []

    def stop_after_three() -> None:
        written.append(1)
        if len(written) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_derived_series(
            chest_subset, chest_subset.read_hu(), DERIVATION, tmp_path / "out",
            on_slice=stop_after_three,
        )  # fmt: skip
    assert list(tmp_path.iterdir()) == [tmp_path / "source"], "no partial or final folder left"


def test_padding_pixels_stay_padding(tmp_path: Path) -> None:
    files = copy_slices(CHEST, tmp_path / "in", 2, start=30)
    for f in files:
        ds = pydicom.dcmread(f)
        pixels = ds.pixel_array.copy()
        pixels[:20, :] = 0  # a padded band, outside the field of view
        ds.PixelData = pixels.tobytes()
        ds.add_new(0x00280120, "US", 0)  # PixelPaddingValue, VR explicit in implicit files
        ds.save_as(f)
    series = _series(tmp_path / "in")
    _write(series, tmp_path / "out", series.read_hu() + 50.0)
    for ds in (pydicom.dcmread(f) for f in sorted((tmp_path / "out").glob("*.dcm"))):
        assert int(ds.pixel_array[:20].max()) == 0
        assert int(ds.pixel_array[250:260, 250:260].min()) > 0  # body centre


def test_a_source_without_series_uid_is_referenced_by_its_images_only(tmp_path: Path) -> None:
    """Files without a SeriesInstanceUID are grouped by folder (a stand-in key): the derived
    series must not name that key as a UID; it references each source image instead."""
    copy_slices(CHEST, tmp_path / "source", 3, start=29)
    for path in sorted((tmp_path / "source").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        del ds.SeriesInstanceUID
        ds.save_as(path)
    series = _series(tmp_path / "source")
    assert any("no SeriesInstanceUID" in w for w in series.warnings)
    out = _write(series, tmp_path / "out")
    assert len({ds.SeriesInstanceUID for ds in out}) == 1
    for ds, header in zip(out, series.slices, strict=True):
        assert pydicom.uid.UID(ds.SeriesInstanceUID).is_valid  # a UID, not the stand-in key
        assert "no-series-uid" not in ds.SeriesInstanceUID
        assert "ReferencedSeriesSequence" not in ds
        (ref,) = ds.SourceImageSequence
        assert ref.ReferencedSOPInstanceUID == header.sop_instance_uid
