"""`manas-infer simulate`, `phantom` and `inspect` end to end, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import CHEST, J2K, copy_slices, dciodvfy_errors
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from manas_infer.cli import app
from manas_infer.data.series import scan

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_simulate_writes_a_low_dose_series_and_a_preview(tmp_path: Path) -> None:
    copy_slices(CHEST, tmp_path / "in", 3, start=31)
    out, png = tmp_path / "low", tmp_path / "preview.png"
    result = _run(
        "simulate", tmp_path / "in", "--dose", "5", "--out", out, "--views", "360",
        "--preview", png, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["problems"] == [] and summary["series"][0]["slices"] == 3
    source, low = scan(tmp_path / "in").series[0], scan(out).series[0]
    assert low.n_slices == 3
    assert [s.location for s in low.slices] == [s.location for s in source.slices]
    first = low.first
    assert list(first.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert "5 %" in first.SeriesDescription
    assert first.SeriesInstanceUID != source.series_uid
    assert {s.sop_instance_uid for s in low.slices}.isdisjoint(
        s.sop_instance_uid for s in source.slices
    )
    noise = low.read_hu() - source.read_hu()
    body = noise[:, 180:330, 180:330]
    assert 10 < float(body.std()) < 200, "5 % dose adds tens of HU of noise in the body"
    assert abs(float(body.mean())) < 5, "noise insertion must not shift the mean"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert dciodvfy_errors(sorted(out.glob("*.dcm"))[1]) == []


def test_same_seed_same_series_other_seed_other_noise(tmp_path: Path) -> None:
    copy_slices(CHEST, tmp_path / "in", 1, start=31)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        args = ("simulate", tmp_path / "in", "--out", tmp_path / name, "--views", "180")
        assert _run(*args, "--seed", seed).exit_code == 0
    a, b, c = (scan(tmp_path / n).series[0] for n in "abc")
    np.testing.assert_array_equal(a.read_hu(), b.read_hu())
    assert a.first.SOPInstanceUID == b.first.SOPInstanceUID
    assert not np.array_equal(a.read_hu(), c.read_hu())
    assert a.first.SeriesInstanceUID != c.first.SeriesInstanceUID


def test_bad_series_is_named_and_the_good_ones_still_processed(tmp_path: Path) -> None:
    copy_slices(CHEST, tmp_path / "in" / "chest", 2, start=31)
    copy_slices(J2K, tmp_path / "in" / "j2k", 2, start=5)
    mr = tmp_path / "in" / "mr" / "mr.dcm"
    mr.parent.mkdir()
    mr.write_bytes(Path(get_testdata_file("MR_small.dcm")).read_bytes())
    result = _run("simulate", tmp_path / "in", "--out", tmp_path / "out", "--views", "90")
    assert result.exit_code == 1
    assert f"{mr}: not CT (modality MR" in " ".join(result.output.split())
    assert "Traceback" not in result.output
    outputs = sorted(p for p in (tmp_path / "out").iterdir())
    assert len(outputs) == 2, "both CT series written, each into its own folder"
    assert sorted(scan(p).series[0].n_slices for p in outputs) == [2, 2]


def test_existing_output_is_refused(tmp_path: Path) -> None:
    copy_slices(CHEST, tmp_path / "in", 1, start=31)
    (tmp_path / "out").mkdir()
    result = _run("simulate", tmp_path / "in", "--out", tmp_path / "out", "--views", "90")
    assert result.exit_code == 1
    assert "output folder exists (use --overwrite" in " ".join(result.output.split())
    ok = _run(
        "simulate", tmp_path / "in", "--out", tmp_path / "out", "--views", "90", "--overwrite"
    )
    assert ok.exit_code == 0


@pytest.mark.parametrize("dose", ["0", "-5", "150"])
def test_impossible_dose_is_refused_before_work(tmp_path: Path, dose: str) -> None:
    result = _run("simulate", tmp_path, "--dose", dose, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "dose" in result.output.lower()
    assert not (tmp_path / "out").exists()


def test_phantom_series_is_valid_dicom_the_reader_accepts(tmp_path: Path) -> None:
    result = _run("phantom", tmp_path / "ph", "--slices", "4", "--size", "128")
    assert result.exit_code == 0, result.output
    series = scan(tmp_path / "ph").series[0]
    assert series.n_slices == 4 and series.shape == (128, 128)
    hu = series.read_hu()
    assert float(np.median(hu[:, :6, :6])) == -1000.0  # air in the corners
    assert float(hu.max()) > 500  # bone
    for f in sorted((tmp_path / "ph").glob("*.dcm")):
        assert dciodvfy_errors(f) == []
    assert pydicom.dcmread(sorted((tmp_path / "ph").glob("*.dcm"))[0]).PatientID == "PHANTOM-0"


def test_inspect_lists_series_and_problems(tmp_path: Path) -> None:
    copy_slices(CHEST, tmp_path / "chest", 2, start=31)
    (tmp_path / "junk.dcm").write_bytes(b"DICM" * 10)
    ok = _run("inspect", tmp_path / "chest", "--json")
    assert ok.exit_code == 0
    (row,) = json.loads(ok.stdout)["series"]
    assert row["slices"] == 2 and row["rows"] == 512
    # A file that only looks like DICOM by name is ignored, not fatal.
    mixed = _run("inspect", tmp_path, "--json")
    assert mixed.exit_code == 0
    listing = json.loads(mixed.stdout)
    assert len(listing["series"]) == 1 and listing["problems"] == []
