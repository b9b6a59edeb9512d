"""``evaluate``: the comparison table and the physicist's battery."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from manas_infer.cli.common import _device
from manas_infer.console import console, report_problem
from manas_infer.errors import InputProblem


def evaluate(
    methods: list[str] = typer.Argument(
        None,
        help="Run directories (MANAS, RED-CNN, DnCNN) and/or models (a name in models/ or "
        "a .onnx path) to compare.",
    ),
    data: Path | None = typer.Option(
        None,
        help="Full-dose CT series to test on (low dose simulated at --dose, or the real "
        "low-dose series given with --low). Default: the first run's held-out test split. "
        "With --phantom: the LCD-CT phantom folder.",
    ),
    phantom: bool = typer.Option(
        False,
        "--phantom",
        help="Run the CT physicist's battery on the FDA LCD-CT phantom (MITA CCT189) instead "
        "of patient pairs: noise SD and NPS, TTF of the phantom's edge and rods, and a "
        "channelized Hotelling observer's AUC per rod with 95 % intervals, at each of the "
        "phantom's own doses, for the input, BM3D and every run or model given. An option "
        "of evaluate rather than a command of its own because it is the same comparison "
        "(same methods, same runtime, same report folder) on a test object whose ground truth "
        "and doses come with it, so --dose and --low do not apply. The folder: --data, "
        "default ../shared/data/phantom/lcd-ct when present.",
    ),
    physics: bool = typer.Option(
        True,
        help="Add noise SD, noise power spectra (uniform soft tissue) and the TTF of the body "
        "outline to the report of patient pairs.",
    ),
    dose: float | None = typer.Option(None, help="Dose in percent to simulate on --data."),
    low: Path | None = typer.Option(
        None,
        help="A real low-dose series paired with the full-dose series in --data, slices "
        "matched by position (e.g. quarter-dose / full-dose acquisitions).",
    ),
    bm3d: bool = typer.Option(True, help="Add the BM3D row (the bm3d package)."),
    bm3d_sigma: float | None = typer.Option(
        None, help="BM3D noise SD in HU. Default: estimated on each low-dose slice."
    ),
    max_slices: int | None = typer.Option(
        None, min=1, help="Slices per series (evenly spaced), at most."
    ),
    figures: int = typer.Option(3, min=0, help="Slices shown side by side in the report."),
    vgg_weights: Path | None = typer.Option(
        None, help="VGG-16 weights for the perceptual metric; default: the torch hub cache."
    ),
    seed: int = typer.Option(0, help="Seed of the simulated noise."),
    views: int = typer.Option(720, help="Projection angles for the dose simulation."),
    noise_texture: float = typer.Option(
        0.0,
        min=0.0,
        max=3.0,
        help="Give the simulated noise the grain of a soft-tissue kernel at the same SD: the "
        "sigma (pixels) of a Gaussian apodization of the simulator's ramp: 0.8 gives the "
        "grain of the B30f/B40f-like soft kernels here. 0: the ramp's fine grain.",
    ),
    ensemble: int = typer.Option(
        1,
        min=1,
        max=6,
        help="Run each run directory's network over this many orientations of the slice and "
        "average, as 'export --ensemble N' writes it (the shipped models: 3), so a run scores "
        "as its exported file will. Models carry their own.",
    ),
    device: str = typer.Option("auto", help="auto, cpu or cuda: where the networks run."),
    out: Path | None = typer.Option(
        None, help="Report folder. Default: reports/evaluate-YYYYmmdd-HHMMSS."
    ),
) -> None:
    """Compare denoisers as the paper's Tables 2-3 and Fig. 3 do: PSNR, SSIM (full range
    and soft-tissue window) and the perceptual metric, mean +- SD, for the low-dose input,
    BM3D and every run or model given, with parameters, FLOPs, time per slice and
    side-by-side pictures, and as a CT physicist does (noise power spectrum, edge TTF;
    with --phantom also low-contrast detectability), in a report folder (report.md,
    metrics.json, PNGs)."""
    from manas_infer.evaluate import is_run_dir
    from manas_infer.jobs.evaluate import PairsSource, compared_methods, evaluate_pairs

    methods = methods or []
    if phantom:
        _evaluate_phantom(methods, data, dose, low, bm3d, bm3d_sigma, device, out, ensemble)
        return
    if low is not None and data is None:
        raise typer.BadParameter("--low needs the full-dose series in --data", param_hint="--low")
    if data is not None and low is None and dose is None:
        raise typer.BadParameter(
            "give --dose to simulate, or --low for real pairs", param_hint="--dose"
        )
    if dose is not None and not 0 < dose <= 100:
        raise typer.BadParameter(
            f"dose must be in (0, 100] percent, got {dose:g}", param_hint="--dose"
        )
    runs = [method for method in methods if is_run_dir(method)]
    if data is None and not runs:
        raise typer.BadParameter("no --data and no run directory to take a test split from",
                                 param_hint="--data")  # fmt: skip
    torch_device = _device(device)
    if noise_texture > 0 and (data is None or low is not None):
        raise typer.BadParameter(
            "the grain is given to simulated noise: --noise-texture needs --data and --dose",
            param_hint="--noise-texture",
        )
    source = PairsSource(data, low, Path(runs[0]) if runs else None, dose, seed, views,
                         max_slices, noise_texture)  # fmt: skip
    with _refusals():
        rows = compared_methods(methods, device, bm3d, bm3d_sigma, ensemble)
        metrics, pairs, folder = evaluate_pairs(
            source, rows, torch_device.type, out, figures, vgg_weights, bm3d_sigma, physics
        )
    _print_scores(metrics)
    console.print(f"[green]report[/green] {folder / 'report.md'} ({metrics['perceptual']})",
                  soft_wrap=True)  # fmt: skip
    if pairs.problems:
        raise typer.Exit(1)


@contextmanager
def _refusals() -> Iterator[None]:
    """Input, a run or a model that cannot be evaluated is one line and exit code 1."""
    from manas_infer.jobs.evaluate import CannotEvaluate

    try:
        yield
    except InputProblem as problem:
        report_problem(problem, "refused")
        raise typer.Exit(1) from None
    except CannotEvaluate as exc:
        console.print(f"[red]cannot evaluate:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None


def _print_scores(metrics: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{metrics['slices']} slices: {metrics['source']}")
    for column in ("method", "PSNR dB", "SSIM", "PSNR window", "SSIM window", "params", "s/slice"):
        table.add_column(column)
    for method in metrics["methods"]:
        scores = method["mean_sd"]
        table.add_row(
            method["name"], f"{scores['psnr'][0]:.2f}", f"{scores['ssim'][0]:.4f}",
            f"{scores['psnr_window'][0]:.2f}", f"{scores['ssim_window'][0]:.4f}",
            "" if method["parameters"] is None else f"{method['parameters']:,}",
            f"{method['seconds_per_slice'][0]:.3f}",
        )  # fmt: skip
    console.print(table)


def _evaluate_phantom(
    methods: list[str],
    folder: Path | None,
    dose: float | None,
    low: Path | None,
    bm3d: bool,
    bm3d_sigma: float | None,
    device: str,
    out: Path | None,
    ensemble: int = 1,
) -> None:
    """``evaluate --phantom``: the physicist's battery on the LCD-CT phantom alone."""
    from manas_infer.evaluate import default_phantom_dir
    from manas_infer.jobs.evaluate import compared_methods, evaluate_phantom, load_phantom

    if dose is not None or low is not None:
        raise typer.BadParameter("--phantom brings its own doses: no --dose or --low",
                                 param_hint="--phantom")  # fmt: skip
    folder = folder or default_phantom_dir()
    if folder is None:
        raise typer.BadParameter("no LCD-CT phantom found at ../shared/data/phantom/lcd-ct: "
                                 "give its folder with --data", param_hint="--data")  # fmt: skip
    with _refusals():
        lcd = load_phantom(folder)
        rows = compared_methods(methods, device, bm3d, bm3d_sigma, ensemble)
    metrics, report = evaluate_phantom(lcd, rows, _device(device).type, out, bm3d_sigma)
    _print_battery(metrics, folder)
    console.print(
        f"[green]report[/green] {report / 'report.md'} (frequencies in mm^-1; "
        "+ / -: AUC significantly above / below the input's)",
        soft_wrap=True,
    )


def _print_battery(metrics: dict, folder: Path) -> None:
    from rich.table import Table

    battery = metrics["lcd"]
    labels = [insert["label"] for insert in battery["phantom"]["inserts"]]
    table = Table(title=f"LCD phantom {folder}: CHO AUC per rod")
    for column in ("dose", "method", "noise SD", "NPS mean f", "edge f50", *labels):
        table.add_column(column)
    for row in battery["rows"]:
        table.add_row(
            f"{row['dose_percent']} %", row["method"], f"{row['nps']['sd_hu']:.1f}",
            f"{row['nps']['mean_frequency']:.3f}",
            f"{row['ttf_outline']['f50'] or float('nan'):.3f}",
            *(_auc(row["cho"][label]) for label in labels),
        )  # fmt: skip
    console.print(table)


def _auc(rod: dict) -> str:
    """A rod's CHO AUC, marked + or - where it is significantly above or below the input's."""
    verdict = rod.get("vs_input", {}).get("verdict", "")
    return f"{rod['auc']:.2f}" + {"raises": " +", "lowers": " -"}.get(verdict, "")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command()(evaluate)
