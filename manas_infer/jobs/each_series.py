"""The one loop over CT series that ``simulate``, ``denoise`` and the demo share: the inputs
scanned with a progress bar, one bar per series, a series that fails reported by file while
the others go on, and every output (folder, preview picture) named the same way."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from manas_infer.console import progress, report_problem
from manas_infer.data.derived import WrittenSeries
from manas_infer.data.series import CTSeries, count_files, scan
from manas_infer.errors import InputProblem

Panel = tuple[str, np.ndarray]  # (caption, HU slice) in a preview picture


@dataclass(frozen=True)
class DerivedVolumes:
    """A written derived series with its input and output volumes (HU), for previews and
    checks."""

    written: WrittenSeries
    source: np.ndarray
    output: np.ndarray


class SeriesJob(Protocol):
    """What one kind of job does to one series; ``for_each_series`` does the rest."""

    def label(self, series: CTSeries) -> str:
        """The progress bar's text."""
        ...

    def run(
        self, series: CTSeries, folder: Path, on_slice: Callable[[int], None]
    ) -> DerivedVolumes:
        """The timed work: read, compute and write the derived series into ``folder``."""
        ...

    def finish(self, series: CTSeries, done: DerivedVolumes, seconds: float) -> dict:
        """The result's own fields, after the common ones; a job may print its line here."""
        ...

    def panels(self, done: DerivedVolumes, middle: int) -> tuple[list[Panel], Panel]:
        """The preview's slices side by side, and its difference image."""
        ...


def scan_inputs(paths: Sequence[Path]) -> tuple[list[CTSeries], list[InputProblem]]:
    """Scan inputs with a progress bar; print every problem; return (series, problems)."""
    found: list[CTSeries] = []
    problems: list[InputProblem] = []
    with progress() as bar:
        for path in paths:
            task = bar.add_task(f"Reading {path.name or path}", total=count_files(path) or None)
            report = scan(path, on_file=lambda task=task: bar.advance(task))
            found += report.series
            problems += report.problems
    for problem in problems:
        report_problem(problem)
    return found, problems


def skip(problem: InputProblem, problems: list[InputProblem]) -> None:
    """Report a bad input on its own line and keep it for the exit code; the work goes on."""
    report_problem(problem)
    problems.append(problem)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:40] or "series"


def series_folder_name(series: CTSeries) -> str:
    """A readable, unique folder name for one series among several."""
    number = series.first.get("SeriesNumber") or "x"
    return f"{number}-{_slug(series.description)}-{series.series_uid[-6:].replace('.', '')}"


def for_each_series(
    work: Sequence[tuple[CTSeries, SeriesJob]],
    out: Path,
    preview: Path | None,
    several: bool,
    problems: list[InputProblem],
) -> list[dict]:
    """Run each series' job with a progress bar; a series whose input or output is bad is
    reported, added to ``problems`` and skipped. With ``several`` series each goes into its
    own sub-folder of ``out`` (and its own preview), else straight into ``out``. Returns one
    result a written series: where from, where to, how long, and the job's own fields."""
    results = []
    with progress() as bar:
        for series, job in work:
            task = bar.add_task(job.label(series), total=series.n_slices)
            folder = out / series_folder_name(series) if several else out
            started = time.perf_counter()
            try:
                done = job.run(series, folder, lambda count, task=task: bar.advance(task, count))
            except InputProblem as problem:
                skip(problem, problems)
                continue
            seconds = time.perf_counter() - started
            result = {
                "source": str(series.folder),
                "output": str(done.written.folder),
                "series_uid": done.written.series_uid,
                "slices": done.written.n_slices,
                "seconds": round(seconds, 2),
                **job.finish(series, done, seconds),
            }
            if preview is not None:
                result["preview"] = str(_save_preview(preview, several, series, job, done))
            results.append(result)
    return results


def _save_preview(
    preview: Path, several: bool, series: CTSeries, job: SeriesJob, done: DerivedVolumes
) -> Path:
    """The job's preview of the middle slice; with several series, one file each."""
    from manas_infer.preview import save_comparison  # matplotlib: only when a preview is asked

    png = (
        preview.with_name(f"{preview.stem}-{series_folder_name(series)}{preview.suffix}")
        if several
        else preview
    )
    middle = series.n_slices // 2
    panels, difference = job.panels(done, middle)
    title = f"{series.description} - slice {middle + 1} of {series.n_slices}"
    return save_comparison(png, panels, difference=difference, title=title)
