"""``inspect``, ``simulate`` and ``phantom``: read series, write simulated and synthetic ones."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from manas_infer.cli.common import (
    SimulationMode,
    _device,
    _dose_settings,
    _scan,
    series_folder_name,
)
from manas_infer.console import console, progress, report_problem
from manas_infer.errors import InputProblem


def inspect(
    paths: list[Path] = typer.Argument(..., help="Folders (searched recursively) or files."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """List the CT series found under PATHS and every file or series that cannot be used."""
    from rich.table import Table

    series, problems = _scan(paths)
    if as_json:
        rows = [
            {
                "series_uid": s.series_uid,
                "description": s.description,
                "slices": s.n_slices,
                "rows": s.shape[0],
                "columns": s.shape[1],
                "pixel_spacing_mm": list(s.pixel_spacing),
                "slice_spacing_mm": s.slice_spacing,
                "transfer_syntax": s.transfer_syntax,
                "folder": str(s.folder),
                "warnings": s.warnings,
            }
            for s in series
        ]
        problems_out = [{"path": str(p.path), "problem": p.problem} for p in problems]
        print(json.dumps({"series": rows, "problems": problems_out}, indent=2))
    else:
        table = Table(title=f"{len(series)} CT series")
        for column in ("Series", "Slices", "Matrix", "Pixel mm", "Slice mm", "Encoding", "Folder"):
            table.add_column(column)
        for s in series:
            spacing = s.slice_spacing
            table.add_row(
                s.description or "(none)",
                str(s.n_slices),
                f"{s.shape[0]}x{s.shape[1]}",
                f"{s.pixel_spacing[0]:.3f}",
                f"{spacing:.2f}" if spacing else "-",
                s.transfer_syntax,
                str(s.folder),
            )
        console.print(table)
        for s in series:
            for warning in s.warnings:
                console.print(f"[yellow]warning:[/yellow] {s.folder}: {warning}")
    if problems or not series:
        raise typer.Exit(1)


def run_simulation(
    inputs: list[Path],
    settings,
    out: Path,
    seed: int,
    device: str,
    batch: int,
    preview: Path | None,
    overwrite: bool,
) -> tuple[list[dict], list[InputProblem]]:
    """Simulate every series under ``inputs``; print a line per series and per problem."""
    from manas_infer.preview import save_comparison
    from manas_infer.simulate.dose import LowDoseSimulator
    from manas_infer.simulate.low_dose_series import simulate_series

    simulator = LowDoseSimulator(settings, device=_device(device))
    dose = settings.dose_percent
    found, problems = _scan(inputs)
    results = []
    with progress() as bar:
        for s in found:
            target = out if len(found) == 1 else out / series_folder_name(s)
            task = bar.add_task(f"Simulating {dose:g} % {s.description[:30]}", total=s.n_slices)
            started = time.perf_counter()
            try:
                written, normal, low = simulate_series(
                    s,
                    simulator,
                    target,
                    seed=seed,
                    batch=batch,
                    overwrite=overwrite,
                    on_slice=lambda n, t=task: bar.advance(t, n),
                )
            except InputProblem as problem:
                report_problem(problem)
                problems.append(problem)
                continue
            seconds = time.perf_counter() - started
            middle = s.n_slices // 2
            noise_sd = float((low[middle] - normal[middle]).std())
            result = {
                "source": str(s.folder),
                "output": str(written.folder),
                "series_uid": written.series_uid,
                "slices": written.n_slices,
                "seconds": round(seconds, 2),
                "noise_sd_hu_middle_slice": round(noise_sd, 1),
            }
            if preview is not None:
                png = (
                    preview
                    if len(found) == 1
                    else preview.with_name(
                        f"{preview.stem}-{series_folder_name(s)}{preview.suffix}"
                    )
                )
                save_comparison(
                    png,
                    [("Normal dose", normal[middle]), (f"Simulated {dose:g} % dose", low[middle])],
                    difference=("Added noise", low[middle] - normal[middle]),
                    title=f"{s.description} - slice {middle + 1} of {s.n_slices}",
                )
                result["preview"] = str(png)
            results.append(result)
            console.print(
                f"[green]wrote[/green] {written.folder}: {written.n_slices} slices at "
                f"{dose:g} % dose in {seconds:.1f} s (added noise SD {noise_sd:.1f} HU in the "
                f"middle slice, {simulator.device.type})"
            )
    return results, problems


def simulate(
    series_dir: Path = typer.Argument(..., help="Folder of normal-dose CT (searched recursively)."),
    dose: float = typer.Option(5.0, "--dose", help="Dose in percent of the source: 10, 5, 2.5..."),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Output folder. One series goes straight into it; several go into "
        "one sub-folder each.",
    ),
    mode: SimulationMode = typer.Option(
        SimulationMode.insertion,
        help="insertion: add simulated noise to the image (keeps its "
        "resolution); reconstruction: reconstruct the noisy projections with FBP.",
    ),
    views: int = typer.Option(720, help="Projection angles over 180 degrees."),
    seed: int = typer.Option(0, help="Noise seed: the same seed gives the same series."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    batch: int = typer.Option(4, min=1, help="Slices simulated at once."),
    preview: Path | None = typer.Option(
        None, help="Write a PNG of the middle slice: normal dose, low dose, difference."
    ),
    overwrite: bool = typer.Option(False, help="Replace output folders that exist."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Simulate a low-dose CT series from a normal-dose one (Poisson and electronic noise in
    the projection domain, as in the MANAS paper) and write it as a derived DICOM series."""
    settings = _dose_settings(dose, views, mode.value)
    results, problems = run_simulation(
        [series_dir], settings, out, seed, device, batch, preview, overwrite
    )
    if as_json:
        print(json.dumps({"series": results, "problems": [str(p) for p in problems]}, indent=2))
    if problems or not results:
        raise typer.Exit(1)


def phantom(
    out: Path = typer.Argument(..., help="Folder to write the synthetic series into."),
    slices: int = typer.Option(32, min=1, help="Number of slices."),
    size: int = typer.Option(512, min=32, help="Matrix size (square)."),
    seed: int = typer.Option(0, help="Seed: varies the synthetic patient."),
    overwrite: bool = typer.Option(False, help="Replace the folder if it exists."),
) -> None:
    """Write a synthetic anthropomorphic CT series (soft tissue, bone, air, lung and small
    low-contrast lesions) as DICOM, for trying the tools with no patient data."""
    from manas_infer.data.synthetic import write_phantom_series

    try:
        folder = write_phantom_series(
            out, n_slices=slices, size=size, seed=seed, overwrite=overwrite
        )
    except InputProblem as problem:
        report_problem(problem, "refused")
        raise typer.Exit(1) from None
    console.print(f"[green]wrote[/green] {folder}: {slices} synthetic slices, {size}x{size}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command()(inspect)
    app.command()(simulate)
    app.command()(phantom)
