"""``inspect``, ``simulate`` and ``phantom``: read series, write simulated and synthetic ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from manas_infer.cli.common import SimulationMode, _simulator
from manas_infer.console import console, report_problem
from manas_infer.errors import InputProblem

if TYPE_CHECKING:
    from manas_infer.data.series import CTSeries


def inspect(
    paths: list[Path] = typer.Argument(..., help="Folders (searched recursively) or files."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """List the CT series found under PATHS and every file or series that cannot be used."""
    from manas_infer.jobs.each_series import scan_inputs

    found, problems = scan_inputs(paths)
    if as_json:
        _print_json(found, problems)
    else:
        _print_table(found)
    if problems or not found:
        raise typer.Exit(1)


def _print_json(found: list[CTSeries], problems: list[InputProblem]) -> None:
    rows = [
        {
            "series_uid": series.series_uid,
            "description": series.description,
            "slices": series.n_slices,
            "rows": series.shape[0],
            "columns": series.shape[1],
            "pixel_spacing_mm": list(series.pixel_spacing),
            "slice_spacing_mm": series.slice_spacing,
            "transfer_syntax": series.transfer_syntax,
            "folder": str(series.folder),
            "warnings": series.warnings,
        }
        for series in found
    ]
    problems_out = [{"path": str(problem.path), "problem": problem.problem} for problem in problems]
    print(json.dumps({"series": rows, "problems": problems_out}, indent=2))


def _print_table(found: list[CTSeries]) -> None:
    from rich.table import Table

    table = Table(title=f"{len(found)} CT series")
    for column in ("Series", "Slices", "Matrix", "Pixel mm", "Slice mm", "Encoding", "Folder"):
        table.add_column(column)
    for series in found:
        spacing = series.slice_spacing
        table.add_row(
            series.description or "(none)",
            str(series.n_slices),
            f"{series.shape[0]}x{series.shape[1]}",
            f"{series.pixel_spacing[0]:.3f}",
            f"{spacing:.2f}" if spacing else "-",
            series.transfer_syntax,
            str(series.folder),
        )
    console.print(table)
    for series in found:
        for warning in series.warnings:
            console.print(f"[yellow]warning:[/yellow] {series.folder}: {warning}")


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
    from manas_infer.jobs.simulate import simulate_all

    simulator = _simulator(dose, views, mode.value, device)
    results, problems = simulate_all([series_dir], simulator, out, seed, batch, preview, overwrite)
    if as_json:
        problem_lines = [str(problem) for problem in problems]
        print(json.dumps({"series": results, "problems": problem_lines}, indent=2))
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
