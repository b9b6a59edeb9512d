"""Training data (``manas_infer.train.dataset``, built by ``train.prepare``): the
patient-wise split of real CT, the resized and simulated pairs, the cache and its manifest,
and the refusals before any work.

Small on purpose: 64x64 slices, 90 projection views, at most 6 slices per patient."""

from __future__ import annotations

import functools
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from conftest import CHEST, CT, J2K, PANCREAS, need

import manas_infer.train.prepare as prepare_module
from manas_infer.data.phantom import phantom_volume
from manas_infer.data.series import scan
from manas_infer.errors import InputProblem
from manas_infer.simulate.dose import DoseSettings
from manas_infer.train.dataset import (
    SPLITS,
    DatasetSpec,
    FreshNoise,
    PreparedDataset,
    SplitConfig,
    to_training_size,
)
from manas_infer.train.prepare import prepare_dataset
from manas_infer.train.split import find_sources

SIZE, VIEWS, MAX_SLICES = 64, 90, 6
CHEST_FOLDER = "lung-pet-ct-dx-a0001"
CHEST_PATIENT_ID = "Lung_Dx-A0001"
DOSES = (10.0, 2.5)


def _spec(dose: float = 10.0, test: tuple[str, ...] = (CHEST_FOLDER,), **split) -> DatasetSpec:
    return DatasetSpec(
        dose=DoseSettings(dose_percent=dose, n_views=VIEWS),
        size=SIZE,
        split=SplitConfig(test_patients=test, max_slices_per_patient=MAX_SLICES, **split),
    )


@functools.cache
def three() -> Path:
    """A data root of links to the three series these tests were written for (the chest,
    the pancreas and the J2K series), so that series added to ../shared/data/ct later do
    not change their counts."""
    root = Path(tempfile.mkdtemp(prefix="three-series-"))
    for folder in (CHEST, PANCREAS, J2K):
        (root / folder.name).symlink_to(need(folder))
    return root


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in need(folder).iterdir() if p.is_file() and p.suffix != ".txt")


def _header(folder: Path) -> pydicom.Dataset:
    return pydicom.dcmread(_dicom_files(folder)[0], stop_before_pixels=True)


def _all_arrays(prepared: PreparedDataset) -> dict[str, tuple[np.ndarray, ...]]:
    return {split: prepared.arrays(split) for split in SPLITS}


class _NoSimulation:
    """Stands in for LowDoseSimulator where nothing may be simulated."""

    def __init__(self, *args, **kwargs) -> None:
        raise AssertionError("the dose simulator was started")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dataset-cache")


@pytest.fixture(scope="module")
def built(cache: Path) -> dict[float, PreparedDataset]:
    """The real root prepared at 10 % and 2.5 % dose (chest patient held out)."""
    for folder in (CHEST, PANCREAS, J2K):
        need(folder)
    out = {}
    for dose in DOSES:
        prepared, problems = prepare_dataset(three(), _spec(dose), cache)
        assert problems == [], problems
        assert prepared.reused is False
        out[dose] = prepared
    return out


# --------------------------------------------------------------------------------------
# The real root: split, manifest, arrays, cache


def test_counts_follow_the_split_rules(built: dict[float, PreparedDataset]) -> None:
    for prepared in built.values():
        # test: the chest patient's 6 slices; training: 2 patients x 6 = 12 slices,
        # arch = round(12 / (7 + 1)) = 2, train = 10.
        assert prepared.counts() == {"train": 10, "arch": 2, "test": 6}
        parts = [set(prepared.indices(split).tolist()) for split in SPLITS]
        assert sum(len(p) for p in parts) == 18
        assert set().union(*parts) == set(range(18)), "the splits cover every slice"
        for a in range(3):
            for b in range(a + 1, 3):
                assert parts[a].isdisjoint(parts[b]), f"{SPLITS[a]} and {SPLITS[b]} overlap"
        for split in SPLITS:
            for i in prepared.indices(split):
                assert prepared.manifest["slices"][i]["split"] == split
        with pytest.raises(ValueError, match="unknown split"):
            prepared.indices("validation")


def test_test_split_is_the_chest_patient(built: dict[float, PreparedDataset]) -> None:
    chest = _header(CHEST)
    chest_uids = {
        pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in _dicom_files(CHEST)
    }
    pancreas, j2k = _header(PANCREAS), _header(J2K)
    for prepared in built.values():
        records = prepared.manifest["slices"]
        test = [records[i] for i in prepared.indices("test")]
        assert {r["series_uid"] for r in test} == {chest.SeriesInstanceUID}
        assert len({r["slice_uid"] for r in test}) == 6
        assert {r["slice_uid"] for r in test} <= chest_uids
        # Evenly spaced over the 64 slices, ends included.
        expected = np.linspace(0, 63, MAX_SLICES).round().astype(int).tolist()
        assert sorted(r["source_index"] for r in test) == expected
        training = [records[i] for s in ("train", "arch") for i in prepared.indices(s)]
        assert chest.SeriesInstanceUID not in {r["series_uid"] for r in training}
        # Patient keys: PatientID, else the study, else the folder. The J2K files carry
        # neither PatientID nor StudyInstanceUID, so their folder stands for the patient.
        assert not j2k.get("PatientID") and not j2k.get("StudyInstanceUID")
        assert prepared.manifest["patients"]["test"] == [_hash(CHEST_PATIENT_ID)]
        assert sorted(prepared.manifest["patients"]["train"]) == sorted(
            [_hash(str(pancreas.PatientID)), _hash(str(three() / J2K.name))]
        )
        assert {r["patient"] for r in test} == {_hash(CHEST_PATIENT_ID)}


def test_manifest_records_settings_split_and_sources(
    built: dict[float, PreparedDataset],
) -> None:
    sources, _ = find_sources(three())
    for dose, prepared in built.items():
        manifest = prepared.manifest
        on_disk = json.loads((prepared.folder / "manifest.json").read_text())
        assert on_disk == json.loads(json.dumps(manifest)), "the file holds the manifest"
        spec = on_disk["spec"]
        assert spec == json.loads(json.dumps(_spec(dose).to_dict()))
        assert spec["dose"]["dose_percent"] == dose
        assert spec["dose"]["n_views"] == VIEWS
        assert spec["dose"]["mode"] == "insertion"
        assert spec["size"] == SIZE
        assert spec["split"]["test_patients"] == [CHEST_FOLDER]
        assert spec["split"]["max_slices_per_patient"] == MAX_SLICES
        assert spec["split"]["arch_ratio"] == 7
        assert on_disk["root"] == str(three().resolve())
        assert {r["series_uid"] for r in on_disk["slices"]} == {s.series_uid for s in sources}
        assert len(on_disk["slices"]) == 18
        assert all(r["slice_uid"] for r in on_disk["slices"])


def test_arrays_hold_resized_slices_and_dose_dependent_noise(
    built: dict[float, PreparedDataset],
) -> None:
    chest = scan(CHEST).series[0]
    noise_sd = {}
    for dose, prepared in built.items():
        arrays = _all_arrays(prepared)
        for split, (low, normal, spacing) in arrays.items():
            n = prepared.counts()[split]
            assert low.shape == normal.shape == (n, SIZE, SIZE)
            assert low.dtype == normal.dtype == np.float32
            assert spacing.shape == (n,)
            assert np.isfinite(low).all() and np.isfinite(normal).all()
        low, normal, spacing = arrays["test"]
        # Noise is simulated on the native slice, so the spacing is the scanner's own.
        np.testing.assert_allclose(spacing, chest.pixel_spacing[0], rtol=1e-6)
        # A test slice is the chest slice, brought to 64x64 by to_training_size.
        record = prepared.manifest["slices"][int(prepared.indices("test")[2])]
        source = torch.from_numpy(chest.read_slice_hu(record["source_index"]))[None]
        expected, factor = to_training_size(source, SIZE)
        assert factor == 512 / SIZE
        np.testing.assert_allclose(normal[2], expected[0].numpy(), atol=1e-3)
        noise = np.concatenate([arrays[s][0] - arrays[s][1] for s in SPLITS])
        assert np.abs(noise).max() > 0, "low dose differs from normal dose"
        assert abs(float(noise.mean())) < 3.0, "inserted noise has no bias"
        noise_sd[dose] = float(noise.std())
    assert 3.0 < noise_sd[10.0] < 150.0, noise_sd
    assert 10.0 < noise_sd[2.5] < 300.0, noise_sd
    # Quantum noise grows as 1/sqrt(dose): a factor 2 from 10 % to 2.5 %.
    assert 1.5 < noise_sd[2.5] / noise_sd[10.0] < 3.5, noise_sd
    # The normal-dose side does not depend on the dose.
    for split in SPLITS:
        np.testing.assert_array_equal(built[10.0].arrays(split)[1], built[2.5].arrays(split)[1])


def test_same_call_reuses_the_cache(
    built: dict[float, PreparedDataset], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prepare_module, "LowDoseSimulator", _NoSimulation)
    first = built[10.0]
    totals: list[int] = []
    started = time.perf_counter()
    again, problems = prepare_dataset(three(), _spec(10.0), cache, on_total=totals.append)
    seconds = time.perf_counter() - started
    assert again.reused is True and problems == []
    assert again.folder == first.folder
    assert totals == [], "nothing was planned or simulated"
    assert seconds < 10.0, f"reusing the cache took {seconds:.1f} s"
    assert again.manifest["splits"] == json.loads(json.dumps(first.manifest["splits"]))
    for split in SPLITS:
        for a, b in zip(first.arrays(split), again.arrays(split), strict=True):
            np.testing.assert_array_equal(a, b)


def test_another_dose_gets_another_cache_folder(
    built: dict[float, PreparedDataset], cache: Path
) -> None:
    ten, low = built[10.0].folder, built[2.5].folder
    assert ten != low
    assert ten.parent == low.parent == cache
    assert ten.name.startswith("10pct-64px-") and low.name.startswith("2.5pct-64px-")
    assert ten.name.split("-")[-1] != low.name.split("-")[-1], "the key covers the dose"
    assert (ten / "manifest.json").is_file() and (low / "manifest.json").is_file()
    assert not list(cache.glob("*.partial*")), "no half-written folder is left"


def test_patient_id_selects_the_same_test_set_as_the_folder_name(
    built: dict[float, PreparedDataset], cache: Path
) -> None:
    by_folder = built[10.0]
    by_id, _ = prepare_dataset(three(), _spec(10.0, test=(CHEST_PATIENT_ID,)), cache)
    assert by_id.folder != by_folder.folder, "the spec (and cache key) names the patient"
    assert by_id.counts() == by_folder.counts()
    assert by_id.manifest["patients"] == by_folder.manifest["patients"]

    def test_uids(prepared: PreparedDataset) -> list[str]:
        return [prepared.manifest["slices"][i]["slice_uid"] for i in prepared.indices("test")]

    assert test_uids(by_id) == test_uids(by_folder)
    for a, b in zip(by_id.arrays("test"), by_folder.arrays("test"), strict=True):
        np.testing.assert_array_equal(a, b)  # same data, same seed: same pairs


# --------------------------------------------------------------------------------------
# Refusals before any work


def _must_not_start(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    monkeypatch.setattr(prepare_module, "LowDoseSimulator", _NoSimulation)
    return []


def test_one_patient_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    root.mkdir()
    for f in _dicom_files(CHEST)[10:13]:
        (root / f.name).symlink_to(f)
    totals = _must_not_start(monkeypatch)
    with pytest.raises(InputProblem, match="at least 2 patients") as caught:
        prepare_dataset(root, _spec(test=()), tmp_path / "cache", on_total=totals.append)
    assert "found 1" in str(caught.value)
    assert caught.value.path == root
    assert totals == []
    assert not (tmp_path / "cache").exists(), "nothing written"


def test_unknown_test_patient_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    three()
    totals = _must_not_start(monkeypatch)
    with pytest.raises(InputProblem, match="'Nobody-42' not found") as caught:
        prepare_dataset(
            three(), _spec(test=("Nobody-42",)), tmp_path / "cache", on_total=totals.append
        )
    assert CHEST_FOLDER in str(caught.value), "the message lists the folders there are"
    assert totals == []
    assert not (tmp_path / "cache").exists()


def test_split_that_leaves_no_training_patient_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    three()
    _must_not_start(monkeypatch)
    everyone = (CHEST_FOLDER, PANCREAS.name, J2K.name)
    with pytest.raises(InputProblem, match="none left for training"):
        prepare_dataset(three(), _spec(test=everyone), tmp_path / "cache")
    with pytest.raises(InputProblem, match="leave none for training"):
        prepare_dataset(three(), _spec(test=(), n_test_patients=3), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_a_single_training_slice_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for folder in (CHEST, PANCREAS):
        (root / folder.name).mkdir(parents=True)
        source = _dicom_files(folder)[20]
        (root / folder.name / source.name).symlink_to(source)
    with pytest.raises(InputProblem, match="only 1 training slice"):
        prepare_dataset(root, _spec(), tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*")), "no dataset folder written"


def test_an_undecodable_slice_is_skipped_by_name_and_the_rest_prepared(tmp_path: Path) -> None:
    """lung-pet-ct-dx-a0002/1-30.dcm is a real truncated export: training names it and
    goes on with the other slices instead of ending the run (it once ended a whole run)."""
    second_chest = need(CT / "lung-pet-ct-dx-a0002")
    truncated = second_chest / "1-30.dcm"
    root = tmp_path / "data"
    (root / "a0002").mkdir(parents=True)
    for f in [second_chest / "1-01.dcm", second_chest / "1-15.dcm", truncated]:
        (root / "a0002" / f.name).symlink_to(f)
    (root / CHEST_FOLDER).mkdir()
    for f in _dicom_files(CHEST)[30:33]:
        (root / CHEST_FOLDER / f.name).symlink_to(f)
    prepared, problems = prepare_dataset(root, _spec(), tmp_path / "cache")
    assert [p.path.name for p in problems] == ["1-30.dcm"]
    assert "cannot be decoded" in problems[0].problem
    counts = prepared.counts()
    assert counts["train"] + counts["arch"] == 2, "the two good slices are kept"
    assert counts["test"] == 3
    assert len(np.load(prepared.folder / "normal.npy")) == 5, "no empty rows left allocated"
    assert prepared.manifest["skipped"] == [str(problems[0])]


def test_empty_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _must_not_start(monkeypatch)
    with pytest.raises(InputProblem) as caught:
        prepare_dataset(empty, _spec(test=()), tmp_path / "cache")
    assert caught.value.path == empty
    assert "no DICOM files or CT volumes found" in str(caught.value)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SplitConfig(arch_ratio=0), "arch ratio must be at least 1, got 0"),
        (lambda: SplitConfig(max_slices_per_patient=0), "max slices per patient"),
        (lambda: SplitConfig(n_test_patients=0), "at least one test patient"),
        (lambda: DatasetSpec(DoseSettings(5.0), size=8), "image size must be at least 16, got 8"),
        (lambda: DoseSettings(dose_percent=0.0), r"dose_percent must be in \(0, 100\]"),
        (lambda: DoseSettings(dose_percent=-5.0), r"dose_percent must be in \(0, 100\].*-5"),
        (lambda: DoseSettings(dose_percent=150.0), r"dose_percent must be in \(0, 100\]"),
    ],
    ids=["arch0", "max0", "ntest0", "size8", "dose0", "dose-neg", "dose150"],
)
def test_bad_settings_raise_a_clear_value_error(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# --------------------------------------------------------------------------------------
# Volume files as patients


def _write_volume(path: Path, seed: int) -> np.ndarray:
    volume = np.rint(phantom_volume(4, SIZE, seed)).astype(np.int16)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((6.25, 6.25, 90.0))
    path.parent.mkdir(parents=True)
    sitk.WriteImage(image, str(path))
    return volume


def _volume_spec() -> DatasetSpec:
    return DatasetSpec(
        dose=DoseSettings(dose_percent=5.0, n_views=VIEWS),
        size=SIZE,
        split=SplitConfig(n_test_patients=1),
    )


def test_volume_folders_are_the_patients(tmp_path: Path) -> None:
    root = tmp_path / "data"
    volumes = {
        "patientA": _write_volume(root / "patientA" / "ct.nii.gz", 1),
        "patientB": _write_volume(root / "patientB" / "ct.nii.gz", 2),
    }
    spec = _volume_spec()
    prepared, problems = prepare_dataset(root, spec, tmp_path / "cache")
    assert problems == []
    # 4 test slices; 4 training slices, arch = max(1, round(4 / 8)) = 1.
    assert prepared.counts() == {"train": 3, "arch": 1, "test": 4}
    patients = prepared.manifest["patients"]
    assert len(patients["test"]) == len(patients["train"]) == 1
    names = {_hash(name): name for name in volumes}
    assert set(patients["test"] + patients["train"]) == set(names)
    test_name = names[patients["test"][0]]
    test_file = (root / test_name / "ct.nii.gz").resolve()
    records = prepared.manifest["slices"]
    test_records = [records[i] for i in prepared.indices("test")]
    assert {r["series_uid"] for r in test_records} == {f"file:{test_file}"}
    assert {r["patient"] for r in test_records} == {_hash(test_name)}
    low, normal, spacing = prepared.arrays("test")
    order = [r["source_index"] for r in test_records]
    np.testing.assert_array_equal(normal, volumes[test_name][order].astype(np.float32))
    np.testing.assert_allclose(spacing, 6.25)
    assert not np.array_equal(low, normal)
    # train-data : arch-data = 1 : 1 splits the 4 training slices in half.
    even = DatasetSpec(spec.dose, spec.size, SplitConfig(n_test_patients=1, arch_ratio=1))
    halves, _ = prepare_dataset(root, even, tmp_path / "cache")
    assert halves.folder != prepared.folder
    assert halves.counts() == {"train": 2, "arch": 2, "test": 4}


def test_a_root_of_volumes_alone_reports_no_problem(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _write_volume(root / "patientA" / "ct.nii.gz", 1)
    _write_volume(root / "patientB" / "ct.nii.gz", 2)
    sources, problems = find_sources(root)
    assert len(sources) == 2
    assert [str(p) for p in problems] == []


# --------------------------------------------------------------------------------------
# Resizing


@pytest.mark.parametrize("shape", [(40, 60), (60, 40)])
def test_non_square_slices_are_padded_with_air_and_resized(shape: tuple[int, int]) -> None:
    hu = torch.full((1, *shape), 40.0)
    resized, factor = to_training_size(hu, 64)
    assert resized.shape == (1, 64, 64)
    assert factor == pytest.approx(60 / 64)
    image = resized[0] if shape[0] < shape[1] else resized[0].T  # padding in rows
    # 10 of 60 rows padded on each side: 10 * 64 / 60 > 10 output rows are pure padding.
    assert torch.all(image[:10] == -1024.0) and torch.all(image[-10:] == -1024.0)
    assert torch.allclose(image[12:52], torch.tensor(40.0))


def test_resizing_keeps_a_flat_field_flat() -> None:
    for side, value in ((100, 40.0), (512, -500.0), (48, 1000.0)):
        flat = torch.full((2, side, side), value)
        resized, factor = to_training_size(flat, 64)
        assert resized.shape == (2, 64, 64)
        assert factor == pytest.approx(side / 64)
        assert torch.allclose(resized, torch.tensor(value), atol=1e-3), side


def test_downsizing_is_antialiased() -> None:
    stripes = torch.zeros(1, 192, 192)
    stripes[:, ::2], stripes[:, 1::2] = 100.0, -100.0
    resized, factor = to_training_size(stripes, 64)
    assert factor == 3.0
    # Point sampling at every third row would keep +-100 HU stripes; a low-pass does not.
    assert float(resized.std()) < 25.0
    assert abs(float(resized.mean())) < 1.0


def test_square_slices_of_the_target_size_are_unchanged() -> None:
    hu = torch.randn(3, 64, 64) * 100
    resized, factor = to_training_size(hu, 64)
    assert factor == 1.0
    assert torch.equal(resized, hu)


# --------------------------------------------------------------------------------------
# Fresh noise and the torch Dataset


def test_fresh_noise_differs_each_call_with_the_same_strength(
    built: dict[float, PreparedDataset],
) -> None:
    prepared = built[10.0]
    cached_low, normal, spacing = prepared.arrays("test")
    native, corners = prepared.native("test")
    assert corners is None and native.shape == (len(normal), 512, 512)
    batch = torch.from_numpy(native)
    spacing_t = torch.from_numpy(spacing.astype(np.float32))
    before = batch.clone()
    fresh = FreshNoise(_spec(10.0), "cpu", seed=0)
    first, second = fresh(batch, spacing_t, None), fresh(batch, spacing_t, None)
    target = torch.from_numpy(normal)[:, None]
    assert first.shape == second.shape == target.shape
    assert torch.equal(batch, before), "the normal-dose slices are not modified"
    assert not torch.equal(first, second), "a new realisation every call"
    sd1, sd2 = float((first - target).std()), float((second - target).std())
    assert sd1 > 1.0 and 0.8 < sd1 / sd2 < 1.25, (sd1, sd2)
    # The same noise model as the cached pairs.
    cached_sd = float((torch.from_numpy(cached_low - normal)).std())
    assert 0.75 < sd1 / cached_sd < 1.33, (sd1, cached_sd)
    # A seed makes it reproducible.
    again = FreshNoise(_spec(10.0), "cpu", seed=0)
    assert torch.equal(again(batch, spacing_t, None), first)


def test_patches_are_native_crops_inside_the_body(cache: Path) -> None:
    spec = DatasetSpec(
        DoseSettings(dose_percent=10.0, n_views=VIEWS), size=32, patch=True,
        patches_per_slice=2, split=SplitConfig(test_patients=(CHEST_FOLDER,),
                                               max_slices_per_patient=3),
    )  # fmt: skip
    prepared, _ = prepare_dataset(three(), spec, cache)
    assert prepared.counts()["test"] == 6  # 3 slices x 2 patches
    low, normal, spacing = prepared.arrays("test")
    native, corners = prepared.native("test")
    assert normal.shape == (6, 32, 32) and corners.shape == (6, 2)
    chest = scan(CHEST).series[0]
    for i, record in enumerate(prepared.manifest["slices"][j] for j in prepared.indices("test")):
        r, c = record["corner"]
        full = chest.read_slice_hu(record["source_index"])
        np.testing.assert_array_equal(normal[i], full[r : r + 32, c : c + 32])
        np.testing.assert_array_equal(native[i], full)
        assert (normal[i] > -500).mean() > 0.5, "patches lie in the body"
    # Native-resolution patches keep far more noise than whole slices resized to 64.
    resized_low, resized_normal, _ = prepare_dataset(three(), _spec(10.0), cache)[0].arrays("test")
    assert (low - normal).std() > 2 * (resized_low - resized_normal).std()
    # Fresh noise takes the same crops.
    fresh = FreshNoise(spec, "cpu", seed=1)
    drawn = fresh(torch.from_numpy(native), torch.from_numpy(spacing.astype(np.float32)),
                  torch.from_numpy(corners))  # fmt: skip
    assert drawn.shape == (6, 1, 32, 32)
    assert 0.6 < float((drawn[:, 0] - torch.from_numpy(normal)).std()) / (low - normal).std() < 1.6


class SlicePairs(torch.utils.data.Dataset):
    """(low dose, normal dose, pixel spacing) per slice of one split, as [1, H, W] HU
    tensors: the cache serves a plain torch Dataset and DataLoader (the trainer itself
    keeps each split on the device instead)."""

    def __init__(self, prepared: PreparedDataset, split: str) -> None:
        low, normal, spacing = prepared.arrays(split)
        self.low, self.normal = torch.from_numpy(low), torch.from_numpy(normal)
        self.spacing = torch.from_numpy(spacing.astype(np.float32))

    def __len__(self) -> int:
        return len(self.normal)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.low[i][None], self.normal[i][None], self.spacing[i]


def test_slice_pairs_serve_one_split(built: dict[float, PreparedDataset]) -> None:
    prepared = built[10.0]
    for split in SPLITS:
        pairs = SlicePairs(prepared, split)
        assert len(pairs) == prepared.counts()[split]
        low_all, normal_all, spacing_all = prepared.arrays(split)
        for i in (0, len(pairs) - 1):
            low, normal, spacing = pairs[i]
            assert low.shape == normal.shape == (1, SIZE, SIZE)
            assert low.dtype == normal.dtype == spacing.dtype == torch.float32
            assert spacing.shape == ()
            np.testing.assert_array_equal(low[0].numpy(), low_all[i])
            np.testing.assert_array_equal(normal[0].numpy(), normal_all[i])
            assert float(spacing) == pytest.approx(spacing_all[i])
    loader = torch.utils.data.DataLoader(SlicePairs(prepared, "train"), batch_size=4)
    low, normal, spacing = next(iter(loader))
    assert low.shape == normal.shape == (4, 1, SIZE, SIZE) and spacing.shape == (4,)
