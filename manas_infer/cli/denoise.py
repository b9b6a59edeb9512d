"""``demo`` and ``denoise``: a series in, a derived series and a preview out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from manas_infer.cli.common import _simulator
from manas_infer.console import console


def demo(
    out: Path = typer.Option(Path("demo-output"), help="Folder for the demo's output."),
    dose: float = typer.Option(5.0, help="Dose in percent: 10, 5 or 2.5 (a shipped model)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    strength: float | None = typer.Option(
        None,
        min=0,
        max=100,
        help="Percent of the estimated noise removed (0-100). Default: as for denoise.",
    ),
) -> None:
    """The main job on the shipped default: a real chest CT series (the synthetic phantom
    offline) is simulated at low dose, denoised with the shipped model for that dose at the
    default strength, and written as derived series with a preview picture."""
    from manas_infer.jobs.demo import demo_series, run_demo

    source, what = demo_series()
    console.print(f"Demo input: {source}\n  {what}")
    simulator = _simulator(dose, 720, "insertion", device)
    with _settings_as_option_errors():
        outcome = run_demo(source, out, simulator, device, strength)
    if outcome.summary is None:
        raise typer.Exit(1)
    print_denoise_summary(outcome.summary)
    if outcome.rmse_hu is None:
        raise typer.Exit(1)
    rmse, series = outcome.rmse_hu, outcome.summary["series"][0]
    console.print(
        f"Error against the normal-dose series, inside the body: RMSE {rmse['low']:.1f} HU at "
        f"{dose:g} % dose -> {rmse['denoised']:.1f} HU denoised "
        f"(strength {series['strength_percent']:g} %); the normal dose carries "
        f"{outcome.reference_noise_hu:.1f} HU of its own noise"
    )
    console.print(
        f"Simulated noise left: 100 % in the {dose:g} % input -> "
        f"{100 * outcome.noise_left:.0f} % denoised"
    )
    console.print(f"Preview picture: [bold]{series['preview']}[/bold]")


@contextmanager
def _settings_as_option_errors() -> Iterator[None]:
    """A model, dose, device or strength the runtime refuses is an option error (exit 2)."""
    from manas_infer.jobs.denoise_all import DenoiseSettingsError

    try:
        yield
    except DenoiseSettingsError as exc:
        raise typer.BadParameter(
            str(exc), param_hint="--model/--dose/--device/--strength"
        ) from None


def print_denoise_summary(summary: dict) -> None:
    """The run's summary as a table, one row a series, and a line with the totals."""
    from rich.table import Table

    table = Table(title=f"{summary['model']} ({summary['model_choice']}) on {summary['provider']}")
    for column in ("series", "model", "strength", "noise HU", "slices", "slices/s", "output"):
        table.add_column(column, overflow="fold")
    for result in summary["series"]:
        noise = result["measured_noise_hu"]
        table.add_row(
            Path(result["source"]).name,
            result["model"],
            f"{result['strength_percent']:g} %",
            "-" if noise is None else f"{noise:.1f}",
            str(result["slices"]),
            f"{result['slices_per_s']:.2f}",
            result["output"],
        )
    if summary["series"]:
        console.print(table)
    skipped = len(summary["problems"])
    console.print(
        f"{len(summary['series'])} series, {summary['slices']} slices denoised"
        + (f"; [red]{skipped} skipped[/red]" if skipped else "")
    )


def denoise(
    series_dir: Path = typer.Argument(..., help="Folder of CT series (searched recursively)."),
    model: str | None = typer.Option(
        None, help="Model name in models/ or a path to an .onnx file; wins over --dose."
    ),
    dose: float | None = typer.Option(
        None,
        help="Pick the shipped model for this dose: 10, 5 or 2.5 (percent). Without --model "
        "and --dose each series' own noise is measured (soft tissue) and picks the model and "
        "strength: a normal-dose series is left (almost) unchanged; the output says what was "
        "picked and why.",
    ),
    strength: float | None = typer.Option(
        None,
        min=0,
        max=100,
        help="Percent of the estimated noise removed, 0-100 (as vendors' DL reconstruction "
        "levels): 0 returns the input, 100 the network's output. Default with --model/--dose: "
        "90 %: on whole slices of six real series at simulated 10/5/2.5 % dose it never costs "
        "more than 16 % extra error against the full dose over each series' best strength "
        "(100 %: 24 %, on a held-out chest the networks over-smooth; 70 %: 55 %) "
        "(bench/results/noise-choice.md). Without them: fitted to the measured noise, at most "
        "90 %.",
    ),
    out: Path | None = typer.Option(
        None,
        help="Output folder. Default: a sibling, INPUT-denoised-MODEL (MODEL 'auto' when "
        "series got different models). Several series go into one sub-folder each.",
    ),
    device: str = typer.Option(
        "auto", help="auto, cpu, cuda, cuda:N (GPU N) or tensorrt[:N] (experimental)."
    ),
    batch: int = typer.Option(4, min=1, help="Slices per inference call."),
    preview: Path | None = typer.Option(
        None, help="Write a PNG of the middle slice: input, denoised, difference."
    ),
    overwrite: bool = typer.Option(False, help="Replace output folders that exist."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Denoise every CT series in a folder with the shipped model that fits its measured noise
    (or a given model or dose) and write each as a derived DICOM series, next to the input
    unless --out says otherwise. Every series keeps its CT numbers: the very-low-frequency
    part of what the network removes is put back (the bias guard)."""
    from manas_infer.jobs.denoise_all import denoise_all

    with _settings_as_option_errors():
        summary, problems = denoise_all(
            [series_dir], out, model, dose, device, batch, preview, overwrite, strength=strength
        )
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print_denoise_summary(summary)
    if problems or not summary["series"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command()(demo)
    app.command()(denoise)
