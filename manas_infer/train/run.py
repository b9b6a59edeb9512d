"""A training run's directory: what was asked for, the weights it produced, where it stands.

    RUN_DIR/config.json          what was asked for (preset, dose, data, seed, loss)
    RUN_DIR/dataset.json         the cached dataset it used and its split counts
    RUN_DIR/genotype.json        the derived architecture, written after the search
    RUN_DIR/genotype.png         a picture of it: kept grid edges and the three cells
    RUN_DIR/curves.png           losses and validation PSNR per epoch
    RUN_DIR/checkpoints/state.pt everything needed to resume, written every epoch
    RUN_DIR/checkpoints/best.pt  retrained weights with the best validation PSNR
    RUN_DIR/checkpoints/last.pt  retrained weights after the last epoch
    RUN_DIR/metrics.json         test-split quality of the low-dose input and the network

Everything export, evaluation and the command line need from a run, without the trainer
(``train/trainer.py``) and its process group: the trainer writes this layout, they read it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from manas_infer import __version__
from manas_infer.simulate.dose import DoseSettings
from manas_infer.train.baselines import build_baseline
from manas_infer.train.dataset import DatasetSpec, SplitConfig
from manas_infer.train.genotype import Genotype
from manas_infer.train.network import DerivedNetwork
from manas_infer.train.presets import Preset

# The stages of a run in order; state.pt's "stage" says which one a run stands at.
STAGES = ("search", "retrain", "evaluate", "done")


@dataclass(frozen=True)
class RunConfig:
    """Everything a run depends on; saved as config.json and reloaded by --resume."""

    preset: Preset
    dose: float
    data_root: str
    cache_root: str
    test_patients: tuple[str, ...] = ()
    n_test_patients: int = 1
    seed: int = 0
    perceptual_weight: float = 1e-4
    vgg_weights: str | None = None
    fresh_noise: bool = False
    n_views: int = 720
    arch: str = "manas"
    augment: dict | None = None  # Augmentation.to_dict(); None: none (runs made before it)
    genotype: str | None = None  # a given architecture (JSON): skip the search, retrain it
    init_weights: str | None = None  # fine-tune: retraining starts from these weights
    ssim_weight: float = 0.0  # the loss's structural term (train/loss.py); 0: off
    edge_weight: float = 0.0  # the loss's edge term; 0: off

    def to_dict(self) -> dict:
        return {**asdict(self), "preset": self.preset.to_dict(), "software_version": __version__}

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        data = {key: value for key, value in data.items() if key != "software_version"}
        data["preset"] = Preset(**data["preset"])
        data["test_patients"] = tuple(data["test_patients"])
        return cls(**data)


def dataset_spec(config: RunConfig) -> DatasetSpec:
    """The training data a run asks for: its dose, image size, split and patch mode."""
    preset = config.preset
    return DatasetSpec(
        dose=DoseSettings(dose_percent=config.dose, n_views=config.n_views),
        size=preset.size,
        split=SplitConfig(
            test_patients=config.test_patients,
            n_test_patients=config.n_test_patients,
            max_slices_per_patient=preset.max_slices_per_patient,
            seed=config.seed,
        ),
        patch=preset.patch,
        patches_per_slice=preset.patches_per_slice,
    )


def _write_config(folder: Path, config: RunConfig) -> None:
    (Path(folder) / "config.json").write_text(json.dumps(config.to_dict(), indent=2))


def create_run(runs_root: Path, config: RunConfig) -> Path:
    """A new run directory named by time, network, dose and preset, with its config.json."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{config.arch}-{config.dose:g}pct-{config.preset.name}"
    folder = Path(runs_root) / name
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = Path(runs_root) / f"{name}-{suffix}"
    folder.mkdir(parents=True)
    _write_config(folder, config)
    return folder


def load_run_config(folder: Path) -> RunConfig:
    """The config of an existing run, for --resume; a clear error if it is not a run."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a run directory (no config.json)")
    return RunConfig.from_dict(json.loads(path.read_text()))


def moved_run(folder: Path, config: RunConfig, data: Path | None, cache: Path | None) -> RunConfig:
    """The config of a run copied to another machine, pointed at where its data and cache
    are there, and saved back. The dataset's cache key (series UIDs and settings) still
    decides which pairs it trains on, so the same data gives the same run."""
    changes: dict[str, str] = {}
    if data is not None:
        changes["data_root"] = str(Path(data).resolve())
    if cache is not None:
        changes["cache_root"] = str(Path(cache).resolve())
    config = replace(config, **changes)
    _write_config(folder, config)
    return config


def save_atomically(obj: object, path: Path) -> None:
    """torch.save to a temporary file, then a rename: a kill mid-write never leaves a
    truncated checkpoint where the last good one was."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def weights_file(path: Path) -> Path:
    """A run directory -> its checkpoints/best.pt; a .pt file -> itself."""
    path = Path(path)
    return path / "checkpoints" / "best.pt" if path.is_dir() else path


def read_weights(path: Path) -> dict:
    """A retrained checkpoint (genotype, state_dict, arch, dose...) from a run directory or
    a .pt file; FileNotFoundError naming it when there is none yet."""
    file = weights_file(path)
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no retrained network yet ({file} is missing)")
    return torch.load(file, map_location="cpu", weights_only=False)


def build_network(arch: str, genotype: str | None) -> torch.nn.Module:
    """A freshly initialised net to retrain: the derived MANAS net of a genotype (JSON), or
    a baseline (``--arch redcnn|dncnn``), which has none."""
    if arch == "manas":
        return DerivedNetwork(Genotype.from_json(genotype))
    return build_baseline(arch)


def load_trained(folder: Path) -> tuple[torch.nn.Module, dict]:
    """The retrained network of a run (best validation epoch) in eval mode, and its checkpoint.

    The one way export, evaluation and tests rebuild a trained net from a run directory.
    """
    best = read_weights(Path(folder))
    model = build_network(best.get("arch", "manas"), best["genotype"])
    model.load_state_dict(best["state_dict"])
    return model.eval(), best


def run_stage(folder: Path) -> str:
    """Where a run directory stands: search, retrain, evaluate or done."""
    path = Path(folder) / "checkpoints" / "state.pt"
    if not path.is_file():
        return "search"
    return torch.load(path, map_location="cpu", weights_only=False)["stage"]
