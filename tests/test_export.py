"""`manas-infer export` and the one runtime: a small net trained on real CT goes to ONNX,
matches torch, carries its card, and loads (or fails clearly) through ``Denoiser``."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from manas_infer.cli import app
from manas_infer.export.graph import HUModel
from manas_infer.export.pipeline import ExportError, export_run, latest_finished_run
from manas_infer.hashing import sha256
from manas_infer.hu import HU_MIN
from manas_infer.runtime import (
    Denoiser,
    ModelChoice,
    ModelError,
    list_models,
    models_dir,
    resolve_model,
)
from manas_infer.runtime.providers import cuda_works
from manas_infer.train.baselines import build_baseline
from manas_infer.train.profile import count_flops
from manas_infer.train.run import load_trained

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("models") / "manas-5pct.onnx"
    done = export_run(trained_run, out, float16=True, citations=["A. Site (2026) own data"])
    return {item.parity.precision: item.path for item in done}


def test_export_writes_checked_models_that_match_torch(trained_run: Path, exported) -> None:
    model, _ = load_trained(trained_run)
    reference = HUModel(model, model.size_multiple).eval()
    rng = np.random.default_rng(0)
    for precision, tolerance in (("float32", 0.1), ("float16", 2.0)):
        path = exported[precision]
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        denoiser = Denoiser(ModelChoice(path, path.stem, "test"), device="cpu", warm_up=None)
        # Two batch sizes and two sizes, one not a multiple of the net's stride (padding).
        for shape in ((3, 48, 40), (1, 61, 77)):
            hu = (rng.normal(40, 60, shape) + np.linspace(-1000, 1000, shape[-1])).astype(
                np.float32
            )
            with torch.no_grad():
                expected = reference(torch.from_numpy(hu)[:, None])[:, 0].numpy()
            got = denoiser(hu)
            assert got.shape == hu.shape and got.dtype == np.float32
            assert np.abs(got - expected).max() < tolerance, (precision, shape)
        card = json.loads(path.with_name(path.stem + ".card.json").read_text())
        assert card["verification"]["ok"] and card["verification"]["precision"] == precision
        assert card["verification"]["max_abs_diff_hu"] < tolerance
        assert "real slices" in card["verification"]["checked_on"]


def test_ensemble_averages_the_turned_corrections_at_any_size(
    trained_run: Path, tmp_path: Path
) -> None:
    """--ensemble 3: the file computes the mean of the network's corrections on the slice,
    its transpose and its half turn, each turned back (also on a non-square slice, where the
    transpose changes the shape), and its card counts the FLOPs of all three passes."""
    model, _ = load_trained(trained_run)
    single = HUModel(model, model.size_multiple).eval()
    out = tmp_path / "manas-5pct.onnx"
    (done,) = export_run(trained_run, out, ensemble=3, device="cpu")
    card = json.loads(done.card_path.read_text())
    assert card["ensemble"] == ["identity", "transpose", "half turn"]
    assert card["gflops_512"] == pytest.approx(3 * card["network_gflops_512"], abs=0.02)
    denoiser = Denoiser(ModelChoice(out, out.stem, "test"), device="cpu", warm_up=None)
    rng = np.random.default_rng(2)
    # Sides that are multiples of the net's stride: no padding, so the turned passes see
    # the same image as a single pass on the turned slice (with padding they would pad
    # other sides of it).
    for shape in ((2, 48, 48), (1, 48, 80)):
        hu = (rng.normal(40, 60, shape) + np.linspace(-1000, 1000, shape[-1])).astype(np.float32)
        x = torch.from_numpy(hu)[:, None]
        with torch.no_grad():
            turned = (
                single(x) - x,
                single(x.transpose(-2, -1)).transpose(-2, -1) - x,
                single(x.flip(-2, -1)).flip(-2, -1) - x,
            )
        expected = (x + sum(turned) / 3)[:, 0].numpy()
        got = denoiser(hu)
        assert got.shape == hu.shape
        assert np.abs(got - expected).max() < 0.1, shape
        # And it is not one pass: the three corrections differ.
        assert (turned[0] - turned[1]).abs().max().item() > 1.0
    odd = rng.normal(40, 60, (1, 61, 77)).astype(np.float32)  # padded, non-square
    assert denoiser(odd).shape == odd.shape


def test_the_net_changes_the_image_and_keeps_out_of_range_values(exported) -> None:
    """HU in, HU out: air and soft tissue stay where they were (within noise), scanner
    padding below the training range passes through instead of being clipped, and air noise
    below HU_MIN is read as the network saw it in training (clamped), not kept."""
    denoiser = Denoiser(exported["float32"], device="cpu", warm_up=None)
    rng = np.random.default_rng(1)
    hu = np.full((1, 32, 32), 40.0, dtype=np.float32)
    hu[0, :, :8] = -3024.0  # outside the reconstruction circle
    hu[0, :, 8:16] = -1000.0 + rng.normal(0, 60, (32, 8)).astype(np.float32)  # noisy air
    hu[0, 8:24, 20:28] += rng.normal(0, 50, (16, 8)).astype(np.float32)
    out = denoiser(hu)
    assert np.abs(out[0, :, :8] + 3024.0).max() < 200  # kept, not clipped to -1024
    assert out[0, :, :8].mean() < HU_MIN - 1000
    air_in, air_out = hu[0, :, 9:15], out[0, :, 9:15]
    assert abs(float(np.median(air_out)) + 1000) < 100
    # About a third of the air lies below -1024 HU in the input; what was below -1100 (the
    # tail the network never saw) must not come back as it was.
    assert np.mean(air_in < -1100) > 0.03
    assert np.mean(air_out < -1100) < 0.5 * np.mean(air_in < -1100)
    assert abs(float(np.median(out[0, :, 20:28])) - 40) < 100
    assert not np.array_equal(out, hu)


def test_metadata_and_card_are_complete(exported, trained_run: Path) -> None:
    path = exported["float32"]
    card = json.loads(path.with_name("manas-5pct.card.json").read_text())
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    required = ("name", "dose_percent", "genotype", "parameters", "gflops_512", "training",
                "citations", "metrics", "software_version", "intended_use",
                "verification")  # fmt: skip
    for key in required:
        assert key in card and key in meta, key
    assert card["sha256"] == sha256(path)
    assert card["name"] == "manas-5pct" and card["dose_percent"] == 5.0
    assert "not for primary diagnosis" in card["intended_use"].lower()
    assert card["parameters"] > 0 and card["gflops_512"] > 0
    assert json.loads(meta["genotype"]) == json.loads((trained_run / "genotype.json").read_text())
    citations = "\n".join(card["citations"].values())
    assert "10.7937/TCIA.ESHQ-4D90" in citations  # from the pancreas folder's CITATION.txt
    assert "A. Site (2026) own data" in citations
    # Keyed by series folder, not by this machine's path; each series with what it was for.
    assert "pancreas-ct-cb-001" in card["citations"]
    assert not any(Path(key).is_absolute() for key in card["citations"])
    roles = {row["folder"]: row["role"] for row in card["training"]["series"]}
    assert roles == {"pancreas-ct-cb-001": "training", "lung-pet-ct-dx-a0001": "test"}
    low, net = card["metrics"]["low_dose_input"], card["metrics"]["denoised"]
    assert set(low) == set(net) >= {"psnr", "ssim", "psnr_window", "ssim_window"}
    assert "lung-pet-ct-dx-a0001" in card["metrics"]["on"]
    # A model copied without its card still says what it is.
    bare = path.parent / "bare" / "copy.onnx"
    bare.parent.mkdir()
    bare.write_bytes(path.read_bytes())
    assert Denoiser(bare, device="cpu", warm_up=None).card["genotype"] == card["genotype"]


def test_runtime_falls_back_to_cpu_with_one_clear_line(
    exported, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture
) -> None:
    if cuda_works():  # onnxruntime's own view, not torch's
        pytest.skip("a GPU is present: the fallback is not what happens here")
    with caplog.at_level(logging.INFO, logger="manas_infer.runtime"):
        denoiser = Denoiser(exported["float32"], device="auto", warm_up=(64, 64))
    assert denoiser.provider == "CPUExecutionProvider"
    lines = [r.getMessage() for r in caplog.records if r.name == "manas_infer.runtime"]
    assert len(lines) == 1 and "CPUExecutionProvider" in lines[0]
    assert "CUDAExecutionProvider unavailable" in lines[0]
    out, err = capfd.readouterr()
    assert "EP Error" not in out + err and "onnxruntime_src" not in out + err


def test_asking_for_cuda_without_it_fails_clearly(exported) -> None:
    if cuda_works():  # onnxruntime's own view, not torch's
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="--device cuda was asked for"):
        Denoiser(exported["float32"], device="cuda", warm_up=None)


def test_missing_or_corrupt_model_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"nothing\.onnx: no such model file"):
        Denoiser(tmp_path / "nothing.onnx", device="cpu")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf" * 100)
    with pytest.raises(ModelError, match=r"corrupt\.onnx: not a readable ONNX model"):
        Denoiser(corrupt, device="cpu")
    with pytest.raises(ModelError, match=r"no model named 'manas-7pct'.*available: corrupt\)"):
        resolve_model(dose=7, folder=tmp_path)


def test_export_refuses_unfinished_runs_and_existing_files(trained_run: Path, exported) -> None:
    with pytest.raises(ExportError, match="exists already"):
        export_run(trained_run, exported["float32"])
    unfinished = trained_run.parent / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text((trained_run / "config.json").read_text())
    with pytest.raises(ExportError, match="has not finished"):
        export_run(unfinished, exported["float32"].parent / "x.onnx")
    assert latest_finished_run(trained_run.parent) == trained_run


def test_model_choice_and_the_models_command(exported) -> None:
    folder = exported["float32"].parent
    assert resolve_model(folder=folder).name == "manas-5pct"
    assert resolve_model(dose=5, folder=folder).why == "--dose 5"
    assert resolve_model(str(exported["float16"]), dose=10, folder=folder).why == "--model"
    names = [m.name for m in list_models(folder)]
    assert names == ["manas-5pct", "manas-5pct.fp16"]
    result = runner.invoke(app, ["models", "--folder", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert listed[0]["name"] == "manas-5pct" and listed[0]["default"]
    assert listed[1]["precision"] == "float16" and listed[0]["dose_percent"] == 5.0
    assert listed[0]["noise_grain"] == "fine"  # trained without --noise-texture


def test_export_command_defaults_to_the_newest_finished_run(trained_run: Path, tmp_path) -> None:
    out = tmp_path / "cli.onnx"
    result = runner.invoke(app, ["export", "--runs", str(trained_run.parent), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and (tmp_path / "cli.card.json").is_file()
    assert not list(tmp_path.glob(".*partial*"))
    result = runner.invoke(app, ["export", "--runs", str(tmp_path / "none"), "--out", str(out)])
    assert result.exit_code == 1 and "no finished training run" in result.output


def test_the_default_model_is_shipped() -> None:
    assert resolve_model().path.is_file()


SHIPPED = sorted(models_dir().glob("manas-*pct.onnx"))


@functools.cache
def redcnn_gflops() -> float:
    return count_flops(build_baseline("redcnn"), 512, 512) / 1e9


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_models_are_complete_and_load(path: Path) -> None:
    """Each model in models/ is verified, a few MB, with a complete card."""
    dose = json.loads(path.with_name(path.stem + ".card.json").read_text())["dose_percent"]
    choice = resolve_model(dose=dose)
    assert choice.path == path
    card = json.loads(choice.path.with_name(f"{choice.name}.card.json").read_text())
    assert card["dose_percent"] == dose and card["precision"] == "float32"
    assert card["sha256"] == sha256(choice.path)
    assert choice.path.stat().st_size < 5e6
    assert card["verification"]["ok"] and card["verification"]["max_abs_diff_hu"] < 0.1
    assert "not for primary diagnosis" in card["intended_use"].lower()
    citations = "\n".join(card["citations"].values())
    for doi in ("10.7937/TCIA.ESHQ-4D90", "10.1148/ryai.230024", "10.7937/TCIA.2020.NNC2-0461"):
        assert doi in citations
    assert card["training"]["test_patients"] == ["lung-pet-ct-dx-a0002", "ge-head-std"]
    roles = {row["folder"]: row["role"] for row in card["training"]["series"]}
    assert roles == {"pancreas-ct-cb-001": "training", "totalseg-example-j2k": "training",
                     "lung-pet-ct-dx-a0002": "test", "ge-head-std": "test"}  # fmt: skip
    assert not any(Path(key).is_absolute() for key in card["citations"])
    base = card["training"]["fine_tuned_from"]  # the whole budget: every run of the chain
    while "fine_tuned_from" in base:
        assert base["seconds"]["retrain"] > 0, base
        base = base["fine_tuned_from"]
    assert base["seconds"]["retrain"] > 3000 and base["augmentation"]["noise"] == [0.4, 3.0]
    low, net = card["metrics"]["low_dose_input"], card["metrics"]["denoised"]
    assert set(low) == set(net) >= {"psnr", "ssim", "psnr_window", "ssim_window"}
    # Issue 12: a slice costs at most a tenth of RED-CNN's FLOPs, every pass of the
    # self-ensemble counted.
    passes = len(card.get("ensemble", ["identity"]))
    assert card["gflops_512"] == pytest.approx(passes * card.get("network_gflops_512", 0), 0.01)
    assert card["gflops_512"] <= redcnn_gflops() / 10
    fp16 = choice.path.with_name(f"{choice.name}.fp16.onnx")  # only where export's gate passed
    if fp16.is_file():
        assert fp16.stat().st_size < choice.path.stat().st_size
        assert json.loads(fp16.with_name(f"{choice.name}.fp16.card.json").read_text())[
            "verification"
        ]["ok"]
    denoiser = Denoiser(choice, device="cpu", warm_up=None)
    assert denoiser.run(np.full((40, 40), 40.0, np.float32)).shape == (40, 40)


def test_float16_variant_is_chosen_by_precision(exported) -> None:
    """auto stays float32 on the CPU; float16 asks for the verified half-precision file."""
    on_cpu = Denoiser(exported["float32"], device="cpu", warm_up=None)
    assert on_cpu.path == exported["float32"]
    half = Denoiser(exported["float32"], device="cpu", warm_up=None, precision="float16")
    assert half.path == exported["float16"] and half.card["precision"] == "float16"
    lone = exported["float32"].parent / "lone" / "x.onnx"
    lone.parent.mkdir()
    lone.write_bytes(exported["float32"].read_bytes())
    with pytest.raises(ModelError, match=r"x\.fp16\.onnx: no float16 variant of x"):
        Denoiser(lone, precision="float16")
