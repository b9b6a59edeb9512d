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
    dose: float = typer.Option(5.0, help="Dose in percent to simulate."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
) -> None:
    """The main job on a shipped default: fetch a real chest CT series (or use the synthetic
    phantom offline), simulate it at low dose, write the series and a preview picture."""
    from manas_infer.demo import demo_series

    source, what = demo_series()
    console.print(f"Demo input: {source}\n  {what}")
    settings = _dose_settings(dose, 720, "insertion")
    target = out / f"{source.name}-{dose:g}pct"
    results, problems = run_simulation(
        [source], settings, target, 0, device, 4, out / "preview.png", overwrite=True
    )
    if problems or not results:
        raise typer.Exit(1)
    console.print(f"Preview picture: [bold]{results[0]['preview']}[/bold]")


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
    tiny = "tiny"


@app.command()
def train(
    dose: float = typer.Option(..., help="Dose in percent to train for: 10, 5, 2.5..."),
    data: Path | None = typer.Option(
        None,
        help="Normal-dose CT root (one folder per patient). Default: $MANAS_DATA or "
        "data = 'DIR' in manas-infer.toml. Never a silent fallback to synthetic images.",
    ),
    preset: PresetName = typer.Option(
        PresetName.auto,
        help="paper: L=12 D=4 K=5 P=3, 200 epochs, batch 2, 256x256 (a GPU); "
        "small: a real search and retrain in minutes on a CPU; tiny: seconds, for checks; "
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
    fresh_noise: bool = typer.Option(
        False, help="Draw a new low-dose noise realisation for every batch, on the device."
    ),
    views: int = typer.Option(720, help="Projection angles for the dose simulation."),
    seed: int = typer.Option(0, help="Seed: the same seed and data give the same run."),
    device: str = typer.Option("auto", help="auto, cpu or cuda (bf16 autocast on CUDA)."),
    runs: Path = typer.Option(Path("runs"), help="Folder that holds run directories."),
    cache: Path | None = typer.Option(
        None, help="Dataset cache. Default: $MANAS_CACHE or ~/.cache/manas-infer."
    ),
    resume: Path | None = typer.Option(
        None,
        help="Continue a run directory exactly where it stopped (other options are "
        "taken from its config.json).",
    ),
) -> None:
    """Search a MANAS denoiser for a dose, derive it, retrain it from scratch and evaluate
    it on held-out patients, all in one run directory. Multi-GPU: launch with
    `torchrun --nproc_per_node=N -m manas_infer train ...`."""
    from manas_infer.config import ConfigError, cache_root, resolve_data_root
    from manas_infer.train.distributed import init_distributed, shutdown
    from manas_infer.train.presets import PRESETS
    from manas_infer.train.run import RunConfig, Trainer, create_run, load_run_config

    torch_device = _device(device)
    try:
        if resume is not None:
            config = load_run_config(resume)
            folder = resume
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
            )
            chosen.check()
            config = RunConfig(
                preset=chosen,
                dose=dose,
                data_root=str(resolve_data_root(data).resolve()),
                cache_root=str((cache or cache_root()).resolve()),
                test_patients=tuple(test_patient),
                seed=seed,
                perceptual_weight=perceptual_weight,
                vgg_weights=str(vgg_weights) if vgg_weights else None,
                fresh_noise=fresh_noise,
                n_views=views,
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
    ctx = init_distributed(torch_device)
    try:
        if folder is None:
            folder = create_run(runs, config) if ctx.is_main else None
            if ctx.active:
                import torch.distributed as dist

                shared = [str(folder) if folder else None]
                dist.broadcast_object_list(shared, 0)
                folder = Path(shared[0])
        console.print(f"run directory: {folder}")
        try:
            metrics = Trainer(folder, config, ctx).run()
        except InputProblem as problem:
            report_problem(problem, "refused")
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
