"""One exception for bad input, so every command can print one line and carry on."""

from __future__ import annotations

from pathlib import Path


class InputProblem(Exception):
    """A problem with one input file or series: where it is and what is wrong, in one line.

    Commands catch it per series, print ``str(problem)``, process the remaining good input
    and exit non-zero at the end; nobody sees a traceback for bad data.
    """

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
