"""The paper's baselines (RED-CNN, DnCNN): their papers' sizes, the shared interface, and
the same training, run directory and export as MANAS (``train --arch``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from manas_infer.cli import app
from manas_infer.export.pipeline import export_run
from manas_infer.runtime import Denoiser
from manas_infer.train.baselines import REDCNN, DnCNN, build_baseline
from manas_infer.train.profile import count_flops, count_parameters
from manas_infer.train.run import load_trained, run_stage

runner = CliRunner()


@pytest.mark.parametrize(
    ("net", "parameters"),
    [(REDCNN(), 1_848_865), (DnCNN(), 556_097)],  # the papers: 1.85 M and 0.56 M
)
def test_sizes_shapes_and_a_start_near_the_identity(net: torch.nn.Module, parameters: int) -> None:
    assert count_parameters(net) == parameters
    x = torch.rand(2, 1, 45, 61, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = net(x)
        assert y.shape == x.shape  # any size: size_multiple is 1
        assert torch.equal(y, x + net.residual(x))
    assert net.size_multiple == 1
    assert (y - x).abs().max() * 4096 < 41.0  # within 41 HU of the identity, as MANAS nets


def test_transposed_convolutions_are_counted() -> None:
    # RED-CNN at 64 x 64: encoders shrink 64 -> 60 -> ... -> 44; decoders grow 44 -> 64.
    macs = 0
    side, channels = 64, [1, 96, 96, 96, 96, 96]
    for i in range(5):
        side -= 4
        macs += side * side * channels[i] * 96 * 25
    for i in range(5):
        out = 1 if i == 4 else 96
        macs += side * side * 96 * out * 25  # every input pixel scatters k x k x out
        side += 4
    assert count_flops(REDCNN(), 64, 64) == 2 * macs


def test_unknown_baseline_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown baseline 'unet'"):
        build_baseline("unet")


def _train(tmp: Path, data_root: Path, *extra: str) -> Path:
    runs = tmp / "runs"
    result = runner.invoke(app, [
        "train", "--dose", "5", "--data", str(data_root), "--preset", "tiny",
        "--test-patient", "lung-pet-ct-dx-a0001", "--perceptual-weight", "0",
        "--max-slices", "4", "--retrain-epochs", "2", "--views", "90", "--runs", str(runs),
        "--cache", str(tmp / "cache"), "--device", "cpu", *extra,
    ], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    (folder,) = runs.iterdir()
    return folder


def test_train_arch_dncnn_runs_the_same_pipeline_and_exports(
    data_root: Path, tmp_path: Path
) -> None:
    folder = _train(tmp_path, data_root, "--arch", "dncnn")
    assert folder.name.endswith("-dncnn-5pct-tiny")
    assert run_stage(folder) == "done"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["arch"] == "dncnn" and metrics["parameters"] == 556_097
    assert metrics["seconds"]["search"] == 0.0  # no search for a baseline
    assert not (folder / "genotype.json").exists()
    net, best = load_trained(folder)
    assert isinstance(net, DnCNN) and best["arch"] == "dncnn"

    (item,) = export_run(folder, tmp_path / "models" / "dncnn-5pct.onnx")
    assert item.parity.ok
    card = json.loads(item.card_path.read_text())
    assert card["arch"] == "dncnn" and card["genotype"] is None
    slices = torch.randn(1, 1, 40, 40).numpy() * 50.0
    out = Denoiser(item.path, device="cpu", warm_up=None)(slices[:, 0])
    assert out.shape == (1, 40, 40)


def test_genotype_option_skips_the_search(data_root: Path, tmp_path: Path) -> None:
    first = _train(tmp_path / "a", data_root)
    second = _train(tmp_path / "b", data_root, "--genotype", str(first / "genotype.json"))
    metrics = json.loads((second / "metrics.json").read_text())
    assert metrics["search_skipped"] is True and metrics["seconds"]["search"] == 0.0
    assert (second / "genotype.json").read_text() == (first / "genotype.json").read_text()
    assert metrics["augmentation"]["orientation"] is True  # the command's default


def test_genotype_with_a_baseline_is_refused(data_root: Path, tmp_path: Path) -> None:
    geno = tmp_path / "g.json"
    geno.write_text("{}")
    result = runner.invoke(app, [
        "train", "--dose", "5", "--data", str(data_root), "--arch", "redcnn",
        "--genotype", str(geno), "--runs", str(tmp_path / "runs"),
    ])  # fmt: skip
    assert result.exit_code != 0
    assert "--genotype is a MANAS architecture" in result.output.replace("│", "")
    assert not (tmp_path / "runs").exists()
