"""What the node remembers about one series: its state, its destinations' progress and a
short history. ``state.json`` in the series' spool folder is a ``SeriesRecord`` as JSON (no
patient data: UIDs, counts, reasons); ``spool.py`` reads and writes it.

A series moves RECEIVING -> QUEUED -> PROCESSING -> SENDING -> SENT, or ends FAILED; new
instances reopen it (its ``generation`` goes up) and a full disk sends it back to QUEUED.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from enum import StrEnum

HISTORY_LENGTH = 30


class State(StrEnum):
    RECEIVING = "receiving"  # instances arriving; complete after the stable age
    QUEUED = "queued"  # complete, waiting for the worker
    PROCESSING = "processing"  # being denoised
    SENDING = "sending"  # derived series written, destinations pending
    SENT = "sent"  # every destination accepted every instance
    FAILED = "failed"  # processing failed, or a destination failed permanently


class DestState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


@dataclass
class DestinationProgress:
    """One destination's view of one series."""

    state: str = DestState.PENDING
    attempts: int = 0
    first_failure: float | None = None
    last_error: str | None = None
    sent: int = 0
    total: int = 0


@dataclass
class SeriesRecord:
    """What ``state.json`` holds for one series (no patient data: UIDs, counts, reasons)."""

    key: str
    series_uid: str
    state: str = State.RECEIVING
    calling_ae: str = ""
    calling_host: str = ""
    first_received: float = 0.0
    updated: float = 0.0
    generation: int = 0  # bumped when new instances reopen a series that was taken
    instances: int = 0
    model: str | None = None
    route: str | None = None
    derived_series_uid: str | None = None
    derived_slices: int = 0
    processed_at: float | None = None
    destinations: dict[str, DestinationProgress] = field(default_factory=dict)
    error: str | None = None
    history: list[list] = field(default_factory=list)
    retry_after: float = 0.0  # queued but not before this time (after a full disk)
    disk_full_retries: int = 0
    refused_over_limit: int = 0  # limits.max_slices when the series was refused whole

    def note(self, text: str) -> None:
        """Add an event to the series' short history (shown by node-status)."""
        self.history.append([round(time.time(), 3), text])
        del self.history[:-HISTORY_LENGTH]

    @classmethod
    def from_json(cls, data: dict) -> SeriesRecord:
        known = {spec.name for spec in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["destinations"] = {
            name: DestinationProgress(**progress)
            for name, progress in data.get("destinations", {}).items()
        }
        return cls(**values)
