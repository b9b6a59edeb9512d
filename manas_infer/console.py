"""Terminal output shared by every command: one console, progress bars, problem lines."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from manas_infer.errors import InputProblem

# Progress and messages go to stderr so that --json output on stdout stays machine-readable.
console = Console(stderr=True, highlight=False)


def progress() -> Progress:
    """A progress bar for long work; quiet when MANAS_NO_PROGRESS is set (tests, logs)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=bool(os.environ.get("MANAS_NO_PROGRESS")),
    )


def report_problem(problem: InputProblem, what: str = "skipped") -> None:
    """One line per bad input: the file or folder, the problem, and what happened to it."""
    console.print(f"[red]{what}:[/red] {problem}", soft_wrap=True)
