"""``export`` and ``models``: a run to ONNX, and the shipped models."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from manas_infer.console import console


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
        done = export_run(folder, out, float16, citation, overwrite, device)
    except (ExportError, FileNotFoundError) as exc:
        console.print(f"[red]export failed:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    for item in done:
        p = item.parity
        console.print(
            f"[green]wrote[/green] {item.path} ({item.path.stat().st_size / 1e6:.2f} MB, "
            f"{p.precision}) and {item.card_path.name}: onnxruntime ({p.provider}) vs torch "
            f"max {p.max_abs_diff_hu:.3g} HU, mean {p.mean_abs_diff_hu:.2g} HU on "
            f"{p.checked_on} (tolerance {p.tolerance_hu} HU)"
            + (f"; {p.precision}: {item.selection}" if item.selection else ""),
            soft_wrap=True,
        )


def models(
    folder: Path | None = typer.Option(
        None, help="Models folder. Default: $MANAS_MODELS or the shipped models/."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """List the available denoising models: dose, size, parameters and test metrics."""
    from rich.table import Table

    from manas_infer.runtime import list_models, models_dir

    found = list_models(folder or models_dir())
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "name": m.name,
                        "path": str(m.path),
                        "default": m.is_default,
                        "mb": round(m.megabytes, 2),
                        **{
                            k: m.card.get(k)
                            for k in (
                                "dose_percent",
                                "precision",
                                "parameters",
                                "gflops_512",
                                "metrics",
                                "problem",
                            )
                        },
                    }
                    for m in found
                ],
                indent=2,
            )
        )
        return
    if not found:
        console.print(f"no models in {folder or models_dir()}")
        raise typer.Exit(1)
    table = Table(title=f"models in {folder or models_dir()}")
    for column in (
        "name",
        "dose",
        "precision",
        "MB",
        "parameters",
        "GFLOPs 512²",
        "test PSNR (dB)",
        "test SSIM",
    ):
        table.add_column(column)
    for m in found:
        card = m.card
        metrics = card.get("metrics", {})
        low, net = metrics.get("low_dose_input", {}), metrics.get("denoised", {})

        def pair(key: str, fmt: str, low=low, net=net) -> str:
            if key not in low or key not in net:
                return "?"
            return f"{low[key][0]:{fmt}} -> {net[key][0]:{fmt}}"

        table.add_row(
            m.name + (" (default)" if m.is_default else ""),
            f"{card['dose_percent']:g} %" if "dose_percent" in card else "?",
            str(card.get("precision", "?")),
            f"{m.megabytes:.2f}",
            f"{card['parameters']:,}" if "parameters" in card else "?",
            f"{card['gflops_512']:.1f}" if "gflops_512" in card else "?",
            pair("psnr", ".2f"),
            pair("ssim", ".3f"),
        )
        if "problem" in card:
            console.print(f"[red]{card['problem']}[/red]")
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command()(export)
    app.command()(models)
