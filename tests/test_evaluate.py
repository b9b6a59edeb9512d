"""`manas-infer evaluate`: numbers that agree with scikit-image, a perfect prediction at
inf / 1.0, BM3D, real pairs matched by position, and a report folder with its table and
pictures, on real CT from ../shared/data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import CHEST, PANCREAS, copy_slices, need
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from typer.testing import CliRunner

from manas_infer.cli import app
from manas_infer.evaluate import (
    Method,
    Pairs,
    bm3d_method,
    estimate_noise_hu,
    evaluate,
    matched_pairs,
    simulated_pairs,
)
from manas_infer.hu import HU_MAX, HU_MIN

runner = CliRunner()


def _unit(hu: np.ndarray) -> np.ndarray:
    return ((np.clip(hu, HU_MIN, HU_MAX) - HU_MIN) / (HU_MAX - HU_MIN)).astype(np.float64)


def _window(hu: np.ndarray) -> np.ndarray:
    return (np.clip(hu, -160.0, 240.0) + 160.0) / 400.0


def _smooth() -> Method:
    """A stand-in denoiser: a 3x3 mean filter (any deterministic change of the image)."""
    from scipy.ndimage import uniform_filter

    return Method("mean 3x3", "test", lambda hu: uniform_filter(hu, 3).astype(np.float32))


@pytest.fixture(scope="module")
def chest_pairs() -> Pairs:
    return simulated_pairs(need(CHEST), dose=5.0, seed=1, max_slices=3, n_views=90)


def test_metrics_agree_with_scikit_image(chest_pairs: Pairs, tmp_path: Path) -> None:
    metrics = evaluate(chest_pairs, [_smooth()], tmp_path / "r", n_figures=0)
    rows = {m["name"]: m for m in metrics["methods"]}
    from scipy.ndimage import uniform_filter

    for name, make in [
        ("low dose (input)", lambda x: x),
        ("mean 3x3", lambda x: uniform_filter(x, 3)),
    ]:
        for i, (low, full) in enumerate(zip(chest_pairs.low, chest_pairs.full, strict=True)):
            pred, target = make(low), full
            ours = rows[name]["per_slice"]
            kw = {"data_range": 1.0, "gaussian_weights": True, "sigma": 1.5,
                  "use_sample_covariance": False}  # fmt: skip
            assert ours["psnr"][i] == pytest.approx(
                peak_signal_noise_ratio(_unit(target), _unit(pred), data_range=1.0), abs=1e-3
            )
            assert ours["ssim"][i] == pytest.approx(
                structural_similarity(_unit(target), _unit(pred), **kw), abs=2e-4
            )
            assert ours["psnr_window"][i] == pytest.approx(
                peak_signal_noise_ratio(_window(target), _window(pred), data_range=1.0), abs=1e-3
            )
            assert ours["ssim_window"][i] == pytest.approx(
                structural_similarity(_window(target), _window(pred), **kw), abs=2e-4
            )


def test_a_perfect_prediction_scores_inf_and_one(chest_pairs: Pairs, tmp_path: Path) -> None:
    same = Pairs(chest_pairs.full, chest_pairs.full, chest_pairs.labels, "full vs itself")
    metrics = evaluate(same, [], tmp_path / "r", n_figures=1)
    (row,) = metrics["methods"]
    assert all(math.isinf(v) for v in row["per_slice"]["psnr"])
    assert row["per_slice"]["ssim"] == pytest.approx([1.0] * 3)
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())  # strict JSON
    assert saved["methods"][0]["mean_sd"]["psnr"][0] == "inf"
    assert "| low dose (input) | inf |" in (tmp_path / "r" / "report.md").read_text()


def test_report_folder_holds_the_table_and_the_pictures(chest_pairs: Pairs, tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "report"
    metrics = evaluate(chest_pairs, [_smooth()], out, n_figures=2)
    report = (out / "report.md").read_text()
    assert "| method | PSNR (dB) | SSIM | PSNR window (dB) | SSIM window |" in report
    for m in metrics["methods"]:
        mean = m["mean_sd"]["psnr"][0]
        assert f"| {m['name']} | {mean:.2f} ± " in report
    assert "Perceptual metric: not computed: no VGG-16 weights" in report  # none offline
    assert len(metrics["figures"]) == 3  # two slices and the PSNR spread
    for name in metrics["figures"]:
        with Image.open(out / name) as image:
            assert image.width > 400 and image.height > 300
        assert f"![{name}]({name})" in report
    # The smoother removes noise: lower error than the input on real chest slices.
    low, smooth = (m["mean_sd"]["psnr"][0] for m in metrics["methods"])
    assert smooth > low


def test_bm3d_denoises_a_real_slice_with_its_noise_estimated(chest_pairs: Pairs) -> None:
    low, full = chest_pairs.low[1][160:288, 160:288], chest_pairs.full[1][160:288, 160:288]
    truth = float(np.std((low - full)[full > -500]))
    assert estimate_noise_hu(low) == pytest.approx(truth, rel=0.35)
    out = bm3d_method().denoise(low)
    rmse_low = float(np.sqrt(np.mean((low - full) ** 2)))
    rmse_bm3d = float(np.sqrt(np.mean((out - full) ** 2)))
    assert rmse_bm3d < 0.8 * rmse_low, (rmse_low, rmse_bm3d)


def test_automatic_method_is_what_denoise_does_without_a_model(chest_pairs: Pairs) -> None:
    """The physicist's row for the shipped default: each image's noise picks the model and
    strength; a quiet image is returned as it is, a noisy one as the runtime denoises it."""
    from scipy.ndimage import uniform_filter

    from manas_infer.evaluate.methods import automatic_method
    from manas_infer.runtime import Denoiser
    from manas_infer.runtime.choice import fit, load_levels
    from manas_infer.runtime.noise import slice_noise

    automatic = automatic_method("cpu")
    quiet = uniform_filter(chest_pairs.full[1], 5).astype(np.float32)
    assert np.array_equal(automatic.denoise(quiet), quiet)
    low = chest_pairs.low[1]
    level, strength = fit(slice_noise(low), load_levels())
    assert strength > 0
    expected = Denoiser(level.name, device="cpu", warm_up=None).denoise(low, strength)
    assert np.array_equal(automatic.denoise(low), expected)


def test_noise_estimate_ignores_noise_free_air() -> None:
    rng = np.random.default_rng(0)
    image = np.full((128, 128), -1024.0)
    image[32:96, 32:96] = 40.0 + rng.normal(0, 20.0, (64, 64))
    assert estimate_noise_hu(image) == pytest.approx(20.0, rel=0.1)


def test_real_pairs_are_matched_by_position(tmp_path: Path) -> None:
    full = tmp_path / "full"
    copy_slices(CHEST, full, 6, start=20)
    simulated = tmp_path / "low"
    result = runner.invoke(app, ["simulate", str(full), "--dose", "25", "--out", str(simulated),
                                 "--views", "90"])  # fmt: skip
    assert result.exit_code == 0, result.output
    low_dir = simulated  # one series in: written straight into --out
    gone = sorted(full.iterdir())[2]
    gone.unlink()  # the full-dose slice at that position is missing
    pairs = matched_pairs(low_dir, full)
    assert len(pairs) == 5
    assert len(pairs.problems) == 1 and "no full-dose slice within" in pairs.problems[0].problem
    for low, fullimg in zip(pairs.low, pairs.full, strict=True):
        assert float(np.sqrt(np.mean((low - fullimg) ** 2))) < 60.0  # the same anatomy


def test_pairs_of_different_matrix_are_refused(tmp_path: Path) -> None:
    import pydicom

    from manas_infer.errors import InputProblem

    copy_slices(CHEST, tmp_path / "full", 1)
    (path,) = copy_slices(CHEST, tmp_path / "low", 1)
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.pixel_array[:256, :256].copy().tobytes()
    ds.Rows, ds.Columns = 256, 256
    ds.save_as(path)
    with pytest.raises(InputProblem, match=r"matrix \(256, 256\) differs from the full-dose"):
        matched_pairs(tmp_path / "low", tmp_path / "full")


def test_evaluate_command_on_a_runs_test_split_reproduces_its_numbers(
    trained_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    result = runner.invoke(app, ["evaluate", str(trained_run), "--no-bm3d", "--figures", "1",
                                 "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    run_metrics = json.loads((trained_run / "metrics.json").read_text())
    low, net = metrics["methods"]
    assert metrics["slices"] == run_metrics["test_slices"]
    for key, row in (("low_dose", low), ("network", net)):
        assert row["mean_sd"]["psnr"][0] == pytest.approx(
            run_metrics["mean_sd"][key]["psnr"][0], abs=0.02
        )
    assert net["parameters"] == run_metrics["parameters"]
    assert net["kind"] == "run" and (out / "report.md").is_file()


def test_evaluate_ensemble_scores_a_run_as_its_exported_file(
    trained_run: Path, tmp_path: Path
) -> None:
    """--ensemble 3 runs a run directory's net over three orientations, as the shipped
    files do: the row says so, costs three passes, and scores otherwise than one pass."""
    scores = {}
    for passes in (1, 3):
        out = tmp_path / f"x{passes}"
        result = runner.invoke(app, ["evaluate", str(trained_run), "--no-bm3d", "--no-physics",
                                     "--figures", "0", "--ensemble", str(passes),
                                     "--device", "cpu", "--out", str(out)])  # fmt: skip
        assert result.exit_code == 0, result.output
        scores[passes] = json.loads((out / "metrics.json").read_text())["methods"][1]
    assert scores[3]["name"].endswith(", 3 orientations)")
    assert "orientations" not in scores[1]["name"]
    assert scores[3]["gflops_512"] == pytest.approx(3 * scores[1]["gflops_512"])
    assert scores[3]["per_slice"]["psnr"] != scores[1]["per_slice"]["psnr"]


def test_evaluate_command_with_a_shipped_model_and_bm3d_on_simulated_dose(tmp_path: Path) -> None:
    data = tmp_path / "chest"
    copy_slices(CHEST, data, 2, start=30)
    out = tmp_path / "report"
    result = runner.invoke(app, ["evaluate", "manas-5pct", "--data", str(data), "--dose", "5",
                                 "--views", "90", "--bm3d-sigma", "40", "--figures", "1",
                                 "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    names = [m["name"] for m in metrics["methods"]]
    assert names == ["low dose (input)", "manas-5pct", "BM3D"]
    assert metrics["methods"][1]["gflops_512"] > 0 and metrics["settings"]["dose_percent"] == 5.0
    assert (out / "slice-2.png").is_file() or any(out.glob("slice-*.png"))


def test_soft_kernel_grain_changes_the_noise_texture_not_its_level() -> None:
    """--noise-texture on the same real slice and seed: the noise (low - full) keeps its SD
    and gets the coarse grain (lower TG-233 NPS centroid) of a soft-tissue kernel."""
    from manas_infer.evaluate.nps import crop, noise_power_spectrum, uniform_rois

    ramp = simulated_pairs(need(PANCREAS), dose=5.0, seed=1, max_slices=3, n_views=90)
    soft = simulated_pairs(PANCREAS, 5.0, 1, 3, 90, texture_sigma_px=1.2)
    full = ramp.full[1]  # mid-abdomen: liver and muscle, an iterative reconstruction
    assert np.array_equal(soft.full[1], full) and "1.2-pixel Gaussian" in soft.source
    corners = uniform_rois(full, 32, max_rois=6)
    assert len(corners) >= 3

    def measured(pairs: Pairs) -> tuple[float, float]:
        noise = noise_power_spectrum(crop(pairs.low[1] - full, corners, 32))
        return noise.sd, noise.mean_frequency

    (ramp_sd, ramp_f), (soft_sd, soft_f) = measured(ramp), measured(soft)
    body = full > -500
    assert np.std((soft.low[1] - full)[body]) == pytest.approx(
        np.std((ramp.low[1] - full)[body]), rel=0.02
    )
    assert soft_f < 0.6 * ramp_f and 0.5 * ramp_sd < soft_sd < 1.5 * ramp_sd


def test_bad_input_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", "manas-5pct", "--low", str(tmp_path)])
    assert result.exit_code == 2 and "--low needs the full-dose series" in result.output.replace(
        "│", ""
    )
    result = runner.invoke(app, ["evaluate", "manas-5pct", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "give --dose" in result.output.replace("│", "")
    result = runner.invoke(app, ["evaluate", "manas-5pct", "--data", str(tmp_path), "--low",
                                 str(tmp_path), "--noise-texture", "1"])  # fmt: skip
    flat = " ".join(result.output.replace("│", "").split())
    assert result.exit_code == 2 and "--noise-texture needs --data and --dose" in flat
    result = runner.invoke(
        app, ["evaluate", "no-such-model", "--data", str(tmp_path), "--dose", "5"]
    )
    assert result.exit_code == 1 and "cannot evaluate" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["evaluate", "manas-5pct", "--data", str(empty), "--dose", "5",
                                 "--device", "cpu", "--out", str(tmp_path / "r")])  # fmt: skip
    assert result.exit_code == 1 and "no usable CT slices" in result.output.replace("\n", " ")
    assert not (tmp_path / "r").exists()
