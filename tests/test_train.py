"""`manas-infer train`: search -> derive -> retrain -> evaluate on real CT, resume, the skip
rule, bad input, and torchrun (gloo on the CPU)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from manas_infer.cli import app
from manas_infer.train import run as run_module
from manas_infer.train import search as search_module
from manas_infer.train.augment import Augmentation
from manas_infer.train.derive import MAX_SKIP_CONNECTIONS
from manas_infer.train.distributed import DistContext
from manas_infer.train.genotype import Genotype
from manas_infer.train.presets import PRESETS
from manas_infer.train.run import RunConfig, create_run
from manas_infer.train.search import capped_cells
from manas_infer.train.start import _given_architecture
from manas_infer.train.trainer import Trainer

runner = CliRunner()


def _config(data_root: Path, cache: Path, **preset_changes) -> RunConfig:
    preset = PRESETS["tiny"].with_overrides(**preset_changes)
    return RunConfig(
        preset=preset, dose=5.0, data_root=str(data_root), cache_root=str(cache),
        test_patients=("lung-pet-ct-dx-a0001",), seed=3, perceptual_weight=0.0, n_views=90,
    )  # fmt: skip


def _weights(folder: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(folder / "checkpoints" / name, weights_only=False)["state_dict"]


def test_tiny_run_beats_the_low_dose_input(data_root: Path, tmp_path: Path) -> None:
    config = _config(
        data_root,
        tmp_path / "cache",
        retrain_epochs=25,
        max_slices_per_patient=16,
        size=32,
        patches_per_slice=3,
        lr=2e-3,
    )
    folder = create_run(tmp_path / "runs", config)
    metrics = Trainer(folder, config, DistContext(torch.device("cpu"))).run()
    low, net = metrics["mean_sd"]["low_dose"], metrics["mean_sd"]["network"]
    assert metrics["test_slices"] == 48  # 16 slices x 3 patches
    assert net["psnr"][0] > low["psnr"][0] + 0.5, (low["psnr"], net["psnr"])
    assert net["ssim"][0] > low["ssim"][0]
    for name in ("config.json", "dataset.json", "genotype.json", "genotype.png", "curves.png",
                 "metrics.json", "checkpoints/best.pt", "checkpoints/last.pt"):  # fmt: skip
        assert (folder / name).is_file(), name
    genotype = Genotype.load(folder / "genotype.json")
    assert (genotype.L, genotype.D) == (config.preset.L, config.preset.D)
    assert metrics["parameters"] > 0 and metrics["gflops_512"] > 0
    assert len(metrics["per_slice"]["network"]["psnr"]) == 48


def test_resume_after_a_kill_gives_the_same_weights(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With augmentation: its random draws must resume exactly too.
    config = replace(_config(data_root, tmp_path / "cache"), augment=Augmentation().to_dict())
    straight = create_run(tmp_path / "a", config)
    Trainer(straight, config, DistContext(torch.device("cpu"))).run()

    killed = create_run(tmp_path / "b", config)
    saves = {"n": 0}
    original = Trainer._save_state

    def die_after_four_epochs(self, **modules):
        original(self, **modules)
        saves["n"] += 1
        if saves["n"] == 4:  # the state of search epoch 3 of 3 is on disk, retrain epoch 1 too
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(Trainer, "_save_state", die_after_four_epochs)
    with pytest.raises(KeyboardInterrupt):
        Trainer(killed, config, DistContext(torch.device("cpu"))).run()
    monkeypatch.setattr(Trainer, "_save_state", original)
    assert run_module.run_stage(killed) == "retrain"
    Trainer(killed, run_module.load_run_config(killed), DistContext(torch.device("cpu"))).run()

    for name in ("last.pt", "best.pt"):
        a, b = _weights(straight, name), _weights(killed, name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{name} {key}")
    assert (straight / "genotype.json").read_text() == (killed / "genotype.json").read_text()


def test_skip_rule_stops_the_search_and_keeps_the_last_valid_architecture(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(data_root, tmp_path / "cache", search_epochs=5, warmup_epochs=1)
    derived: list[Genotype] = []
    real_derive = search_module.derive_genotype

    def skip_heavy_from_epoch_three(model, K):
        genotype = real_derive(model, K)
        if len(derived) >= 2:  # epochs 3+: the alphas "collapse" into skips
            cells = dict(genotype.cells)
            cells["transfer"] = ("skip_connect",) * len(cells["transfer"])
            genotype = Genotype(C=genotype.C, L=genotype.L, D=genotype.D, P=genotype.P,
                                cells=cells, edges=genotype.edges)  # fmt: skip
        derived.append(genotype)
        return genotype

    monkeypatch.setattr(search_module, "derive_genotype", skip_heavy_from_epoch_three)
    folder = create_run(tmp_path / "runs", config)
    Trainer(folder, config, DistContext(torch.device("cpu"))).run()
    state = torch.load(folder / "checkpoints" / "state.pt", weights_only=False)
    assert state["search_stopped_early"]["epoch"] == 3
    assert len(derived) == 3, "no search epoch after the stop"
    kept = Genotype.load(folder / "genotype.json")
    assert kept.to_json() == derived[1].to_json(), "the last architecture with <= 2 skips"


def test_fine_tuning_starts_from_the_given_weights(data_root: Path, tmp_path: Path) -> None:
    """--init-weights (how the 10 and 2.5 % models are made from the 5 % one): no search,
    the source's architecture, and the first step starts from its weights: with a
    vanishing learning rate the fine-tuned net is the source net."""
    source_config = _config(data_root, tmp_path / "cache", retrain_epochs=1)
    source = create_run(tmp_path / "runs", source_config)
    Trainer(source, source_config, DistContext(torch.device("cpu"))).run()
    tuned_config = replace(
        _config(data_root, tmp_path / "cache", retrain_epochs=1, lr=1e-12, lr_min=1e-12),
        dose=10.0,
        genotype=(source / "genotype.json").read_text(),
        init_weights=str(source / "checkpoints" / "best.pt"),
    )
    tuned = create_run(tmp_path / "runs", tuned_config)
    Trainer(tuned, tuned_config, DistContext(torch.device("cpu"))).run()
    state = torch.load(tuned / "checkpoints" / "state.pt", weights_only=False)
    assert state.get("search_skipped") and "search_model" not in state
    before, after = _weights(source, "best.pt"), _weights(tuned, "best.pt")
    assert before.keys() == after.keys()
    for name in before:
        assert torch.allclose(before[name], after[name], atol=1e-6), name
    scratch = replace(tuned_config, init_weights=None)
    fresh = create_run(tmp_path / "runs", scratch)
    Trainer(fresh, scratch, DistContext(torch.device("cpu"))).run()
    assert not torch.allclose(_weights(fresh, "best.pt")["stem.weight"], before["stem.weight"])


def test_a_fine_tune_that_goes_wrong_ends_where_it_started(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fine-tune whose steps only make the network worse (RED-CNN at lr 3e-4 collapsed to
    its input): the starting weights are validated as epoch 0 and stay best.pt when no epoch
    beats them, so the run is scored on them, and it says so."""
    source_config = _config(data_root, tmp_path / "cache", retrain_epochs=1)
    source = create_run(tmp_path / "runs", source_config)
    Trainer(source, source_config, DistContext(torch.device("cpu"))).run()

    def wreck(self: torch.optim.Optimizer, closure: object = None) -> None:
        with torch.no_grad():  # a finite step that ruins any denoiser: no divergence guard
            for group in self.param_groups:
                for weight in group["params"]:
                    weight.add_(0.5)

    monkeypatch.setattr(torch.optim.Adam, "step", wreck)
    wrecked_config = replace(
        _config(data_root, tmp_path / "cache", retrain_epochs=1),
        genotype=(source / "genotype.json").read_text(),
        init_weights=str(source / "checkpoints" / "best.pt"),
    )
    wrecked = create_run(tmp_path / "runs", wrecked_config)
    Trainer(wrecked, wrecked_config, DistContext(torch.device("cpu"))).run()
    before, best = _weights(source, "best.pt"), _weights(wrecked, "best.pt")
    assert all(torch.equal(before[name], best[name]) for name in before)
    last = _weights(wrecked, "last.pt")
    assert not all(torch.equal(before[name], last[name]) for name in before)
    metrics = json.loads((wrecked / "metrics.json").read_text())
    assert metrics["best_epoch"] == 0
    said = " ".join("".join(capsys.readouterr()).split())
    assert "no epoch of the fine-tune beat its starting weights" in said


def test_a_fine_tune_may_grow_the_architecture(data_root: Path, tmp_path: Path) -> None:
    """--init-weights with a --genotype that only adds kept edges (recipe v8): accepted, the
    trained cells carry over, the new path starts at zero; any other genotype is refused."""
    searched = _tiny_genotype()
    one_path = replace(searched, edges=(((0, 1), (1, 1)), ((1, 1), (2, 1)), ((2, 1), (3, 1))))
    assert searched.grows(one_path)
    source_config = replace(_config(data_root, tmp_path / "cache", retrain_epochs=1),
                            genotype=one_path.to_json())  # fmt: skip
    source = create_run(tmp_path / "runs", source_config)
    Trainer(source, source_config, DistContext(torch.device("cpu"))).run()
    grown_file, other_file = tmp_path / "grown.json", tmp_path / "other.json"
    searched.save(grown_file)
    replace(searched, C=searched.C * 2).save(other_file)
    options = SimpleNamespace(init_weights=source, arch="manas", genotype=grown_file)
    assert _given_architecture(options, PRESETS["tiny"]) == searched.to_json()
    with pytest.raises(ValueError, match="only adds kept edges"):
        _given_architecture(replace_options(options, genotype=other_file), PRESETS["tiny"])
    grown_config = replace(
        _config(data_root, tmp_path / "cache", retrain_epochs=1, lr=1e-12, lr_min=1e-12),
        genotype=searched.to_json(), init_weights=str(source / "checkpoints" / "best.pt"),
    )  # fmt: skip
    grown = create_run(tmp_path / "runs", grown_config)
    Trainer(grown, grown_config, DistContext(torch.device("cpu"))).run()
    before, after = _weights(source, "best.pt"), _weights(grown, "best.pt")
    assert set(before) < set(after)
    for name in before:
        assert torch.allclose(before[name], after[name], atol=1e-6), name
    new = {name.split(".")[1] for name in set(after) - set(before)}
    into_old = [key for key in new if key.startswith("L2_D1")]  # feeds the old block (2, 1)
    zero = [after[f"cells.{key}.project.weight"].abs().max() < 1e-9 for key in into_old]
    assert into_old and all(zero), "the new path starts at zero (lr 1e-12: still there)"


def _tiny_genotype() -> Genotype:
    """Every edge of the tiny grid (L = 2, D = 2) that reaches the head, P = 2 cells."""
    ops = ("conv_3x3", "skip_connect", "sep_conv_3x3")
    edges = (((0, 1), (1, 1)), ((0, 1), (1, 2)), ((1, 1), (2, 1)), ((1, 2), (2, 1)),
             ((2, 1), (3, 1)))  # fmt: skip
    cells = dict.fromkeys(("expand", "transfer", "compress"), ops)
    return Genotype(C=4, L=2, D=2, P=2, cells=cells, edges=edges)


def replace_options(options: SimpleNamespace, **changes: object) -> SimpleNamespace:
    return SimpleNamespace(**{**vars(options), **changes})


def test_a_run_copied_to_another_machine_is_pointed_at_its_data(tmp_path: Path) -> None:
    """--resume --data/--cache: a long run kept in the repository continues elsewhere."""
    config = _config(tmp_path / "old-data", tmp_path / "old-cache")
    folder = create_run(tmp_path / "runs", config)
    moved = run_module.moved_run(folder, config, tmp_path / "new-data", None)
    reloaded = run_module.load_run_config(folder)
    assert reloaded == moved
    assert reloaded.data_root == str((tmp_path / "new-data").resolve())
    assert reloaded.cache_root == config.cache_root
    assert replace(reloaded, data_root=config.data_root) == config, "nothing else changes"


def test_capped_cells_limit_skips() -> None:
    alphas = {t: torch.zeros(6, 7) for t in ("expand", "transfer", "compress")}
    alphas["transfer"][:, 0] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])  # skip wins all
    cells = capped_cells(alphas)
    assert sum(op == "skip_connect" for op in cells["transfer"]) == MAX_SKIP_CONNECTIONS
    assert cells["transfer"][:2] == ("skip_connect", "skip_connect")  # the strongest two


def _train(*args: str, env: dict | None = None):
    return runner.invoke(app, ["train", *map(str, args)], env=env, catch_exceptions=False)


def test_bad_input_is_refused_before_work(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    runs = tmp_path / "runs"
    common = ("--runs", runs, "--cache", tmp_path / "c", "--perceptual-weight", "0")
    result = _train("--dose", "5", "--data", empty, "--preset", "tiny", *common)
    assert result.exit_code == 1
    assert "no DICOM files or CT volumes found" in " ".join(result.output.split())
    result = _train("--dose", "0", "--data", empty, *common)
    assert result.exit_code == 2 and "dose" in result.output
    result = _train("--dose", "5", "--data", empty, "--preset", "small", "--size", "30", *common)
    assert result.exit_code == 2 and "does not fit" in " ".join(result.output.split())
    result = _train("--dose", "5", "--data", tmp_path / "nowhere", *common)
    assert result.exit_code == 2 and "does not exist" in " ".join(result.output.split())
    no_vgg = _train(
        "--dose", "5", "--data", empty, "--runs", runs, "--cache", tmp_path / "c",
        env={"TORCH_HOME": str(tmp_path / "hub")},
    )  # fmt: skip
    assert no_vgg.exit_code == 2
    assert "--perceptual-weight 0" in " ".join(no_vgg.output.split())
    result = _train("--dose", "5", "--data", empty, "--init-weights", tmp_path / "none", *common)
    assert result.exit_code == 2 and "missing" in result.output  # the panel wraps the path
    assert not runs.exists() or not any(runs.iterdir()), "no run directory for refused input"


def test_no_data_given_says_how_to_point_at_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MANAS_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    result = _train("--dose", "5", "--perceptual-weight", "0")
    assert result.exit_code == 2
    assert "MANAS_DATA" in " ".join(result.output.split())


@pytest.mark.slow
def test_torchrun_two_processes(data_root: Path, tmp_path: Path) -> None:
    """The multi-GPU path, run with two CPU processes over gloo."""
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={port}",
        "-m", "manas_infer", "train", "--dose", "5", "--data", str(data_root), "--preset", "tiny",
        "--test-patient", "lung-pet-ct-dx-a0001", "--perceptual-weight", "0", "--views", "90",
        "--runs", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache"), "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "MANAS_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (folder,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["test_slices"] == 8
    assert (folder / "checkpoints" / "best.pt").is_file()
