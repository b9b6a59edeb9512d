"""Shared fixtures: paths to the real data in ../shared/data, slices read from it, and the
real DICOM validator."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MANAS_SHARED_DATA", REPO.parent / "shared" / "data"))
CT = SHARED_DATA / "ct"
PANCREAS = CT / "pancreas-ct-cb-001"
CHEST = CT / "lung-pet-ct-dx-a0001"
J2K = CT / "totalseg-example-j2k"
LCD_PHANTOM = SHARED_DATA / "phantom" / "lcd-ct"


def need(path: Path) -> Path:
    """Skip, naming the reason, when a piece of ../shared/data is absent (CI always has it)."""
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent")
    return path


def copy_slices(source: Path, target: Path, count: int, start: int = 0) -> list[Path]:
    """Copy ``count`` consecutive files of a real series into ``target`` (tests edit copies)."""
    files = sorted(p for p in need(source).iterdir() if p.is_file() and p.suffix != ".txt")
    target.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(f, target / f.name)) for f in files[start : start + count]]


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy (dicom3tools) prints for one file; skip if not installed."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools; make test installs it)")
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="session")
def chest_slice() -> tuple[np.ndarray, float]:
    """A real 512x512 chest CT slice in HU (float32) and its pixel spacing in mm."""
    from manas_infer.data.series import scan

    series = scan(need(CHEST)).series[0]
    return series.read_slice_hu(32), series.pixel_spacing[0]


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANAS_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real patients: pancreas for training, chest for testing (links, not copies)."""
    root = tmp_path_factory.mktemp("data")
    for source in (need(PANCREAS), need(CHEST)):
        (root / source.name).symlink_to(source, target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def trained_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny MANAS run on real patches (pancreas trains, the chest is held out),
    shared by the export and evaluate tests."""
    import torch

    from manas_infer.train.distributed import DistContext
    from manas_infer.train.presets import PRESETS
    from manas_infer.train.run import RunConfig, create_run
    from manas_infer.train.trainer import Trainer

    base = tmp_path_factory.mktemp("trained")
    preset = PRESETS["tiny"].with_overrides(retrain_epochs=2, max_slices_per_patient=4)
    config = RunConfig(
        preset=preset, dose=5.0, data_root=str(data_root), cache_root=str(base / "cache"),
        test_patients=("lung-pet-ct-dx-a0001",), seed=1, perceptual_weight=0.0, n_views=90,
    )  # fmt: skip
    folder = create_run(base / "runs", config)
    Trainer(folder, config, DistContext(torch.device("cpu"))).run()
    return folder


# Real DICOM peers on loopback: shared by the node tests.


def tool(name: str) -> str:
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )
    if path is None:
        pytest.skip(f"{name} not installed (scripts/install-system-tools.sh installs it)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], object], timeout: float = 60, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
