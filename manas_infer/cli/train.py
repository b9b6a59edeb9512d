"""``prepare`` and ``train``: the training data and the MANAS / baseline training run."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from manas_infer.cli.common import _device, _dose_settings
from manas_infer.console import console, report_problem
from manas_infer.errors import InputProblem

if TYPE_CHECKING:
    from manas_infer.train.distributed import DistContext
    from manas_infer.train.run import RunConfig


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
    from manas_infer.train.dataset import DatasetSpec, SplitConfig
    from manas_infer.train.prepare import prepare_with_progress

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
    started = time.perf_counter()
    try:
        prepared, problems = prepare_with_progress(
            root, spec, (cache or cache_root()) / "datasets", _device(device),
            f"Simulating {dose:g} % dose",
        )  # fmt: skip
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


class ArchName(StrEnum):
    manas = "manas"
    redcnn = "redcnn"
    dncnn = "dncnn"


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
    noise_texture: str = typer.Option(
        "0,0",
        help="LOW,HIGH: range of the augmentation's noise grain, the sigma (pixels, uniform) "
        "of a Gaussian apodization of the simulator's ramp noise at the same SD; 0,1.4 spans "
        "lung kernels to soft-tissue ones (bench/results/noise-texture.md). 0,0: off.",
    ),
    lesions: float = typer.Option(
        0.0,
        help="Mean number of small, faint round lesions (2-12 mm, 4-40 HU, darker or "
        "brighter) inserted into each training patch's anatomy, so the net learns to keep "
        "low-contrast lesions (bench/results/lesions.md). 0: off.",
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
        help="auto, cpu, cuda or cuda:N (GPU N; on CUDA the search runs under bf16 autocast, "
        "the retraining in float32). Under torchrun each "
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

    from manas_infer.config import ConfigError
    from manas_infer.train.distributed import init_distributed, shutdown
    from manas_infer.train.start import TrainOptions, new_run_config, resumed_run_config

    torch_device = _device(device)
    try:
        if resume is not None:
            config, folder = resumed_run_config(resume, data, cache), resume
        else:
            options = TrainOptions(
                dose=dose, data=data, cache=cache, arch=arch.value, preset=preset.value,
                test_patients=tuple(test_patient), size=size, search_epochs=search_epochs,
                retrain_epochs=retrain_epochs, batch=batch, max_slices=max_slices, lr=lr,
                checkpoint=checkpoint, perceptual_weight=perceptual_weight,
                vgg_weights=vgg_weights, ssim_weight=ssim_weight, edge_weight=edge_weight,
                fresh_noise=fresh_noise, views=views, augment=augment, noise_gain=noise_gain,
                noise_texture=noise_texture, lesions=lesions, genotype=genotype,
                init_weights=init_weights, seed=seed,
            )  # fmt: skip
            config, folder = new_run_config(options, torch_device), None
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
        _run(ctx, folder, runs, config)
    finally:
        shutdown(ctx)


def _run(ctx: DistContext, folder: Path | None, runs: Path, config: RunConfig) -> None:
    """Train a new run (``folder`` None: created under ``runs``) or a resumed one; print
    its directory and, at the end, its test result; exit code 1 when it is refused or
    diverges."""
    from manas_infer.train.start import new_run_folder
    from manas_infer.train.trainer import Trainer, TrainingDiverged

    folder = folder or new_run_folder(ctx, runs, config)
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


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command()(prepare)
    app.command()(train)
