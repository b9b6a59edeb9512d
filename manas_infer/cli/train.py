"""``prepare`` and ``train``: the training data and the MANAS / baseline training run."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path

import typer

from manas_infer.cli.common import (
    _device,
    _dose_settings,
)
from manas_infer.console import console, progress, report_problem
from manas_infer.errors import InputProblem


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
    from manas_infer.train.prepare import prepare_dataset

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
            from manas_infer.train.run import dataset_spec
            from manas_infer.train.split import check_data

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


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command()(prepare)
    app.command()(train)
