"""The ``manas-infer`` command line. Each command parses its options, calls the library and
reports; the work itself lives in the modules it calls."""

from __future__ import annotations

import json
import re
import time
from enum import StrEnum
from pathlib import Path

import typer

from manas_infer import __version__
from manas_infer.console import console, progress, report_problem
from manas_infer.errors import InputProblem

app = typer.Typer(
    help=(
        "Low-dose CT denoising with MANAS (multi-scale, multi-level neural architecture "
        "search): read CT series, simulate low doses, build training data."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


class SimulationMode(StrEnum):
    insertion = "insertion"
    reconstruction = "reconstruction"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"manas-infer {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Low-dose CT denoising with MANAS."""
    _log_to_console()


def _log_to_console() -> None:
    """Library log lines (the runtime's provider choice) go to the stderr console, once."""
    import logging

    from rich.logging import RichHandler

    logger = logging.getLogger("manas_infer")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        handler = RichHandler(console=console, show_time=False, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:40] or "series"


def series_folder_name(series) -> str:
    """A readable, unique folder name for one series among several."""
    number = series.first.get("SeriesNumber") or "x"
    return f"{number}-{_slug(series.description)}-{series.series_uid[-6:].replace('.', '')}"


def _device(name: str):
    from manas_infer.device import resolve_device

    try:
        return resolve_device(name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--device") from None


def _scan(paths: list[Path]):
    """Scan inputs with a progress bar; print every problem; return (series, problems)."""
    from manas_infer.data.series import count_files, scan

    found, problems = [], []
    with progress() as bar:
        for path in paths:
            task = bar.add_task(f"Reading {path.name or path}", total=count_files(path) or None)
            report = scan(path, on_file=lambda t=task: bar.advance(t))
            found += report.series
            problems += report.problems
    for problem in problems:
        report_problem(problem)
    return found, problems


@app.command()
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


def _dose_settings(dose: float, views: int, mode: str):
    from manas_infer.simulate.dose import DoseSettings

    try:
        return DoseSettings(dose_percent=dose, n_views=views, mode=mode)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
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


@app.command()
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


@app.command()
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


@app.command()
def prepare(
    data: Path | None = typer.Option(
        None,
        help="Normal-dose CT root (one folder per patient, or any folder of series and "
        "volumes). Default: $MANAS_DATA or data = 'DIR' in manas-infer.toml.",
    ),
    dose: float = typer.Option(5.0, help="Dose in percent to simulate: 10, 5, 2.5..."),
    size: int = typer.Option(256, help="Slices are resized to size x size (the paper: 256)."),
    test_patient: list[str] = typer.Option(
        [],
        help="PatientID or folder name of a test patient (repeat for several). "
        "Default: --test-patients chosen by --seed.",
    ),
    test_patients: int = typer.Option(1, min=1, help="How many test patients to draw."),
    arch_ratio: int = typer.Option(7, min=1, help="train-data : arch-data = N : 1."),
    max_slices: int | None = typer.Option(
        None, min=1, help="At most this many slices per patient, evenly spaced."
    ),
    views: int = typer.Option(720, help="Projection angles for the dose simulation."),
    volume_hu_offset: float = typer.Option(
        0.0, help="Added to the values of volume files (NIfTI, .mhd) to make HU."
    ),
    seed: int = typer.Option(0, help="Seed for the split and the noise."),
    cache: Path | None = typer.Option(
        None, help="Cache folder. Default: $MANAS_CACHE or ~/.cache/manas-infer, + datasets/."
    ),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
) -> None:
    """Build the training data for a dose: patient-wise train / arch / test split, slices
    resized and simulated at low dose, cached on disk with a manifest (a second run with the
    same data and settings reuses it). `train` does this itself; run it alone to check the
    data or to build the cache ahead of time."""
    from manas_infer.config import ConfigError, cache_root, resolve_data_root
    from manas_infer.data.dataset import DatasetSpec, SplitConfig, prepare_dataset

    try:
        root = resolve_data_root(data)
        spec = DatasetSpec(
            dose=_dose_settings(dose, views, "insertion"),
            size=size,
            split=SplitConfig(tuple(test_patient), test_patients, arch_ratio, max_slices, seed),
            volume_hu_offset=volume_hu_offset,
        )
    except (ConfigError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    folder = (cache or cache_root()) / "datasets"
    started = time.perf_counter()
    with progress() as bar:
        task = bar.add_task(f"Simulating {dose:g} % dose", total=None)
        try:
            prepared, problems = prepare_dataset(
                root,
                spec,
                folder,
                device=_device(device),
                on_total=lambda n: bar.update(task, total=n),
                on_slice=lambda n: bar.advance(task, n),
            )
        except InputProblem as problem:
            report_problem(problem, "refused")
            raise typer.Exit(1) from None
    for problem in problems:
        report_problem(problem)
    counts = prepared.counts()
    state = "reused" if prepared.reused else f"built in {time.perf_counter() - started:.1f} s"
    console.print(
        f"[green]dataset[/green] {prepared.folder} ({state}): train {counts['train']}, "
        f"arch {counts['arch']}, test {counts['test']} slices at {size}x{size}, {dose:g} % dose"
    )


class PresetName(StrEnum):
    auto = "auto"
    paper = "paper"
    small = "small"
    cpu_long = "cpu-long"
    tiny = "tiny"


def _gain_range(text: str) -> tuple[float, float]:
    """'0.4,3.0' -> (0.4, 3.0); a ValueError naming the option otherwise."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--noise-gain takes LOW,HIGH (e.g. 0.4,3.0), got {text!r}") from None
    return low, high


class ArchName(StrEnum):
    manas = "manas"
    redcnn = "redcnn"
    dncnn = "dncnn"


@app.command()
def train(
    dose: float = typer.Option(..., help="Dose in percent to train for: 10, 5, 2.5..."),
    data: Path | None = typer.Option(
        None,
        help="Normal-dose CT root (one folder per patient). Default: $MANAS_DATA or "
        "data = 'DIR' in manas-infer.toml. Never a silent fallback to synthetic images.",
    ),
    arch: ArchName = typer.Option(
        ArchName.manas,
        help="manas: search, derive, retrain; redcnn or dncnn: the paper's baselines, "
        "trained by the same code with the same data, loss and budget (no search).",
    ),
    preset: PresetName = typer.Option(
        PresetName.auto,
        help="paper: L=12 D=4 K=5 P=3, 200 epochs, batch 2, 256x256 (a GPU); "
        "small: a real search and retrain in minutes on a CPU; cpu-long: retrain for ~20 min "
        "on a CPU on 96x96 patches of every slice (with --genotype from a small search); "
        "tiny: seconds, for checks; "
        "auto: paper on a GPU, small otherwise.",
    ),
    test_patient: list[str] = typer.Option(
        [], help="PatientID or folder name of a test patient (repeat for several)."
    ),
    size: int | None = typer.Option(None, help="Override the preset's image size."),
    search_epochs: int | None = typer.Option(None, min=2, help="Override search epochs."),
    retrain_epochs: int | None = typer.Option(None, min=1, help="Override retrain epochs."),
    batch: int | None = typer.Option(None, min=1, help="Override the batch size."),
    max_slices: int | None = typer.Option(None, min=1, help="Slices per patient, at most."),
    perceptual_weight: float = typer.Option(
        1e-4, help="lambda of the VGG-16 perceptual loss (paper: 1e-4); 0 trains on MSE alone."
    ),
    vgg_weights: Path | None = typer.Option(
        None, help="torchvision's vgg16-397923af.pth; default: the torch hub cache."
    ),
    ssim_weight: float = typer.Option(
        0.0, help="Weight of a 1 - SSIM term in the soft-tissue window (texture); 0: off."
    ),
    edge_weight: float = typer.Option(
        0.0, help="Weight of an MSE term on finite differences (edges); 0: off."
    ),
    fresh_noise: bool = typer.Option(
        False, help="Draw a new low-dose noise realisation for every batch, on the device."
    ),
    views: int = typer.Option(720, help="Projection angles for the dose simulation."),
    augment: bool = typer.Option(
        True,
        help="Random orientation, sharpness (unsharp mask 0-8), contrast (x0.5-2 about air) "
        "and noise level (see --noise-gain) of each training pair, so the net transfers to "
        "other reconstructions, anatomy and patient sizes.",
    ),
    noise_gain: str = typer.Option(
        "0.4,3.0",
        help="LOW,HIGH: range of the augmentation's noise gain (log-uniform); gain t is the "
        "noise of dose/t^2. The default spans a head to a large abdomen at one nominal dose.",
    ),
    genotype: Path | None = typer.Option(
        None,
        help="Skip the search and retrain this architecture (a run's genotype.json), e.g. "
        "on your own data.",
    ),
    init_weights: Path | None = typer.Option(
        None,
        help="Fine-tune: start the retraining from this run's weights (a run directory or "
        "its checkpoints/best.pt) instead of from scratch; its architecture is used, so "
        "no search. How the shipped 10 and 2.5 % models are made from the 5 % one.",
    ),
    lr: float | None = typer.Option(None, help="Override the preset's learning rate."),
    seed: int = typer.Option(0, help="Seed: the same seed and data give the same run."),
    device: str = typer.Option(
        "auto",
        help="auto, cpu, cuda or cuda:N (GPU N; bf16 autocast on CUDA). Under torchrun each "
        "process takes the GPU of its LOCAL_RANK: choose GPUs with CUDA_VISIBLE_DEVICES.",
    ),
    checkpoint: bool | None = typer.Option(
        None,
        "--checkpoint/--no-checkpoint",
        help="Force activation checkpointing of the search's super-net on or off. Default: "
        "on only when the GPU's free memory cannot hold a plain search step.",
    ),
    dist_timeout: float = typer.Option(
        120.0,
        min=1.0,
        help="Under torchrun: minutes a process may wait for the others (the main process "
        "prepares the data and evaluates alone) before the process group gives up.",
    ),
    runs: Path = typer.Option(Path("runs"), help="Folder that holds run directories."),
    cache: Path | None = typer.Option(
        None, help="Dataset cache. Default: $MANAS_CACHE or ~/.cache/manas-infer."
    ),
    resume: Path | None = typer.Option(
        None,
        help="Continue a run directory exactly where it stopped (other options are "
        "taken from its config.json, except --data and --cache: where the same data and "
        "cache are on this machine, for a run copied from another).",
    ),
) -> None:
    """Search a MANAS denoiser for a dose, derive it, retrain it from scratch and evaluate
    it on held-out patients, all in one run directory. Multi-GPU: launch with
    `torchrun --nproc_per_node=N -m manas_infer train ...`."""
    from datetime import timedelta

    from manas_infer.config import ConfigError, cache_root, resolve_data_root
    from manas_infer.train.augment import Augmentation
    from manas_infer.train.distributed import init_distributed, shutdown
    from manas_infer.train.presets import PRESETS, check_depth_fits
    from manas_infer.train.run import (
        RunConfig,
        Trainer,
        TrainingDiverged,
        create_run,
        load_run_config,
        moved_run,
        weights_file,
    )

    torch_device = _device(device)
    try:
        if resume is not None:
            config = load_run_config(resume)
            folder = resume
            if data is not None or cache is not None:  # the run moved to another machine
                config = moved_run(folder, config, data, cache)
        else:
            if dose <= 0 or dose > 100:
                raise ValueError(f"dose must be in (0, 100] percent, got {dose:g}")
            name = preset.value
            if name == "auto":
                name = "paper" if torch_device.type == "cuda" else "small"
                console.print(f"preset: {name} ({torch_device.type} found)")
            chosen = PRESETS[name].with_overrides(
                size=size,
                search_epochs=search_epochs,
                retrain_epochs=retrain_epochs,
                batch=batch,
                max_slices_per_patient=max_slices,
                lr=lr,
                checkpoint=checkpoint,
            )
            chosen.check()
            given = None
            start = None
            if init_weights is not None:
                from manas_infer.train.run import read_weights

                start = read_weights(init_weights)
                if genotype is not None:
                    raise ValueError("--init-weights brings its own architecture; drop --genotype")
                if start.get("arch", "manas") != arch.value:
                    raise ValueError(
                        f"{init_weights} holds a {start.get('arch', 'manas')} network, not "
                        f"--arch {arch.value}"
                    )
            if genotype is not None and arch != ArchName.manas:
                raise ValueError(
                    f"--genotype is a MANAS architecture; --arch {arch.value} has none"
                )
            if genotype is not None:
                from manas_infer.train.genotype import Genotype

                given = Genotype.load(genotype)
                check_depth_fits(given.D, chosen.size, str(genotype))
            config = RunConfig(
                preset=chosen,
                dose=dose,
                data_root=str(resolve_data_root(data).resolve()),
                cache_root=str((cache or cache_root()).resolve()),
                test_patients=tuple(test_patient),
                seed=seed,
                perceptual_weight=perceptual_weight,
                ssim_weight=ssim_weight,
                edge_weight=edge_weight,
                vgg_weights=str(vgg_weights) if vgg_weights else None,
                fresh_noise=fresh_noise,
                n_views=views,
                augment=Augmentation(noise=_gain_range(noise_gain)).to_dict() if augment else None,
                genotype=given.to_json() if given is not None else start and start["genotype"],
                init_weights=str(weights_file(init_weights)) if init_weights else None,
                arch=arch.value,
            )
            _dose_settings(dose, views, "insertion")
            if perceptual_weight > 0:
                from manas_infer.train.perceptual import find_vgg16_weights

                find_vgg16_weights(vgg_weights)
            from manas_infer.data.dataset import check_data
            from manas_infer.train.run import dataset_spec

            check_data(Path(config.data_root), dataset_spec(config))
            folder = None
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from None
    except InputProblem as problem:
        report_problem(problem, "refused")
        raise typer.Exit(1) from None
    try:
        ctx = init_distributed(torch_device, timeout=timedelta(minutes=dist_timeout))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--device") from None
    try:
        if folder is None:
            folder = create_run(runs, config) if ctx.is_main else None
            if ctx.active:
                import torch.distributed as dist

                shared = [str(folder) if folder else None]
                dist.broadcast_object_list(shared, 0)
                folder = Path(shared[0])
        if ctx.is_main:
            console.print(f"run directory: {folder}")
        try:
            metrics = Trainer(folder, config, ctx).run()
        except InputProblem as problem:
            report_problem(problem, "refused")
            raise typer.Exit(1) from None
        except TrainingDiverged as exc:
            if ctx.is_main:
                console.print(f"[red]stopped:[/red] {exc}", soft_wrap=True)
            raise typer.Exit(1) from None
        if ctx.is_main:
            low, net = metrics["mean_sd"]["low_dose"], metrics["mean_sd"]["network"]
            console.print(
                f"[green]done[/green] {folder}: test PSNR {low['psnr'][0]:.2f} -> "
                f"{net['psnr'][0]:.2f} dB, SSIM {low['ssim'][0]:.4f} -> {net['ssim'][0]:.4f} "
                f"({metrics['test_slices']} slices, {metrics['parameters']:,} parameters, "
                f"{metrics['gflops_512']:.1f} GFLOPs at 512x512)"
            )
    finally:
        shutdown(ctx)


@app.command()
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


@app.command()
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


@app.command()
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
    import manas_infer.evaluate as evaluation
    from manas_infer.runtime import ModelError

    methods = methods or []
    if phantom:
        _evaluate_phantom(methods, data, dose, low, bm3d, bm3d_sigma, device, out)
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
    runs = [m for m in methods if evaluation.is_run_dir(m)]
    if data is None and not runs:
        raise typer.BadParameter("no --data and no run directory to take a test split from",
                                 param_hint="--data")  # fmt: skip
    torch_device = _device(device)
    try:
        rows = [evaluation.method_for(m, device) for m in methods]
    except (ModelError, FileNotFoundError, ValueError) as exc:
        console.print(f"[red]cannot evaluate:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    if bm3d:
        rows.append(evaluation.bm3d_method(bm3d_sigma))
    try:
        with progress() as bar:
            task = bar.add_task("Reading slices", total=None)
            if data is None:
                pairs = evaluation.run_test_pairs(Path(runs[0]), max_slices)
            elif low is not None:
                pairs = evaluation.matched_pairs(low, data, max_slices, lambda: bar.advance(task))
            else:
                pairs = evaluation.simulated_pairs(
                    data, dose, seed, max_slices, views, torch_device.type,
                    lambda: bar.advance(task),
                )  # fmt: skip
            bar.update(task, total=len(pairs), completed=len(pairs))
            for problem in pairs.problems:
                report_problem(problem)
            steps = bar.add_task("Evaluating", total=len(pairs) * (len(rows) + 1))
            folder = out or Path("reports") / time.strftime("evaluate-%Y%m%d-%H%M%S")
            metrics = evaluation.evaluate(
                pairs, rows, folder, figures, vgg_weights,
                settings={"dose_percent": dose, "seed": seed, "views": views,
                          "device": torch_device.type, "bm3d_sigma": bm3d_sigma},
                on_step=lambda name: bar.update(steps, advance=1, description=f"Evaluating {name}"),
                physics=physics,
            )  # fmt: skip
    except InputProblem as problem:
        report_problem(problem, "refused")
        raise typer.Exit(1) from None
    from rich.table import Table

    table = Table(title=f"{metrics['slices']} slices: {metrics['source']}")
    for column in ("method", "PSNR dB", "SSIM", "PSNR window", "SSIM window", "params", "s/slice"):
        table.add_column(column)
    for m in metrics["methods"]:
        ms = m["mean_sd"]
        table.add_row(
            m["name"], f"{ms['psnr'][0]:.2f}", f"{ms['ssim'][0]:.4f}",
            f"{ms['psnr_window'][0]:.2f}", f"{ms['ssim_window'][0]:.4f}",
            "" if m["parameters"] is None else f"{m['parameters']:,}",
            f"{m['seconds_per_slice'][0]:.3f}",
        )  # fmt: skip
    console.print(table)
    console.print(f"[green]report[/green] {folder / 'report.md'} ({metrics['perceptual']})",
                  soft_wrap=True)  # fmt: skip
    if pairs.problems:
        raise typer.Exit(1)


def _evaluate_phantom(
    methods: list[str],
    folder: Path | None,
    dose: float | None,
    low: Path | None,
    bm3d: bool,
    bm3d_sigma: float | None,
    device: str,
    out: Path | None,
) -> None:
    """``evaluate --phantom``: the physicist's battery on the LCD-CT phantom alone."""
    import manas_infer.evaluate as evaluation
    from manas_infer.runtime import ModelError

    if dose is not None or low is not None:
        raise typer.BadParameter("--phantom brings its own doses: no --dose or --low",
                                 param_hint="--phantom")  # fmt: skip
    folder = folder or evaluation.default_phantom_dir()
    if folder is None:
        raise typer.BadParameter("no LCD-CT phantom found at ../shared/data/phantom/lcd-ct: "
                                 "give its folder with --data", param_hint="--data")  # fmt: skip
    try:
        lcd = evaluation.load_lcd_phantom(folder)
        rows = [evaluation.method_for(m, device) for m in methods]
    except InputProblem as problem:
        report_problem(problem, "refused")
        raise typer.Exit(1) from None
    except (ModelError, FileNotFoundError, ValueError) as exc:
        console.print(f"[red]cannot evaluate:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    if bm3d:
        rows.append(evaluation.bm3d_method(bm3d_sigma))
    report = out or Path("reports") / time.strftime("phantom-%Y%m%d-%H%M%S")
    with progress() as bar:
        steps = bar.add_task("Phantom battery", total=len(lcd.doses) * (len(rows) + 1))
        metrics = evaluation.evaluate_phantom(
            lcd, rows, report,
            settings={"device": _device(device).type, "bm3d_sigma": bm3d_sigma},
            on_step=lambda name: bar.update(steps, advance=1, description=f"Phantom: {name}"),
        )  # fmt: skip
    from rich.table import Table

    battery = metrics["lcd"]
    labels = [i["label"] for i in battery["phantom"]["inserts"]]
    table = Table(title=f"LCD phantom {folder}: CHO AUC per rod")
    for column in ("dose", "method", "noise SD", "NPS mean f", "edge f50", *labels):
        table.add_column(column)
    for r in battery["rows"]:
        table.add_row(
            f"{r['dose_percent']} %", r["method"], f"{r['nps']['sd_hu']:.1f}",
            f"{r['nps']['mean_frequency']:.3f}", f"{r['ttf_outline']['f50'] or float('nan'):.3f}",
            *(f"{r['cho'][i]['auc']:.2f}" + {"raises": " +", "lowers": " -"}.get(
                r["cho"][i].get("vs_input", {}).get("verdict", ""), "") for i in labels),
        )  # fmt: skip
    console.print(table)
    console.print(
        f"[green]report[/green] {report / 'report.md'} (frequencies in mm^-1; "
        "+ / -: AUC significantly above / below the input's)",
        soft_wrap=True,
    )


@app.command()
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


from manas_infer.dicom_node.commands import register as _register_node  # noqa: E402

_register_node(app)
