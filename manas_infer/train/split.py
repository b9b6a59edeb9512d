"""Finding the CT under a data root and dividing it patient-wise into training and test
patients (``SplitConfig``): headers only, so a command refuses data that cannot give a
split before it simulates anything or creates any folder."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from manas_infer.data.series import CTSeries, scan
from manas_infer.data.volume import CTVolume, is_volume_file
from manas_infer.errors import InputProblem
from manas_infer.train.dataset import DatasetSpec, SplitConfig

Source = CTSeries | CTVolume


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
        problem
        for problem in report.problems
        if not is_volume_file(problem.path)
        and not (problem.problem == "no DICOM files found" and problem.path == root)
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


def _named_test_patients(
    names: tuple[str, ...], root: Path, by_patient: dict[str, list[Source]]
) -> list[str]:
    """The patients that ``--test-patient`` names (a PatientID or a folder name each)."""
    test: list[str] = []
    for token in names:
        matches = [
            patient
            for patient, sources in sorted(by_patient.items())
            if patient == token or any(token in _folder_names(source, root) for source in sources)
        ]
        if not matches:
            every = [source for sources in by_patient.values() for source in sources]
            known = ", ".join(
                sorted({name for source in every for name in _folder_names(source, root)})
            )
            raise InputProblem(root, f"test patient {token!r} not found (folders: {known})")
        test += [match for match in matches if match not in test]
    return test


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
        test = _named_test_patients(split.test_patients, root, by_patient)
    else:
        if split.n_test_patients >= len(patients):
            raise InputProblem(
                root,
                f"{split.n_test_patients} test patient(s) leave none for training "
                f"({len(patients)} patients found)",
            )
        order = np.random.default_rng(split.seed).permutation(len(patients))
        test = sorted(patients[i] for i in order[: split.n_test_patients])
    train = [patient for patient in patients if patient not in test]
    if not train:
        raise InputProblem(root, "every patient is a test patient: none left for training")
    return train, test, by_patient


def check_data(root: Path, spec: DatasetSpec):
    """(sources, problems, (train patients, test patients, sources per patient)), or an
    InputProblem when the data cannot give the split: cheap, headers only, so commands
    call it before they start any work or create any folder."""
    sources, problems = find_sources(Path(root), spec.volume_hu_offset)
    if not sources:
        raise problems[0] if problems else InputProblem(root, "no usable CT found")
    return sources, problems, assign_patients(sources, Path(root), spec.split)
