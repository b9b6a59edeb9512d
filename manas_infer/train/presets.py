"""Named training configurations: the paper's, and one that finishes on a CPU in minutes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from manas_infer.train.cells import n_edges
from manas_infer.train.supernet import check_grid, grid


def check_depth_fits(D: int, size: int, who: str) -> None:
    """A grid of depth D halves the image D-1 times and its deepest level must keep 8x8
    pixels: refuse, naming ``who``, an image size that does not allow that."""
    multiple = 2 ** (D - 1)
    if size % multiple or size // multiple < 8:
        raise ValueError(
            f"{who}: depth D={D} needs images that are a multiple of {multiple} and at least "
            f"{8 * multiple} pixels (the deepest level must keep 8x8 pixels); --size {size} "
            "does not fit"
        )


@dataclass(frozen=True)
class Preset:
    """Everything about a run's size and schedule (the data and dose come separately)."""

    name: str
    C: int  # stem width; depth d has C * 2^(d-1) channels
    L: int  # layers of the grid
    D: int  # depths of the grid
    K: int  # shortest paths kept when deriving the network
    P: int  # nodes per cell
    search_epochs: int
    warmup_epochs: int  # weights only, before architecture steps start (the paper: 8)
    retrain_epochs: int
    batch: int
    size: int  # training images are size x size
    lr: float = 1e-4  # weights, cosine-annealed to lr_min
    lr_min: float = 1e-7
    arch_lr: float = 1e-4
    max_slices_per_patient: int | None = None
    patch: bool = False  # size x size native-resolution patches instead of resized slices
    patches_per_slice: int = 1
    # Activation checkpointing in the super-net (memory for time): True or False forces it;
    # None decides when the search starts from the GPU's free memory (train/device_policy.py).
    checkpoint: bool | None = None

    def check(self) -> None:
        """Refuse, before any work, a preset that cannot run at its image size."""
        check_grid(self.L, self.D)
        check_depth_fits(self.D, self.size, f"preset {self.name!r}")
        if self.warmup_epochs >= self.search_epochs:
            raise ValueError(
                f"preset {self.name!r}: {self.warmup_epochs} warm-up epochs leave no "
                f"architecture epochs out of {self.search_epochs}"
            )
        for name in ("C", "K", "P", "batch", "search_epochs", "retrain_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"preset {self.name!r}: {name} must be at least 1")

    def with_overrides(self, **changes: object) -> Preset:
        """A copy with the given fields changed (None values are ignored)."""
        return replace(
            self, **{name: value for name, value in changes.items() if value is not None}
        )

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    # The paper (Sec. 4.2): L=12, D=4, K=5, P=3, 200 epochs, batch 2, 256 x 256, 8 warm-up;
    # a search step needs ~21 GiB without checkpointing, ~1.6 GiB with it
    # (bench/results/search.md): it is switched on only where the GPU lacks the memory.
    "paper": Preset("paper", C=8, L=12, D=4, K=5, P=3, search_epochs=200, warmup_epochs=8,
                    retrain_epochs=200, batch=2, size=256),
    # A real search and retrain that finishes on a 2-core CPU in minutes: a smaller grid on
    # 64 x 64 native-resolution patches (resizing whole slices that far would leave almost
    # no noise to learn), four per slice, at most 64 slices per patient; lr 1e-3 because it
    # takes about 50 times fewer steps than the paper's schedule.
    "small": Preset("small", C=8, L=4, D=3, K=3, P=3, search_epochs=8, warmup_epochs=2,
                    retrain_epochs=20, batch=4, size=64, max_slices_per_patient=64,
                    patch=True, patches_per_slice=4, lr=1e-3),
    # The shipped recipe's retraining (scripts/train-v2-models.sh): every slice of every
    # training patient, sixteen 96 x 96 native patches each (room for the streaks of a thick
    # body; crops fixed at preparation, noise drawn afresh every batch), batch 16, 24
    # cosine epochs: about 17 patches a second on 2 cores, so an hour for the two clean
    # abdomen series and near three with the whole-body series. A search at this size would
    # take most of a day there, so the recipe searches with `small` and retrains this
    # preset on the architecture found (--genotype).
    "cpu-long": Preset("cpu-long", C=8, L=4, D=3, K=3, P=3, search_epochs=8,
                       warmup_epochs=2, retrain_epochs=24, batch=16, size=96,
                       patch=True, patches_per_slice=16, lr=1e-3, lr_min=1e-6),
    # Seconds, for tests and smoke runs: a tiny grid on 32 x 32 native patches.
    "tiny": Preset("tiny", C=4, L=2, D=2, K=2, P=2, search_epochs=3, warmup_epochs=1,
                   retrain_epochs=3, batch=4, size=32, max_slices_per_patient=8, patch=True,
                   lr=1e-3),
}  # fmt: skip


# Bytes autograd keeps for backward per (image, pixel, stem channel, cell) of the plain
# super-net with P = 3, a cell at depth d weighing 2^-(d-1) (C 2^(d-1) channels on 4^(d-1)
# times fewer pixels). bench/results/search.md measured the saved tensors (float32) of
# seven grids (L 4-12, D 2-4, C 8, 64 x 64) and the exact value at the paper's size on the
# meta device: 29.0 MiB per unit of weight at batch 2, 64 x 64, C 8 is 464 bytes, within
# 0.2 % for every grid measured.
SAVED_BYTES_PER_UNIT = 464
MEASURED_EDGES = n_edges(3)


def search_activation_bytes(preset: Preset) -> int:
    """Estimated bytes of activations one search pass keeps for backward, without
    checkpointing, in float32 (bf16 autocast on a GPU keeps less: an upper bound there).
    Scaled from the P = 3 measurements by the edges of a cell for other P."""
    weight = sum(2.0 ** -(block[1] - 1) for block, sources in grid(preset.L, preset.D).items()
                 for _ in sources)  # fmt: skip
    per_pixel = SAVED_BYTES_PER_UNIT * preset.C * weight * n_edges(preset.P) / MEASURED_EDGES
    return int(per_pixel * preset.batch * preset.size**2)


def search_step_bytes(preset: Preset, n_parameters: int) -> int:
    """Estimated peak bytes of a plain search step: the activations, 5 % for the
    temporaries around them (the measured peak of the paper's step is 3.5 % above its saved
    tensors), and 20 bytes per float32 parameter: the weight, its gradient, Adam's two
    moments and DistributedDataParallel's gradient bucket."""
    return int(1.05 * search_activation_bytes(preset)) + 20 * n_parameters
