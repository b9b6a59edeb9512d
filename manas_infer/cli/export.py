"""``export`` and ``models``: a run to ONNX, and the shipped models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from manas_infer.console import console

if TYPE_CHECKING:
    from manas_infer.runtime import ModelInfo


def export(
    run_dir: Path | None = typer.Argument(
        None, help="A finished run directory. Default: the newest finished run in --runs."
    ),
    out: Path | None = typer.Option(
        None, help="The .onnx file to write. Default: models/ARCH-DOSEpct.onnx."
    ),
    float16: bool = typer.Option(
        False,
        "--fp16",
        help="Also write a float16 variant for GPUs (NAME.fp16.onnx). Checked on the GPU, the "
        "runtime may choose it by itself; checked without one, its card says opt-in only.",
    ),
    citation: list[str] = typer.Option(
        [], help="A citation for the training data, added to the card (repeatable)."
    ),
    runs: Path = typer.Option(Path("runs"), help="Folder that holds run directories."),
    overwrite: bool = typer.Option(False, help="Replace a model file that exists."),
    ensemble: int = typer.Option(
        1,
        min=1,
        max=6,
        help="Self-ensemble: run the network on this many orientations of each slice "
        "(identity, transpose, half turn, anti-transpose, mirror, flip) and average the "
        "corrections: less residual noise for N times the FLOPs (the shipped models: 3; "
        "bench/results/compare-v7.md).",
    ),
    device: str = typer.Option(
        "auto",
        help="Where the checks run, as the runtime runs the model: auto (the GPU when "
        "onnxruntime can use one, else the CPU), cpu, cuda or cuda:N. On a GPU float32 is "
        "checked without TF32, the way the runtime runs it.",
    ),
) -> None:
    """Export a trained network to ONNX (HU in, HU out, any slice size), check it against
    torch on real slices, and write it with its model card."""
    from manas_infer.export.pipeline import ExportError, export_run, latest_finished_run

    try:
        folder = run_dir if run_dir is not None else latest_finished_run(runs)
        console.print(f"exporting {folder}")
        done = export_run(folder, out, float16, citation, overwrite, device, ensemble)
    except (ExportError, FileNotFoundError) as exc:
        console.print(f"[red]export failed:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    for item in done:
        parity = item.parity
        console.print(
            f"[green]wrote[/green] {item.path} ({item.path.stat().st_size / 1e6:.2f} MB, "
            f"{parity.precision}) and {item.card_path.name}: onnxruntime ({parity.provider}) vs "
            f"torch max {parity.max_abs_diff_hu:.3g} HU, mean {parity.mean_abs_diff_hu:.2g} HU "
            f"on {parity.checked_on} (tolerance {parity.tolerance_hu} HU)"
            + (f"; {parity.precision}: {item.selection}" if item.selection else ""),
            soft_wrap=True,
        )


def models(
    folder: Path | None = typer.Option(
        None, help="Models folder. Default: $MANAS_MODELS or the shipped models/."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """List the available denoising models: dose, size, parameters and test metrics."""
    from manas_infer.runtime import list_models, models_dir

    found = list_models(folder or models_dir())
    if as_json:
        typer.echo(json.dumps([_model_summary(model) for model in found], indent=2))
        return
    if not found:
        console.print(f"no models in {folder or models_dir()}")
        raise typer.Exit(1)
    _print_models(found, folder or models_dir())


# What ``models --json`` shows of each card.
CARD_FIELDS = ("dose_percent", "precision", "parameters", "gflops_512", "metrics", "problem")


def _model_summary(model: ModelInfo) -> dict:
    from manas_infer.runtime.models import taught_grain

    return {
        "name": model.name,
        "path": str(model.path),
        "default": model.is_default,
        "mb": round(model.megabytes, 2),
        "noise_grain": taught_grain(model.card),
        **{field: model.card.get(field) for field in CARD_FIELDS},
    }


def _print_models(found: list[ModelInfo], folder: Path) -> None:
    from rich.table import Table

    from manas_infer.runtime.models import taught_grain

    table = Table(title=f"models in {folder}")
    table.add_column("name", no_wrap=True)  # manas-5pct and manas-5pct-soft must both show
    for column in ("dose", "noise grain", "precision", "MB", "parameters", "GFLOPs 512²",
                   "test PSNR (dB)", "test SSIM"):  # fmt: skip
        table.add_column(column)
    for model in found:
        card = model.card
        table.add_row(
            model.name + (" (default)" if model.is_default else ""),
            f"{card['dose_percent']:g} %" if "dose_percent" in card else "?",
            taught_grain(card),
            str(card.get("precision", "?")),
            f"{model.megabytes:.2f}",
            f"{card['parameters']:,}" if "parameters" in card else "?",
            f"{card['gflops_512']:.1f}" if "gflops_512" in card else "?",
            _before_after(card, "psnr", ".2f"),
            _before_after(card, "ssim", ".3f"),
        )
        if "problem" in card:
            console.print(f"[red]{card['problem']}[/red]")
    console.print(table)


def _before_after(card: dict, metric: str, number_format: str) -> str:
    """A test metric of the card as "input -> denoised", "?" when the card lacks it."""
    metrics = card.get("metrics", {})
    low, net = metrics.get("low_dose_input", {}), metrics.get("denoised", {})
    if metric not in low or metric not in net:
        return "?"
    return f"{low[metric][0]:{number_format}} -> {net[metric][0]:{number_format}}"


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command()(export)
    app.command()(models)
