"""The command line's surface: help for every command and option, --version, and the exit
codes and one-line messages for bad options and bad input (no tracebacks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import CT, need
from typer.main import get_command
from typer.testing import CliRunner

import manas_infer.config as config
from manas_infer import __version__
from manas_infer.cli import app

# A wide terminal keeps each option's help on one line of the rich help panels.
runner = CliRunner(env={"MANAS_NO_PROGRESS": "1", "COLUMNS": "300"})
EXPECTED_COMMANDS = (
    "inspect", "simulate", "demo", "prepare", "phantom", "train", "export", "models", "denoise",
)  # fmt: skip
SOME_OPTIONS = {
    "inspect": ["--json"],
    "simulate": ["--dose", "--out", "--mode", "--views", "--seed", "--preview", "--overwrite"],
    "demo": ["--out", "--dose", "--device"],
    "prepare": ["--data", "--dose", "--size", "--test-patient", "--max-slices", "--cache"],
    "phantom": ["--slices", "--size", "--seed", "--overwrite"],
    "export": ["--out", "--fp16", "--citation", "--runs", "--overwrite"],
    "models": ["--folder", "--json"],
    "denoise": ["--model", "--dose", "--out", "--device", "--batch", "--preview", "--json"],
}
COMMANDS = get_command(app).commands


def _flat(text: str) -> str:
    """Output without the help and error panels' borders and line breaks."""
    return " ".join(text.replace("│", " ").split())


def _invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def no_configured_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No --data, no MANAS_DATA, no config file in the cwd or the (fake) home."""
    monkeypatch.delenv("MANAS_DATA", raising=False)
    monkeypatch.delenv("MANAS_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    user_file = tmp_path / ".config" / "manas-infer" / "config.toml"
    monkeypatch.setattr(config, "config_files", lambda: (Path("manas-infer.toml"), user_file))
    return tmp_path


def test_help_lists_every_command() -> None:
    result = _invoke("--help")
    assert result.exit_code == 0, result.output
    assert set(EXPECTED_COMMANDS) <= set(COMMANDS)
    listed = _flat(result.output)
    for name, command in COMMANDS.items():
        assert f" {name} " in listed, f"{name} missing from --help"
        assert command.help, f"{name} has no description"
        first_words = " ".join(command.help.split()[:4])
        assert first_words in listed, f"{name}'s description missing from --help"
    assert "--version" in listed


def test_no_arguments_shows_the_help() -> None:
    result = _invoke()
    assert "Usage:" in result.output
    assert all(name in result.output for name in EXPECTED_COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_help_describes_every_option(name: str) -> None:
    result = _invoke(name, "--help")
    assert result.exit_code == 0, result.output
    text = _flat(result.output)
    assert f"{name} [OPTIONS]" in text
    for param in COMMANDS[name].params:
        assert param.help, f"{name}: {param.name} has no help"
        if param.param_type_name == "option":
            assert any(opt in text for opt in param.opts), f"{name}: {param.opts} not listed"
        assert _flat(param.help) in text, f"{name}: help of {param.name} not shown"
    for option in SOME_OPTIONS.get(name, []):
        assert option in text, f"{name}: {option} not listed"


def test_version_prints_the_package_version() -> None:
    result = _invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"manas-infer {__version__}"


@pytest.mark.parametrize("dose", ["0", "-5", "150"])
def test_simulate_refuses_a_dose_outside_0_to_100(tmp_path: Path, dose: str) -> None:
    out = tmp_path / "out"
    result = _invoke("simulate", tmp_path, "--dose", dose, "--out", out)
    assert result.exit_code == 2, result.output
    text = _flat(result.output)
    assert "dose_percent must be in (0, 100]" in text
    assert f"got {float(dose)}" in text
    assert "Traceback" not in result.output
    assert not out.exists()


def test_prepare_without_data_says_how_to_point_at_it(no_configured_data: Path) -> None:
    result = _invoke("prepare", "--size", "64", "--views", "90")
    assert result.exit_code == 2, result.output
    text = _flat(result.output)
    assert "no training data given" in text
    assert "--data DIR" in text and "MANAS_DATA" in text and "manas-infer.toml" in text
    assert "Traceback" not in result.output
    assert not (no_configured_data / ".cache").exists(), "nothing was built"


def test_prepare_names_a_data_folder_that_does_not_exist(no_configured_data: Path) -> None:
    missing = no_configured_data / "nowhere"
    result = _invoke("prepare", "--data", missing)
    assert result.exit_code == 2, result.output
    assert f"{missing}: data folder does not exist" in _flat(result.output)


def test_prepare_builds_then_reuses_a_small_dataset(
    no_configured_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need(CT)
    monkeypatch.setenv("MANAS_DATA", str(CT))
    cache = no_configured_data / "cache"
    args = ("prepare", "--size", "64", "--views", "90", "--max-slices", "2")
    args += ("--test-patient", "lung-pet-ct-dx-a0001", "--cache", str(cache), "--device", "cpu")
    first = _invoke(*args)
    assert first.exit_code == 0, first.output
    text = _flat(first.output)
    # 2 test slices; 5 training patients x 2 = 10, less lung-pet-ct-dx-a0002's truncated
    # last slice, named and skipped = 9; arch = max(1, round(9 / 8)) = 1.
    assert "built in" in text and "train 8, arch 1, test 2 slices at 64x64, 5 % dose" in text
    assert "skipped:" in text and "1-30.dcm: pixel data cannot be decoded" in text
    folders = list((cache / "datasets").iterdir())
    assert len(folders) == 1 and (folders[0] / "manifest.json").is_file()
    second = _invoke(*args)
    assert second.exit_code == 0, second.output
    assert "(reused)" in _flat(second.output)


def test_prepare_refuses_an_unknown_test_patient_with_exit_1(
    no_configured_data: Path,
) -> None:
    result = _invoke("prepare", "--data", need(CT), "--test-patient", "Nobody-42")
    assert result.exit_code == 1, result.output
    assert "refused:" in result.output and "'Nobody-42' not found" in _flat(result.output)
    assert "Traceback" not in result.output


def test_inspect_a_folder_without_dicom(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here")
    result = _invoke("inspect", folder)
    assert result.exit_code == 1, result.output
    assert f"{folder}: no DICOM files found" in _flat(result.output)
    assert "0 CT series" in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_inspect_json_on_a_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    result = _invoke("inspect", "--json", tmp_path)
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report == {
        "series": [],
        "problems": [{"path": str(tmp_path), "problem": "no DICOM files found"}],
    }
