"""The series reader on real scanner output and on every kind of bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import CHEST, J2K, LCD_PHANTOM, PANCREAS, copy_slices, need
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from manas_infer.data.series import read_hu_file, scan
from manas_infer.data.volume import CTVolume
from manas_infer.errors import InputProblem


def _soft_tissue_mode(hu: np.ndarray) -> float:
    """The most common value between -30 and 150 HU (above fat): soft tissue in a body slice."""
    values = hu[(hu > -30) & (hu < 150)]
    counts, edges = np.histogram(values, bins=36, range=(-30, 150))
    return float(edges[np.argmax(counts)] + 2.5)


def test_groups_and_orders_a_real_series() -> None:
    report = scan(need(PANCREAS))
    assert report.problems == []
    assert [s.n_slices for s in report.series] == [134]
    series = report.series[0]
    locations = np.array([s.location for s in series.slices])
    assert np.all(np.diff(locations) > 0), "slices must be sorted along the normal"
    assert series.slice_spacing == pytest.approx(3.0, abs=0.01)
    assert series.pixel_spacing == pytest.approx((1.07421875, 1.07421875))
    assert series.shape == (512, 512)
    np.testing.assert_allclose(series.normal, [0, 0, 1], atol=1e-6)
    # LICENSE.txt / CITATION.txt beside the slices are not DICOM and are only ignored.
    assert all(p.suffix != ".dcm" for p in report.ignored)


def test_several_series_in_one_tree_are_separated(tmp_path: Path) -> None:
    copy_slices(PANCREAS, tmp_path / "a", 3, start=60)
    copy_slices(CHEST, tmp_path / "b" / "deeper", 4, start=30)
    report = scan(tmp_path)
    assert sorted(s.n_slices for s in report.series) == [3, 4]
    assert len({s.series_uid for s in report.series}) == 2


def test_order_follows_geometry_not_file_names(tmp_path: Path) -> None:
    files = copy_slices(CHEST, tmp_path, 5, start=20)
    for name, f in zip("dbeac", files, strict=True):  # names no longer follow the anatomy
        f.rename(tmp_path / f"{name}.dcm")
    series = scan(tmp_path).series[0]
    z = [float(s.dataset.ImagePositionPatient[2]) for s in series.slices]
    assert z == sorted(z) and len(set(z)) == 5
    by_name = sorted(series.slices, key=lambda s: s.path.name)
    assert [s.location for s in by_name] != sorted(s.location for s in by_name)


def test_hu_values_are_plausible() -> None:
    series = scan(need(CHEST)).series[0]
    hu = series.read_slice_hu(32)
    assert hu.dtype == np.float32
    # Air inside the field of view, above the patient (rows 30-60 at the centre column).
    assert float(np.median(hu[30:60, 236:276])) == pytest.approx(-1000, abs=40)
    assert 0 <= _soft_tissue_mode(hu) <= 60
    pancreas = scan(need(PANCREAS)).series[0].read_slice_hu(70)
    assert 0 <= _soft_tissue_mode(pancreas) <= 80
    assert pancreas.min() >= -1000  # intercept -1000 with unsigned 12-bit storage


def test_jpeg2000_series_decodes() -> None:
    report = scan(need(J2K))
    assert len(report.series) == 1
    series = report.series[0]
    assert series.n_slices == 20
    assert "JPEG 2000" in series.transfer_syntax
    # The files carry empty SOP/series UIDs; the instance UID comes from the file meta.
    assert all(s.sop_instance_uid.startswith("1.3.12.2") for s in series.slices)
    assert any("no SeriesInstanceUID" in w for w in series.warnings)
    hu = series.read_hu()
    assert hu.shape == (20, 512, 512)
    # A contrast-enhanced scan: enhanced organs put the soft-tissue mode near 100 HU.
    assert 20 <= _soft_tissue_mode(hu[10]) <= 150
    assert float(hu.min()) == pytest.approx(-1024, abs=1)
    assert float(np.median(hu[10, 10:40, 236:276])) == pytest.approx(-1000, abs=40)


@pytest.mark.parametrize(
    "syntax", [RLELossless, JPEG2000Lossless, DeflatedExplicitVRLittleEndian], ids=str
)
def test_compressed_transfer_syntaxes_give_the_same_hu(tmp_path: Path, syntax) -> None:
    original = copy_slices(CHEST, tmp_path / "plain", 2, start=30)
    (tmp_path / "packed").mkdir()
    for f in original:
        ds = pydicom.dcmread(f)
        if syntax == DeflatedExplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = syntax
        else:
            ds.compress(syntax)
        ds.save_as(tmp_path / "packed" / f.name)
    plain = scan(tmp_path / "plain").series[0].read_hu()
    packed_series = scan(tmp_path / "packed").series[0]
    assert packed_series.transfer_syntax == syntax.name
    np.testing.assert_array_equal(packed_series.read_hu(), plain)


@pytest.mark.parametrize(
    ("name", "reference"),
    [("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"), ("MR_small_RLE.dcm", "MR_small.dcm")],
)
def test_other_lossless_codecs_decode(name: str, reference: str) -> None:
    """JPEG-LS and RLE through the pylibjpeg plugins, against the uncompressed original."""
    np.testing.assert_array_equal(
        read_hu_file(Path(get_testdata_file(name))),
        read_hu_file(Path(get_testdata_file(reference))),
    )


def test_duplicates_are_removed(tmp_path: Path) -> None:
    files = copy_slices(CHEST, tmp_path, 3, start=10)
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "again.dcm").write_bytes(files[0].read_bytes())
    series = scan(tmp_path).series[0]
    assert series.n_slices == 3
    assert series.dropped_duplicates == 1


def _problems(root: Path) -> list[InputProblem]:
    return scan(root).problems


def test_non_dicom_files_are_ignored_and_an_empty_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    report = scan(tmp_path)
    assert report.series == []
    assert len(report.ignored) == 2
    assert [str(p) for p in report.problems] == [f"{tmp_path}: no DICOM files found"]
    missing = scan(tmp_path / "nowhere").problems
    assert "does not exist" in str(missing[0])


def test_not_ct_is_refused_with_the_modality(tmp_path: Path) -> None:
    mr = Path(get_testdata_file("MR_small.dcm"))
    (tmp_path / "mr.dcm").write_bytes(mr.read_bytes())
    copy_slices(CHEST, tmp_path / "ct", 2, start=5)
    report = scan(tmp_path)
    assert len(report.series) == 1, "the good CT series is still found"
    (problem,) = report.problems
    assert problem.path == tmp_path / "mr.dcm"
    assert "not CT (modality MR" in problem.problem


def test_no_pixel_data(tmp_path: Path) -> None:
    (f, *_) = copy_slices(CHEST, tmp_path, 2, start=5)
    ds = pydicom.dcmread(f)
    del ds.PixelData
    ds.save_as(f)
    (problem,) = _problems(tmp_path)
    assert problem.path == f and problem.problem == "no pixel data"


def test_mixed_matrix_sizes(tmp_path: Path) -> None:
    files = copy_slices(CHEST, tmp_path, 2, start=5)
    small = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # a 128x128 CT slice
    small.SeriesInstanceUID = pydicom.dcmread(files[0]).SeriesInstanceUID
    small.save_as(tmp_path / "small.dcm")
    (problem,) = _problems(tmp_path)
    assert "mixed matrix sizes in one series (128x128 and 512x512)" in str(problem)


def test_missing_geometry(tmp_path: Path) -> None:
    files = copy_slices(CHEST, tmp_path, 2, start=5)
    ds = pydicom.dcmread(files[1])
    del ds.ImagePositionPatient
    ds.save_as(files[1])
    (problem,) = _problems(tmp_path)
    assert problem.path == files[1]
    assert problem.problem == "missing geometry (ImagePositionPatient)"


def test_localizer_is_refused(tmp_path: Path) -> None:
    files = copy_slices(CHEST, tmp_path, 1, start=5)
    ds = pydicom.dcmread(files[0])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.save_as(files[0])
    (problem,) = _problems(tmp_path)
    assert "localizer" in problem.problem


def test_truncated_file_is_named(tmp_path: Path) -> None:
    files = copy_slices(CHEST, tmp_path, 3, start=5)
    files[2].write_bytes(files[2].read_bytes()[:2000])  # header cut mid-way
    report = scan(tmp_path)
    problems = [p for p in report.problems if p.path == files[2]]
    if report.series and report.series[0].n_slices == 3:
        # pydicom read the cut header; decoding the pixels must then fail clearly.
        with pytest.raises(InputProblem, match=files[2].name):
            report.series[0].read_hu()
    else:
        assert problems, "the truncated file must be reported"


def test_undecodable_pixel_data_is_named(tmp_path: Path) -> None:
    files = copy_slices(need(J2K), tmp_path, 2)
    ds = pydicom.dcmread(files[1])
    frame = bytearray(ds.PixelData)
    frame[200:4000] = bytes(3800)  # wreck the JPEG 2000 codestream
    ds.PixelData = bytes(frame)
    ds.save_as(files[1])
    series = scan(tmp_path).series[0]
    with pytest.raises(InputProblem, match="pixel data cannot be decoded"):
        series.read_hu()


def test_metaimage_volume_reads_in_hu() -> None:
    volume = CTVolume(need(LCD_PHANTOM) / "ground_truth.mhd", hu_offset=-1000)
    hu = volume.read_hu()
    assert hu.shape == (1, 256, 256)
    assert float(hu.min()) == pytest.approx(-1000)
    centre = hu[0, 118:138, 118:138]
    assert float(np.median(centre)) == pytest.approx(0, abs=20)  # water-like phantom body


def test_unreadable_volume_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a volume")
    with pytest.raises(InputProblem, match=r"broken\.nii\.gz: cannot be read as a volume"):
        CTVolume(bad)


@pytest.mark.parametrize(
    ("keyword", "value", "problem"),
    [
        ("RescaleSlope", "0", "RescaleSlope is 0"),
        ("RescaleSlope", "NaN", "RescaleSlope is not finite"),
        ("RescaleSlope", "1e300", "RescaleSlope 1e+300 not plausible"),
        ("RescaleIntercept", None, "RescaleIntercept missing"),
        ("ImagePositionPatient", ["0", "NaN", "0"], "ImagePositionPatient is not finite"),
        ("ImageOrientationPatient", ["1", "0", "0", "0.6", "0.8", "0"], "not orthogonal"),
        ("ImageOrientationPatient", ["0.5", "0", "0", "0", "1", "0"], "not unit vectors"),
        ("PixelSpacing", ["0.7", "-0.7"], "PixelSpacing not positive"),
    ],
)
def test_unusable_rescale_or_geometry_refuses_the_series(
    tmp_path: Path, keyword: str, value: object, problem: str
) -> None:
    """Issue 16, finding 3: such headers were read (a slope of 0 as 1, NaN carried into
    the output) and ``denoise`` wrote blank or invalid images. The one reader refuses the
    series naming the file; a sound series beside it is still read."""
    files = copy_slices(CHEST, tmp_path / "bad", 3, start=30)
    for good in copy_slices(CHEST, tmp_path / "good", 2, start=40):  # a series of its own
        other = pydicom.dcmread(good)
        other.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.16"
        other.save_as(good)
    ds = pydicom.dcmread(files[1])
    if value is None:
        delattr(ds, keyword)
    else:
        ds[keyword].value = value
    ds.save_as(files[1])
    report = scan(tmp_path)
    assert [s.folder.name for s in report.series] == ["good"]
    (found,) = report.problems
    assert found.path == files[1] and problem in found.problem
    if keyword.startswith("Rescale"):
        with pytest.raises(InputProblem, match=re.escape(problem)):
            read_hu_file(files[1])


def test_stored_values_without_rescale_are_hu_only_when_signed(tmp_path: Path) -> None:
    """Issue 16, finding 3: no RescaleSlope/Intercept at all is read as HU for signed
    pixels (slope 1, intercept 0) and refused for unsigned ones, never guessed."""
    (path,) = copy_slices(CHEST, tmp_path, 1, start=30)
    ds = pydicom.dcmread(path)
    del ds.RescaleSlope, ds.RescaleIntercept
    assert int(ds.PixelRepresentation) == 0
    ds.save_as(path)
    with pytest.raises(InputProblem, match="unsigned pixels are not HU"):
        read_hu_file(path)
    ds.PixelRepresentation = 1
    ds.save_as(path)
    stored = pydicom.dcmread(path).pixel_array.astype(np.float32)
    np.testing.assert_array_equal(read_hu_file(path), stored)
