"""Training data: normal-dose CT -> patient-wise split -> simulated low-dose pairs.

Protocol (paper Sec. 4.1, SPEC section 2): patients are split into training and test;
the training slices are split again into train-data and arch-data 7:1 (the paper: 350 and
50 of 400 images). Noise is simulated on each whole slice at its native resolution and
pixel size (the scanner's own geometry: that is where photon counts are physical), then
the pair is brought to the training size in one of two ways:
- ``resize`` (the paper): the whole slice, padded to square and resized to size x size;
- ``patch`` (CPU presets): size x size crops at native resolution, inside the body, which
  keep the noise texture the network will meet at inference time.

The pairs are cached on disk with a manifest (source UIDs, split, dose, simulator
settings); a second run with the same data and settings loads them instead of simulating.
The native normal-dose slices are cached too (int16 HU) so that ``FreshNoise`` can draw a
new realisation for every batch on the training device through the same code path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from manas_infer import __version__
from manas_infer.data.series import CTSeries, scan
from manas_infer.data.volume import CTVolume, is_volume_file
from manas_infer.errors import InputProblem
from manas_infer.hu import HU_MIN
from manas_infer.simulate.dose import DoseSettings, LowDoseSimulator

SPLITS = ("train", "arch", "test")
CACHE_FORMAT = 3  # 3: patches cover air and lung too (patch_corners)
Source = CTSeries | CTVolume


@dataclass(frozen=True)
class SplitConfig:
    """How patients and slices are divided."""

    test_patients: tuple[str, ...] = ()  # PatientIDs or folder names; empty: pick by seed
    n_test_patients: int = 1  # used when test_patients is empty
    arch_ratio: int = 7  # train-data : arch-data = arch_ratio : 1
    max_slices_per_patient: int | None = None  # evenly spaced subset; None: every slice
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch_ratio < 1:
            raise ValueError(f"arch ratio must be at least 1, got {self.arch_ratio}")
        if self.max_slices_per_patient is not None and self.max_slices_per_patient < 1:
            raise ValueError("max slices per patient must be at least 1")
        if not self.test_patients and self.n_test_patients < 1:
            raise ValueError("at least one test patient is needed")


@dataclass(frozen=True)
class DatasetSpec:
    """Everything that determines the cached pairs (and so the cache key)."""

    dose: DoseSettings
    size: int = 256
    split: SplitConfig = field(default_factory=SplitConfig)
    volume_hu_offset: float = 0.0  # added to volume files' values (LCD_CT: -1000)
    patch: bool = False  # native-resolution crops instead of resized whole slices
    patches_per_slice: int = 1

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"image size must be at least 16, got {self.size}")
        if self.patches_per_slice < 1:
            raise ValueError("patches per slice must be at least 1")

    def to_dict(self) -> dict:
        return {
            "dose": self.dose.to_dict(),
            "size": self.size,
            "split": asdict(self.split),
            "volume_hu_offset": self.volume_hu_offset,
            "patch": self.patch,
            "patches_per_slice": self.patches_per_slice,
        }


# --------------------------------------------------------------------------------------
# Finding the data


def _patient_of(source: Source, root: Path) -> str:
    """Patient key: a volume's first folder under the root (one folder per patient), or
    its file name; a DICOM series' PatientID (else its study or folder)."""
    if isinstance(source, CTVolume):
        relative = source.path.relative_to(root) if source.path.is_relative_to(root) else None
        if relative is not None and len(relative.parts) > 1:
            return relative.parts[0]
        return source.patient_key
    return source.patient_key


def find_sources(
    root: Path, volume_hu_offset: float = 0.0
) -> tuple[list[Source], list[InputProblem]]:
    """Every usable CT series and volume file under ``root``, and what could not be used."""
    root = Path(root)
    report = scan(root)
    sources: list[Source] = list(report.series)
    # scan() reports a folder with no DICOM; that is no problem when it holds volumes.
    problems = [
        p
        for p in report.problems
        if not is_volume_file(p.path)
        and not (p.problem == "no DICOM files found" and p.path == root)
    ]
    for path in report.ignored:
        if is_volume_file(path):
            try:
                volume = CTVolume(path, hu_offset=volume_hu_offset)
            except InputProblem as problem:
                problems.append(problem)
                continue
            volume.patient_key = _patient_of(volume, root)
            sources.append(volume)
    if not sources:
        problems.append(InputProblem(root, "no DICOM files or CT volumes found"))
    return sources, problems


def _folder_names(source: Source, root: Path) -> set[str]:
    where = source.path if isinstance(source, CTVolume) else source.folder
    try:
        return set(where.relative_to(root).parts)
    except ValueError:
        return {where.name}


def assign_patients(
    sources: list[Source], root: Path, split: SplitConfig
) -> tuple[list[str], list[str], dict[str, list[Source]]]:
    """(train patients, test patients, sources per patient), refusing impossible splits."""
    by_patient: dict[str, list[Source]] = defaultdict(list)
    for source in sources:
        by_patient[_patient_of(source, root)].append(source)
    patients = sorted(by_patient)
    if len(patients) < 2:
        raise InputProblem(
            root, f"a patient-wise split needs at least 2 patients, found {len(patients)}"
        )
    if split.test_patients:
        test = []
        for token in split.test_patients:
            matches = [
                p
                for p in patients
                if p == token or any(token in _folder_names(s, root) for s in by_patient[p])
            ]
            if not matches:
                known = ", ".join(sorted({n for s in sources for n in _folder_names(s, root)}))
                raise InputProblem(root, f"test patient {token!r} not found (folders: {known})")
            test += [m for m in matches if m not in test]
    else:
        if split.n_test_patients >= len(patients):
            raise InputProblem(
                root,
                f"{split.n_test_patients} test patient(s) leave none for training "
                f"({len(patients)} patients found)",
            )
        order = np.random.default_rng(split.seed).permutation(len(patients))
        test = sorted(patients[i] for i in order[: split.n_test_patients])
    train = [p for p in patients if p not in test]
    if not train:
        raise InputProblem(root, "every patient is a test patient: none left for training")
    return train, test, by_patient


# --------------------------------------------------------------------------------------
# Resizing and noise


def to_training_size(hu: torch.Tensor, size: int) -> tuple[torch.Tensor, float]:
    """[B, H, W] HU -> [B, size, size]: pad to square with air below the scanner's range,
    then an antialiased bilinear resize (a proper low-pass resampler, on any device).

    Returns the resized slices and the factor by which the pixel size grows.
    """
    _, h, w = hu.shape
    side = max(h, w)
    if h != w:
        top, left = (side - h) // 2, (side - w) // 2
        hu = F.pad(hu, (left, side - w - left, top, side - h - top), value=HU_MIN)
    if side == size:
        return hu, 1.0
    resized = F.interpolate(
        hu[:, None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )[:, 0]
    return resized, side / size


def pad_to_square(hu: torch.Tensor) -> torch.Tensor:
    """[B, H, W] -> [B, M, M], M = max(H, W), padded with air below the scanner's range
    (attenuation 0, so projections and noise are unchanged)."""
    side = max(hu.shape[-2:])
    return to_training_size(hu, side)[0]


def patch_corners(normal: np.ndarray, size: int, count: int, rng: np.random.Generator):
    """``count`` top-left corners of size x size crops of one square slice, on the body.

    Random among 32 candidate crops that are at least a third tissue (> -500 HU), so patches
    cover the body's edges, air and lung as well as its inside: the first real run took only
    the most-tissue crops of an abdomen and its net then added 124 HU of bias to the air and
    lung of a chest. Slices with too few such crops fall back to the most-tissue ones.
    """
    side = normal.shape[-1]
    if side < size:
        raise ValueError(f"a {size}-pixel patch does not fit a {side}-pixel slice")
    candidates = rng.integers(0, side - size + 1, size=(32, 2))
    tissue = np.array(
        [float((normal[r : r + size, c : c + size] > -500).mean()) for r, c in candidates]
    )
    on_body = np.flatnonzero(tissue >= 1 / 3)
    if len(on_body) >= count:
        return candidates[rng.choice(on_body, size=count, replace=False)]
    return candidates[np.argsort(tissue, kind="stable")[::-1][:count]]


def training_views(square: torch.Tensor, size: int, corners: torch.Tensor | None) -> torch.Tensor:
    """Square native slices [B, M, M] -> the network's inputs [B, size, size]: resized
    whole slices (``corners`` None) or the crops at ``corners`` [B, 2]."""
    if corners is None:
        return to_training_size(square, size)[0]
    return torch.stack(
        [square[b, r : r + size, c : c + size] for b, (r, c) in enumerate(corners.tolist())]
    )


class FreshNoise:
    """A new low-dose realisation of each batch on the training device, every call, so a
    network never sees the same noise twice (an option of the training loop). It simulates
    the native slice and then takes the same view as the cache did."""

    def __init__(self, spec: DatasetSpec, device: torch.device | str, seed: int = 0):
        self.spec = spec
        self.simulator = LowDoseSimulator(spec.dose, device=device)
        self.generator = torch.Generator(device=self.simulator.device).manual_seed(seed)

    def __call__(
        self, native: torch.Tensor, spacing_mm: torch.Tensor, corners: torch.Tensor | None
    ) -> torch.Tensor:
        """native: [B, M, M] HU on the device; spacing_mm: [B] -> low dose [B, 1, S, S]."""
        low = self.simulator.simulate(native, spacing_mm, generator=self.generator)
        return training_views(low, self.spec.size, corners)[:, None]


# --------------------------------------------------------------------------------------
# The cache


@dataclass
class PreparedDataset:
    """A cached dataset folder: ``normal.npy`` and ``low.npy`` [N, size, size] float32 HU,
    ``spacing.npy`` [N] (mm, after resizing), and ``manifest.json``."""

    folder: Path
    manifest: dict
    reused: bool = False

    @classmethod
    def load(cls, folder: Path, reused: bool = True) -> PreparedDataset:
        manifest = json.loads((folder / "manifest.json").read_text())
        return cls(folder, manifest, reused)

    def indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: use one of {SPLITS}")
        return np.asarray(self.manifest["splits"][split], dtype=np.int64)

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(low, normal, spacing) of one split, loaded into memory."""
        idx = self.indices(split)
        load = lambda name: np.load(self.folder / name, mmap_mode="r")  # noqa: E731
        return (
            np.ascontiguousarray(load("low.npy")[idx]),
            np.ascontiguousarray(load("normal.npy")[idx]),
            np.ascontiguousarray(load("spacing.npy")[idx]),
        )

    def native(self, split: str) -> tuple[np.ndarray, np.ndarray | None] | None:
        """(native square normal-dose slices [n, M, M] HU, crop corners [n, 2] or None) of
        one split, for fresh noise; None when the slices had different matrix sizes."""
        if not (self.folder / "native.npy").is_file():
            return None
        idx = self.indices(split)
        which = np.load(self.folder / "native_index.npy")[idx]
        native = np.load(self.folder / "native.npy", mmap_mode="r")[which].astype(np.float32)
        corners_file = self.folder / "corners.npy"
        corners = np.load(corners_file)[idx] if corners_file.is_file() else None
        return native, corners

    def counts(self) -> dict[str, int]:
        return {split: len(self.manifest["splits"][split]) for split in SPLITS}


class SlicePairs(torch.utils.data.Dataset):
    """(low dose, normal dose, pixel spacing) per slice of one split, as [1, H, W] HU tensors."""

    def __init__(self, prepared: PreparedDataset, split: str) -> None:
        low, normal, spacing = prepared.arrays(split)
        self.low, self.normal = torch.from_numpy(low), torch.from_numpy(normal)
        self.spacing = torch.from_numpy(spacing.astype(np.float32))

    def __len__(self) -> int:
        return len(self.normal)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.low[i][None], self.normal[i][None], self.spacing[i]


def _cache_key(sources: list[Source], spec: DatasetSpec) -> str:
    described = sorted((s.series_uid, s.n_slices) for s in sources)
    payload = json.dumps(
        {"format": CACHE_FORMAT, "sources": described, "spec": spec.to_dict()}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def evenly_spaced(n: int, limit: int | None) -> np.ndarray:
    """At most ``limit`` indices of ``range(n)``, evenly spread from the first to the last:
    the slices a run (``--max-slices``) or an evaluation keeps of a series."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


def _slice_uid(source: Source, index: int) -> str:
    if isinstance(source, CTVolume):
        return source.slice_uid(index)
    return source.slices[index].sop_instance_uid


def _decode_slices(
    source: CTSeries, chosen: np.ndarray, problems: list[InputProblem]
) -> tuple[np.ndarray, np.ndarray]:
    """(the chosen indices that decode, their HU [n, H, W]); each slice that does not
    decode (a truncated export, say) is added to ``problems`` by name and left out, so one
    bad file never ends a training run."""
    kept, slices = [], []
    for i in chosen:
        try:
            slices.append(source.read_slice_hu(int(i)))
        except InputProblem as problem:
            problems.append(problem)
            continue
        kept.append(int(i))
    volume = np.stack(slices) if slices else np.empty((0, *source.shape), np.float32)
    return np.asarray(kept, dtype=np.int64), volume


def check_data(root: Path, spec: DatasetSpec):
    """(sources, problems, (train patients, test patients, sources per patient)), or an
    InputProblem when the data cannot give the split: cheap, headers only, so commands
    call it before they start any work or create any folder."""
    sources, problems = find_sources(Path(root), spec.volume_hu_offset)
    if not sources:
        raise problems[0] if problems else InputProblem(root, "no usable CT found")
    return sources, problems, assign_patients(sources, Path(root), spec.split)


def prepare_dataset(
    root: Path,
    spec: DatasetSpec,
    cache_root: Path,
    device: torch.device | str = "cpu",
    batch: int = 8,
    on_total: Callable[[int], None] | None = None,
    on_slice: Callable[[int], None] | None = None,
) -> tuple[PreparedDataset, list[InputProblem]]:
    """Build (or reuse) the cached pairs for ``root``; returns them and the inputs skipped.

    Raises ``InputProblem`` before any simulation when the data cannot give a split.
    """
    root = Path(root)
    sources, problems, (train_patients, test_patients, by_patient) = check_data(root, spec)
    name = f"{spec.dose.dose_percent:g}pct-{spec.size}px-{_cache_key(sources, spec)}"
    folder = Path(cache_root) / name
    if (folder / "manifest.json").is_file():
        return PreparedDataset.load(folder), problems

    plan: list[tuple[str, Source, np.ndarray]] = []
    for patient in train_patients + test_patients:
        role = "test" if patient in test_patients else "train"
        n_total = sum(s.n_slices for s in by_patient[patient])
        keep = set(evenly_spaced(n_total, spec.split.max_slices_per_patient).tolist())
        offset = 0
        for source in by_patient[patient]:
            chosen = np.array([i for i in range(source.n_slices) if i + offset in keep], int)
            offset += source.n_slices
            if len(chosen):
                plan.append((role, source, chosen))
    n_training = sum(len(c) for role, _, c in plan if role == "train")
    if n_training < 2:
        raise InputProblem(root, f"only {n_training} training slice(s): too few to split")
    total = sum(len(c) for _, _, c in plan)
    if on_total is not None:
        on_total(total)

    plan_sizes = {id(source): chosen for _, source, chosen in plan}
    simulator = LowDoseSimulator(spec.dose, device=device)
    generator = torch.Generator(device=simulator.device).manual_seed(spec.split.seed)
    rng = np.random.default_rng(spec.split.seed)
    k = spec.patches_per_slice if spec.patch else 1
    normal = np.empty((total * k, spec.size, spec.size), np.float32)
    low = np.empty_like(normal)
    spacing = np.empty(total * k, np.float64)
    corners = np.zeros((total * k, 2), np.int64)
    native_index = np.empty(total * k, np.int64)
    natives: list[np.ndarray] = []
    records: list[dict] = []
    roles: list[str] = []
    started = time.perf_counter()
    for role, source, chosen in plan:
        patient_hash = hashlib.sha256(_patient_of(source, root).encode()).hexdigest()[:12]
        if isinstance(source, CTVolume):
            volume = source.read_hu()[chosen]
        else:  # decode only the slices kept, not the whole series
            chosen, volume = _decode_slices(source, chosen, problems)
            if on_slice is not None and len(chosen) < len(plan_sizes[id(source)]):
                on_slice(len(plan_sizes[id(source)]) - len(chosen))
            if not len(chosen):
                continue
        for start in range(0, len(chosen), batch):
            square = pad_to_square(torch.from_numpy(volume[start : start + batch]))
            noisy = simulator.simulate(
                square.to(simulator.device), source.pixel_spacing[0], generator=generator
            ).cpu()
            for b, i in enumerate(chosen[start : start + batch]):
                at = len(records)
                if spec.patch:
                    where = patch_corners(square[b].numpy(), spec.size, k, rng)
                else:
                    where = np.zeros((1, 2), np.int64)
                for corner in where:
                    view = None if not spec.patch else torch.as_tensor(corner)[None]
                    normal[len(records)] = training_views(square[b : b + 1], spec.size, view)[0]
                    low[len(records)] = training_views(noisy[b : b + 1], spec.size, view)[0]
                    corners[len(records)] = corner
                    native_index[len(records)] = len(natives)
                    records.append({
                        "patient": patient_hash,
                        "series_uid": source.series_uid,
                        "slice_uid": _slice_uid(source, int(i)),
                        "source_index": int(i),
                        "corner": [int(v) for v in corner] if spec.patch else None,
                    })  # fmt: skip
                    roles.append(role)
                spacing[at : len(records)] = source.pixel_spacing[0]
                natives.append(np.clip(np.rint(square[b].numpy()), -32768, 32767).astype(np.int16))
            if on_slice is not None:
                on_slice(len(square))

    n = len(records)  # fewer than allocated when slices could not be decoded
    normal, low, spacing = normal[:n], low[:n], spacing[:n]
    corners, native_index = corners[:n], native_index[:n]
    if not any(r == "train" for r in roles):
        raise InputProblem(root, "no training slice could be decoded")
    train_idx = [i for i, r in enumerate(roles) if r == "train"]
    n_arch = max(1, round(len(train_idx) / (spec.split.arch_ratio + 1)))
    arch = sorted(rng.choice(train_idx, size=n_arch, replace=False).tolist())
    splits = {
        "train": [i for i in train_idx if i not in set(arch)],
        "arch": arch,
        "test": [i for i, r in enumerate(roles) if r == "test"],
    }
    for split, idx in splits.items():
        for i in idx:
            records[i]["split"] = split
    manifest = {
        "format": CACHE_FORMAT,
        "software_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "root": str(root.resolve()),
        "spec": spec.to_dict(),
        "patients": {
            "train": [hashlib.sha256(p.encode()).hexdigest()[:12] for p in train_patients],
            "test": [hashlib.sha256(p.encode()).hexdigest()[:12] for p in test_patients],
        },
        "splits": splits,
        "slices": records,
        "skipped": [str(problem) for problem in problems],
        "seconds": round(time.perf_counter() - started, 2),
        "device": simulator.device.type,
    }
    partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    np.save(partial / "normal.npy", normal)
    np.save(partial / "low.npy", low)
    np.save(partial / "spacing.npy", spacing)  # native pixel size of each pair's slice
    if len({n.shape for n in natives}) == 1:  # fresh noise needs one native matrix size
        np.save(partial / "native.npy", np.stack(natives))
        np.save(partial / "native_index.npy", native_index)
        if spec.patch:
            np.save(partial / "corners.npy", corners)
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(partial, folder)
    # Round-trip through JSON so a fresh manifest equals a reloaded one (tuples -> lists).
    return PreparedDataset(folder, json.loads(json.dumps(manifest)), reused=False), problems
