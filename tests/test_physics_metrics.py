"""The CT physicist's battery (manas_infer.evaluate: nps, ttf, detectability, lcd) on
constructed images with known answers, on the FDA LCD-CT phantom in ../shared/data, and in
the reports of `manas-infer evaluate`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import CHEST, LCD_PHANTOM, copy_slices, need
from scipy import ndimage
from typer.testing import CliRunner

from manas_infer.cli import app
from manas_infer.evaluate import detectability as cho
from manas_infer.evaluate.nps import noise_power_spectrum
from manas_infer.evaluate.ttf import circular_edge_ttf, contour_distance, contour_edge_ttf

runner = CliRunner()


def test_white_noise_has_a_flat_nps_whose_integral_is_the_variance() -> None:
    rng = np.random.default_rng(0)
    sigma, spacing = 25.0, 0.7
    rois = rng.normal(0.0, sigma, (64, 64, 64))
    nps = noise_power_spectrum(rois, spacing)
    assert nps.sd**2 == pytest.approx(sigma**2, rel=0.03)  # the integral is the variance
    white = sigma**2 * spacing**2  # HU^2 mm^2: the level of white noise
    inner = nps.nps[2:]  # the two lowest rings hold the DC term and the detrending
    assert np.mean(inner) == pytest.approx(white, rel=0.03)
    assert np.all(np.abs(inner / white - 1) < 0.15), inner / white  # flat
    nyquist = 0.5 / spacing
    assert nps.frequency[-1] == pytest.approx(nyquist, rel=0.02)  # mm^-1, not px^-1
    assert nps.mean_frequency == pytest.approx(nyquist / 2, rel=0.05)  # centroid of a flat curve


def test_filtered_noise_nps_is_the_filter_squared_and_moves_to_low_frequencies() -> None:
    rng = np.random.default_rng(1)
    sigma_px, spacing = 1.0, 0.5
    white = rng.normal(0.0, 20.0, (32, 64, 64))
    blurred = np.stack([ndimage.gaussian_filter(r, sigma_px, mode="wrap") for r in white])
    a, b = noise_power_spectrum(white, spacing), noise_power_spectrum(blurred, spacing)
    f_px = a.frequency * spacing
    gain = np.exp(-2 * np.pi**2 * sigma_px**2 * f_px**2) ** 2  # |H(f)|^2 of the Gaussian
    band = (f_px > 0.05) & (gain > 0.05)
    assert np.allclose(b.nps[band] / a.nps[band], gain[band], rtol=0.15)
    assert b.mean_frequency < 0.6 * a.mean_frequency and b.sd < 0.5 * a.sd


def _blurred_disk(sigma_px: float, radius: float, n: int = 120, up: int = 9) -> np.ndarray:
    """An ideal 1000 HU disk on -1000 HU, blurred by a Gaussian of ``sigma_px`` on a grid
    ``up`` times finer and sampled at pixel centres (no pixel aperture: the TTF is exactly
    the Gaussian's)."""
    fine = (np.mgrid[0 : n * up, 0 : n * up] - (up - 1) / 2) / up  # fine grid, coarse units
    centre = (n / 2 + 0.3, n / 2 - 0.2)
    disk = np.hypot(fine[0] - centre[0], fine[1] - centre[1]) < radius
    image = ndimage.gaussian_filter(disk * 1000.0 - 1000.0, sigma_px * up)
    return image[up // 2 :: up, up // 2 :: up], centre


@pytest.mark.parametrize("sigma_px", [1.0, 2.0])
def test_gaussian_blur_of_a_disk_gives_the_analytic_ttf(sigma_px: float) -> None:
    spacing = 0.5
    image, centre = _blurred_disk(sigma_px, radius=40.0)
    f50 = math.sqrt(math.log(2) / (2 * math.pi**2)) / sigma_px / spacing  # exp(-2pi^2 s^2 f^2)
    f10 = math.sqrt(math.log(10) / (2 * math.pi**2)) / sigma_px / spacing
    ttf = circular_edge_ttf(image, centre, 40.0, spacing, reach=8 * sigma_px)
    assert ttf.f50 == pytest.approx(f50, rel=0.03)
    assert ttf.f10 == pytest.approx(f10, rel=0.03)
    assert ttf.contrast == pytest.approx(1000.0, rel=0.01)
    analytic = np.exp(-2 * np.pi**2 * (sigma_px * spacing) ** 2 * ttf.frequency**2)
    within = ttf.frequency < f10
    assert np.max(np.abs(ttf.ttf[within] - analytic[within])) < 0.03
    # the body-outline path (sub-pixel iso-contour, no known circle) agrees too
    distance = contour_distance(image, level=-500.0, reach=8 * sigma_px)
    outline = contour_edge_ttf(image, distance, spacing, reach=8 * sigma_px)
    assert outline.f50 == pytest.approx(f50, rel=0.04)
    assert outline.f10 == pytest.approx(f10, rel=0.04)


def _observer(signal_hu: float, n_images: int = 30, seed: int = 0) -> cho.ObserverResult:
    """A CHO study on white-noise images (SD 20 HU) with a 6 px disk of ``signal_hu`` in the
    signal-present ones: one present ROI per present image, four absent ROIs per absent
    image, the LCD battery's layout."""
    rng = np.random.default_rng(seed)
    size, radius = 96, 6.0
    rows, cols = np.mgrid[0:size, 0:size]
    disk = np.hypot(rows - 24, cols - 24) < radius
    present_imgs = rng.normal(0, 20.0, (n_images, size, size)) + signal_hu * disk
    absent_imgs = rng.normal(0, 20.0, (n_images, size, size))
    spots = [(24.0, 24.0), (24.0, 72.0), (72.0, 24.0), (72.0, 72.0)]
    width = 1.5 * radius
    present = cho.channel_responses(present_imgs, spots[:1], 37, width)[:, 0]
    absent = cho.channel_responses(absent_imgs, spots, 37, width).reshape(-1, 5)
    ids = np.arange(2 * n_images)
    absent_ids = np.repeat(ids[n_images:], len(spots))
    draws = cho.bootstrap_draws([ids[:n_images], ids[n_images:]], 400, seed)
    return cho.cho_study(present, ids[:n_images], absent, absent_ids, draws)


def test_cho_gives_chance_without_a_signal_and_near_one_with_a_strong_one() -> None:
    none = _observer(0.0)
    assert none.auc_ci[0] < 0.5 < none.auc_ci[1], (none.auc, none.auc_ci)
    assert abs(none.auc - 0.5) < 0.15
    strong = _observer(20.0)  # a 6 px disk at 1 SD of pixel noise: easy for an observer
    assert strong.auc > 0.97 and strong.auc_ci[0] > 0.9, (strong.auc, strong.auc_ci)
    faint = _observer(4.0)
    assert none.auc < faint.auc < strong.auc
    verdict = cho.compare(strong, none)
    assert verdict["verdict"] == "raises" and verdict["delta_ci95"][0] > 0


@pytest.fixture(scope="module")
def phantom_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`manas-infer evaluate --phantom` on the real LCD-CT phantom, unprocessed images only."""
    folder = need(LCD_PHANTOM)
    out = tmp_path_factory.mktemp("phantom") / "report"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--phantom",
            "--data",
            str(folder),
            "--no-bm3d",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
@pytest.mark.realdata
def test_phantom_cho_auc_falls_as_noise_rises_across_its_doses(phantom_report: Path) -> None:
    """The FDA phantom's own FBP images at 100, 55 and 10 % dose (noise about 22, 30 and
    70 HU): every rod is least detectable at 10 %, and the mean over rods falls with dose."""
    lcd = json.loads((phantom_report / "metrics.json").read_text())["lcd"]
    rows = {r["dose_percent"]: r for r in lcd["rows"]}
    assert sorted(rows) == [10, 55, 100]
    sd = {d: rows[d]["nps"]["sd_hu"] for d in rows}
    assert sd[10] > sd[55] > sd[100]
    rods = [i["label"] for i in lcd["phantom"]["inserts"]]
    assert len(rods) == 4
    auc = {d: {k: rows[d]["cho"][k]["auc"] for k in rods} for d in rows}
    mean = {d: float(np.mean(list(auc[d].values()))) for d in rows}
    assert mean[10] < mean[55] < mean[100], mean
    for rod in rods:
        assert auc[10][rod] < min(auc[55][rod], auc[100][rod]), (rod, auc)
    assert mean[100] > 0.75 and mean[10] < 0.75


@pytest.mark.realdata
def test_phantom_report_holds_noise_sharpness_and_detectability(phantom_report: Path) -> None:
    report = (phantom_report / "report.md").read_text()
    metrics = json.loads((phantom_report / "metrics.json").read_text())
    for heading in ("### Noise", "### Sharpness", "### Low-contrast detectability (CHO)"):
        assert heading in report
    lcd = metrics["lcd"]
    assert lcd["phantom"]["pixel_spacing_mm"] == pytest.approx(0.859, abs=0.002)
    for row in lcd["rows"]:
        assert row["method"] == "input (FBP)" and len(row["nps"]["nps"]) > 10
        # the FDA images' own sharp FBP: f50 near 0.32 mm^-1 at every dose
        assert row["ttf_outline"]["f50"] == pytest.approx(0.32, abs=0.03)
        for rod in row["cho"].values():
            lo, hi = rod["auc_ci95"]
            assert lo <= rod["auc"] <= hi
    for name in metrics["figures"]:
        assert (phantom_report / name).is_file() and f"![{name}]({name})" in report
    assert len(metrics["figures"]) == 5  # NPS at three doses, TTF, AUC bars


def test_phantom_option_refuses_a_dose(tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", "--phantom", "--dose", "5"])
    assert result.exit_code == 2 and "brings its own doses" in result.output.replace("│", "")
    result = runner.invoke(app, ["evaluate", "--phantom", "--data", str(tmp_path), "--no-bm3d"])
    assert result.exit_code == 1 and "no ground_truth.mhd" in result.output.replace("\n", " ")


@pytest.mark.realdata
def test_evaluate_report_on_patient_pairs_holds_nps_and_body_edge_ttf(tmp_path: Path) -> None:
    data = tmp_path / "chest"
    copy_slices(CHEST, data, 2, start=30)
    out = tmp_path / "report"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "manas-5pct",
            "--data",
            str(data),
            "--dose",
            "5",
            "--views",
            "180",
            "--no-bm3d",
            "--figures",
            "0",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    physics = metrics["physics"]
    rows = {r["method"]: r for r in physics["rows"]}
    assert list(rows) == ["full dose", "low dose (input)", "manas-5pct"]
    assert physics["unit"] == "mm^-1" and physics["nps_rois"] > 0 and physics["edge_slices"] > 0
    for row in rows.values():
        assert row["nps"]["sd_hu"] > 0 and 0 < row["nps"]["mean_frequency"] < 0.6
        assert 0.1 < row["ttf_body_edge"]["f50"] < 0.6
    # the denoiser removes noise, most of it at high frequencies
    noisy, denoised = rows["low dose (input)"]["nps"], rows["manas-5pct"]["nps"]
    assert denoised["sd_hu"] < 0.7 * noisy["sd_hu"]
    assert denoised["mean_frequency"] < noisy["mean_frequency"]
    report = (out / "report.md").read_text()
    assert "## Noise texture and edge sharpness" in report
    for name in physics["figures"]:
        assert (out / name).is_file() and f"![{name}]({name})" in report
