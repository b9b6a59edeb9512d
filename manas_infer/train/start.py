"""Starting a run from the train command's choices: a new run's configuration, checked
before anything is created; a resumed run's, from its directory; the run directory itself,
named to every process under torchrun.

The checks raise what the command turns into its answers: ValueError, FileNotFoundError or
ConfigError for a wrong option (a usage error), InputProblem for data that cannot be used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from manas_infer.config import cache_root, resolve_data_root
from manas_infer.console import console
from manas_infer.simulate.dose import DoseSettings
from manas_infer.train.augment import Augmentation
from manas_infer.train.distributed import DistContext, share_from_main
from manas_infer.train.genotype import Genotype
from manas_infer.train.perceptual import find_vgg16_weights
from manas_infer.train.presets import PRESETS, Preset, check_depth_fits
from manas_infer.train.run import (
    RunConfig,
    create_run,
    dataset_spec,
    load_run_config,
    moved_run,
    read_weights,
    weights_file,
)
from manas_infer.train.split import check_data


@dataclass(frozen=True)
class TrainOptions:
    """What the train command was asked for a new run; None: the preset's value."""

    dose: float
    data: Path | None
    cache: Path | None
    arch: str  # manas, redcnn or dncnn
    preset: str  # a PRESETS name, or auto
    test_patients: tuple[str, ...]
    size: int | None
    search_epochs: int | None
    retrain_epochs: int | None
    batch: int | None
    max_slices: int | None
    lr: float | None
    checkpoint: bool | None
    perceptual_weight: float
    vgg_weights: Path | None
    ssim_weight: float
    edge_weight: float
    fresh_noise: bool
    views: int
    augment: bool
    noise_gain: str  # LOW,HIGH
    noise_texture: str  # LOW,HIGH
    lesions: float
    genotype: Path | None
    init_weights: Path | None
    seed: int


def choose_preset(options: TrainOptions, device: torch.device) -> Preset:
    """The named preset with the options' overrides, checked; ``auto``: the paper's on a
    GPU, ``small`` otherwise (said on the console)."""
    name = options.preset
    if name == "auto":
        name = "paper" if device.type == "cuda" else "small"
        console.print(f"preset: {name} ({device.type} found)")
    preset = PRESETS[name].with_overrides(
        size=options.size,
        search_epochs=options.search_epochs,
        retrain_epochs=options.retrain_epochs,
        batch=options.batch,
        max_slices_per_patient=options.max_slices,
        lr=options.lr,
        checkpoint=options.checkpoint,
    )
    preset.check()
    return preset


def _given_architecture(options: TrainOptions, preset: Preset) -> str | None:
    """The genotype (JSON) to retrain without a search: --init-weights' own or --genotype
    (with --init-weights, only one that grows the weights' own: more kept paths); None for
    a search (or a baseline, which has none)."""
    start = None
    if options.init_weights is not None:
        start = read_weights(options.init_weights)
        if options.genotype is not None and not (
            start.get("genotype")
            and Genotype.load(options.genotype).grows(Genotype.from_json(start["genotype"]))
        ):
            raise ValueError(
                "--init-weights brings its own architecture; drop --genotype, or give one "
                "that only adds kept edges to it (the same C, L, D, P and cells)"
            )
        if start.get("arch", "manas") != options.arch:
            raise ValueError(
                f"{options.init_weights} holds a {start.get('arch', 'manas')} network, not "
                f"--arch {options.arch}"
            )
    if options.genotype is not None and options.arch != "manas":
        raise ValueError(f"--genotype is a MANAS architecture; --arch {options.arch} has none")
    if options.genotype is not None:
        given = Genotype.load(options.genotype)
        check_depth_fits(given.D, preset.size, str(options.genotype))
        return given.to_json()
    return start and start["genotype"]


def _range(text: str, option: str, example: str) -> tuple[float, float]:
    """'0.4,3.0' -> (0.4, 3.0); a ValueError naming the option otherwise."""
    try:
        low, high = (float(value) for value in text.split(","))
    except ValueError:
        raise ValueError(f"{option} takes LOW,HIGH (e.g. {example}), got {text!r}") from None
    return low, high


def new_run_config(options: TrainOptions, device: torch.device) -> RunConfig:
    """A new run's configuration, every check passed: options, architecture, data root,
    dose simulation, VGG weights for the perceptual loss, and a split the data can give.
    Nothing is created."""
    if options.dose <= 0 or options.dose > 100:
        raise ValueError(f"dose must be in (0, 100] percent, got {options.dose:g}")
    preset = choose_preset(options, device)
    genotype = _given_architecture(options, preset)
    config = RunConfig(
        preset=preset,
        dose=options.dose,
        data_root=str(resolve_data_root(options.data).resolve()),
        cache_root=str((options.cache or cache_root()).resolve()),
        test_patients=options.test_patients,
        seed=options.seed,
        perceptual_weight=options.perceptual_weight,
        ssim_weight=options.ssim_weight,
        edge_weight=options.edge_weight,
        vgg_weights=str(options.vgg_weights) if options.vgg_weights else None,
        fresh_noise=options.fresh_noise,
        n_views=options.views,
        augment=(
            Augmentation(
                noise=_range(options.noise_gain, "--noise-gain", "0.4,3.0"),
                texture=_range(options.noise_texture, "--noise-texture", "0,1.4"),
                lesions=options.lesions,
            ).to_dict()
            if options.augment
            else None
        ),
        genotype=genotype,
        init_weights=str(weights_file(options.init_weights)) if options.init_weights else None,
        arch=options.arch,
    )
    DoseSettings(dose_percent=options.dose, n_views=options.views, mode="insertion")
    if options.perceptual_weight > 0:
        find_vgg16_weights(options.vgg_weights)
    check_data(Path(config.data_root), dataset_spec(config))
    return config


def resumed_run_config(folder: Path, data: Path | None, cache: Path | None) -> RunConfig:
    """A run directory's configuration, for --resume; pointed at ``data`` and ``cache``
    when given (a run moved to another machine)."""
    config = load_run_config(folder)
    if data is not None or cache is not None:
        config = moved_run(folder, config, data, cache)
    return config


def new_run_folder(ctx: DistContext, runs: Path, config: RunConfig) -> Path:
    """A new run directory under ``runs``, created by the main process, the same on every
    process."""
    folder = create_run(runs, config) if ctx.is_main else None
    return Path(share_from_main(ctx, str(folder) if folder else None))
