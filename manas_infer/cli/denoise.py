"""``demo`` and ``denoise``: a series in, a derived series and a preview out."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from manas_infer.cli.common import (
    _dose_settings,
    _scan,
    series_folder_name,
)
from manas_infer.cli.series import run_simulation
from manas_infer.console import console, progress, report_problem
from manas_infer.errors import InputProblem


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
    import numpy as np

    from manas_infer.data.series import scan
    from manas_infer.demo import demo_series

    source, what = demo_series()
    console.print(f"Demo input: {source}\n  {what}")
    settings = _dose_settings(dose, 720, "insertion")
    low_dir = out / f"{source.name}-{dose:g}pct"
    results, problems = run_simulation(
        [source], settings, low_dir, 0, device, 4, None, overwrite=True
    )
    if problems or not results:
        raise typer.Exit(1)
    normal = scan(source).series[0].read_hu()
    summary, problems = run_denoise(
        [low_dir], out / f"{low_dir.name}-denoised", None, dose, device, 4,
        out / "preview.png", overwrite=True, reference={str(low_dir.resolve()): normal},
        strength=strength,
    )  # fmt: skip
    print_denoise_summary(summary)
    if problems or not summary["series"]:
        raise typer.Exit(1)
    low = scan(low_dir).series[0].read_hu()
    denoised = scan(Path(summary["series"][0]["output"])).series[0].read_hu()
    body = normal > -500
    rmse = {k: float(np.sqrt(np.mean((v[body] - normal[body]) ** 2))) for k, v in
            (("low", low), ("denoised", denoised))}  # fmt: skip
    console.print(
        f"Error against the normal-dose series, inside the body: RMSE {rmse['low']:.1f} HU at "
        f"{dose:g} % dose -> {rmse['denoised']:.1f} HU denoised "
        f"(strength {summary['series'][0]['strength_percent']:g} %)"
    )
    console.print(f"Preview picture: [bold]{summary['series'][0]['preview']}[/bold]")


def default_denoise_out(series_dir: Path, model_name: str) -> Path:
    """A sibling of the input whose name says what it holds: CT -> CT-denoised-manas-5pct."""
    resolved = series_dir.resolve()
    return resolved.parent / f"{resolved.name}-denoised-{model_name}"


def run_denoise(
    inputs: list[Path],
    out: Path | None,
    model: str | None,
    dose: float | None,
    device: str,
    batch: int,
    preview: Path | None,
    overwrite: bool,
    reference: dict | None = None,
    strength: float | None = None,
) -> tuple[dict, list[InputProblem]]:
    """Denoise every CT series under ``inputs``; one line per series and per problem.

    ``--model``/``--dose`` pick one model for every series; without them each series gets
    the model and strength its own measured noise calls for (``runtime/choice.py``). An
    explicit ``strength`` wins either way. ``reference`` maps a source folder to normal-dose
    HU (the demo), shown in the preview.
    """
    from manas_infer.denoise import denoise_series
    from manas_infer.preview import save_comparison
    from manas_infer.runtime import Denoiser, ModelError, resolve_model
    from manas_infer.runtime.choice import Choice, choose
    from manas_infer.runtime.strength import StrengthError, check_strength

    hint = "--model/--dose/--device/--strength"
    denoisers: dict[str, Denoiser] = {}

    def loaded(choice) -> Denoiser:
        key = str(choice.path.resolve())
        if key not in denoisers:
            try:
                denoisers[key] = Denoiser(choice, device=device, batch=batch)
            except (ModelError, ValueError, RuntimeError) as exc:
                raise typer.BadParameter(str(exc), param_hint=hint) from None
        return denoisers[key]

    explicit = model is not None or dose is not None
    try:
        if strength is not None:
            check_strength(strength)
        if explicit:  # a wrong name, dose or device stops before anything is read
            loaded(resolve_model(model, dose))
    except (ModelError, StrengthError) as exc:
        raise typer.BadParameter(str(exc), param_hint=hint) from None
    found, problems = _scan(inputs)
    if not found and not problems:
        problems.append(InputProblem(inputs[0], "no DICOM CT series found"))
        report_problem(problems[-1])
    choices: list[tuple[object, Choice]] = []
    for s in found:
        try:
            choices.append((s, choose(s, model, dose, strength)))
        except InputProblem as problem:  # a slice read for the noise estimate is unreadable
            report_problem(problem)
            problems.append(problem)
        except ModelError as exc:
            raise typer.BadParameter(str(exc), param_hint=hint) from None
    names = {c.model.name for _, c in choices}
    named = names.pop() if len(names) == 1 else "auto"
    base = out or default_denoise_out(inputs[0], resolve_model(model, dose).name if explicit
                                      else named)  # fmt: skip
    results = []
    with progress() as bar:
        for s, choice in choices:
            if not explicit:
                console.print(f"{s.folder}: {choice.why}", soft_wrap=True)
            denoiser = loaded(choice.model)
            target = base if len(found) == 1 else base / series_folder_name(s)
            task = bar.add_task(f"Denoising {s.description[:30]}", total=s.n_slices)
            started = time.perf_counter()
            try:
                done = denoise_series(
                    s,
                    denoiser,
                    target,
                    overwrite,
                    on_slice=lambda n, t=task: bar.advance(t, n),
                    strength=choice.strength,
                    why=choice.why,
                )
            except InputProblem as problem:
                report_problem(problem)
                problems.append(problem)
                continue
            seconds = time.perf_counter() - started
            result = {
                "source": str(s.folder),
                "output": str(done.written.folder),
                "series_uid": done.written.series_uid,
                "slices": done.written.n_slices,
                "seconds": round(seconds, 2),
                "slices_per_s": round(done.written.n_slices / seconds, 2),
                **choice.summary(),
            }
            if preview is not None:
                png = (
                    preview
                    if len(found) == 1
                    else preview.with_name(
                        f"{preview.stem}-{series_folder_name(s)}{preview.suffix}"
                    )
                )
                m = s.n_slices // 2
                label = f"Denoised ({choice.model.name}, {choice.strength:g} %)"
                panels = [("Input", done.source[m]), (label, done.output[m])]
                normal = (reference or {}).get(str(Path(s.folder).resolve()))
                if normal is not None:
                    panels.insert(0, ("Normal dose", normal[m]))
                save_comparison(
                    png,
                    panels,
                    difference=("Removed (input - denoised)", done.source[m] - done.output[m]),
                    title=f"{s.description} - slice {m + 1} of {s.n_slices}",
                )
                result["preview"] = str(png)
            results.append(result)
    first = next(iter(denoisers.values()), None)
    chosen = [c for _, c in choices]
    one_model = len({c.model.name for c in chosen}) == 1
    summary = {
        "model": chosen[0].model.name if one_model else ("mixed" if chosen else None),
        "model_path": str(chosen[0].model.path) if one_model else None,
        "model_choice": chosen[0].model.why if one_model else "noise-based choice per series",
        "strength_percent": chosen[0].strength if len({c.strength for c in chosen}) == 1 else None,
        "provider": first.provider if first else None,
        "provider_reason": first.why if first else None,
        "series": results,
        "problems": [str(p) for p in problems],
        "slices": sum(r["slices"] for r in results),
        "seconds": round(sum(r["seconds"] for r in results), 2),
    }
    return summary, problems


def print_denoise_summary(summary: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{summary['model']} ({summary['model_choice']}) on {summary['provider']}")
    for column in ("series", "model", "strength", "noise HU", "slices", "slices/s", "output"):
        table.add_column(column, overflow="fold")
    for r in summary["series"]:
        noise = r["measured_noise_hu"]
        table.add_row(
            Path(r["source"]).name,
            r["model"],
            f"{r['strength_percent']:g} %",
            "-" if noise is None else f"{noise:.1f}",
            str(r["slices"]),
            f"{r['slices_per_s']:.2f}",
            r["output"],
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
    summary, problems = run_denoise(
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
