"""The spool: the node's only memory that matters. Everything the node has acknowledged or
decided is on disk before it counts, so a restart (even after kill -9) resumes from here.

Layout under the spool folder::

    series/<key>/state.json          the series' record (atomic replace, fsynced)
    series/<key>/incoming/<sop>.dcm  received instances (temporary file, fsync, rename)
    series/<key>/derived/CT00001.dcm the derived series (written by the denoise writer)
    series/<key>/sent-<dest>.log     "UID ok" for each instance the destination accepted,
                                     appended and fsynced after every accepted C-STORE
    failures.jsonl                   every permanent failure, one JSON object a line

``<key>`` is a hash of the SeriesInstanceUID: safe as a folder name whatever a sender puts
in the UID, and safe to log. One process owns a spool; threads share it through the
per-series locks here. What a record holds is ``records.py``; how a file is written whole,
``disk.py``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

from manas_infer.data.derived import fsync_dir
from manas_infer.dicom_node.disk import (
    disk_full_reason,
    is_disk_full,
    write_atomically,
    write_synced,
)
from manas_infer.dicom_node.records import SeriesRecord, State
from manas_infer.hashing import text_sha256

log = logging.getLogger("manas_infer.node.spool")

STATE_FILE = "state.json"
SENT_MARK = " ok"


def series_key(series_uid: str) -> str:
    """A short, filesystem-safe and loggable stand-in for a SeriesInstanceUID."""
    return text_sha256(series_uid, 20)


def instance_file_name(sop_uid: str) -> str:
    """The UID itself when it is a well-formed UID, else its hash (a sender's bad UID must
    not become a path)."""
    if re.fullmatch(r"[0-9][0-9.]{0,63}", sop_uid):
        return f"{sop_uid}.dcm"
    return text_sha256(sop_uid, 40) + ".dcm"


class Spool:
    """The on-disk state of every series, with an in-memory copy of the records."""

    def __init__(self, root: Path, read_only: bool = False) -> None:
        self.root = Path(root)
        self.series_root = self.root / "series"
        self.read_only = read_only
        self._records: dict[str, SeriesRecord] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()
        self._arrivals: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._journal_guard = threading.Lock()
        if not read_only:
            self.series_root.mkdir(parents=True, exist_ok=True)
        if self.series_root.is_dir():
            for folder in sorted(self.series_root.iterdir()):
                record = self._load(folder)
                if record is not None:
                    self._records[record.key] = record

    # ---- paths
    def series_dir(self, key: str) -> Path:
        return self.series_root / key

    def incoming_dir(self, key: str) -> Path:
        return self.series_root / key / "incoming"

    def derived_dir(self, key: str) -> Path:
        return self.series_root / key / "derived"

    def _journal(self, key: str, destination: str) -> Path:
        return self.series_root / key / f"sent-{destination}.log"

    # ---- records
    def _load(self, folder: Path) -> SeriesRecord | None:
        path = folder / STATE_FILE
        if not path.is_file():
            return None
        try:
            return SeriesRecord.from_json(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, KeyError):
            return None  # only a rename can publish it, so this is not ours: recover() decides

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(key, threading.RLock())
        with lock:
            yield

    def get(self, key: str) -> SeriesRecord | None:
        record = self._records.get(key)
        return None if record is None else SeriesRecord.from_json(asdict(record))

    def records(self, *states: str) -> list[SeriesRecord]:
        """Copies of the records (only those in ``states`` if given), oldest first."""
        keys = [
            key
            for key, record in list(self._records.items())
            if not states or record.state in states
        ]
        found = [self.get(key) for key in keys]
        return sorted(
            (record for record in found if record), key=lambda record: record.first_received
        )

    def count_by_state(self) -> dict[str, int]:
        """How many series are in each state (only the states some series is in)."""
        counts: dict[str, int] = {}
        for record in self.records():
            counts[record.state] = counts.get(record.state, 0) + 1
        return counts

    def save(self, record: SeriesRecord) -> None:
        record.updated = time.time()
        folder = self.series_dir(record.key)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(folder / STATE_FILE, json.dumps(asdict(record), indent=1).encode())
        self._records[record.key] = SeriesRecord.from_json(asdict(record))

    def update(self, key: str, change: Callable[[SeriesRecord], object]) -> SeriesRecord:
        """Read, change and save one record under its lock; returns the saved copy."""
        with self.lock(key):
            record = self.get(key)
            if record is None:
                raise KeyError(key)
            change(record)
            self.save(record)
            return record

    def due(self, state: str, now: float | None = None) -> list[SeriesRecord]:
        """Records in ``state`` whose back-off (``retry_after``) has passed, oldest first."""
        now = time.time() if now is None else now
        return [record for record in self.records(state) if record.retry_after <= now]

    def requeue_disk_full(
        self, key: str, generation: int, exc: BaseException, initial: float, most: float
    ) -> float | None:
        """A full disk while processing: the series goes back to the queue, with an
        exponential back-off, and what it had half-written is removed. Returns the wait.

        If even its record cannot be saved, the change is kept in memory only: the record
        on disk says "processing", which the next start-up queues again anyway."""
        with self.lock(key):
            record = self.get(key)
            if record is None:
                return None
            _drop_partial_writes(self.series_dir(key))
            wait = min(initial * 2**record.disk_full_retries, most)
            if record.generation == generation:  # not reopened by new instances meanwhile
                record.state = State.QUEUED
            record.disk_full_retries += 1
            record.retry_after = time.time() + wait
            reason = disk_full_reason(exc)
            record.note(f"disk full while processing ({reason}); queued again, retry in {wait:g} s")
            try:
                self.save(record)
            except OSError as again:
                if not is_disk_full(again):
                    raise
                record.updated = time.time()
                self._records[key] = SeriesRecord.from_json(asdict(record))
        log.warning(
            "series %s: spool disk full while processing (%s); nothing was sent, the series "
            "is queued again and retried in %g s (free space in %s)",
            key,
            reason,
            wait,
            self.root,
        )
        return wait

    def known_derived(self, series_uid: str) -> bool:
        """Whether a series UID is one this node produced (its output routed back)."""
        return any(record.derived_series_uid == series_uid for record in self._records.values())

    # ---- instances
    def instance_path(self, key: str, sop_uid: str) -> Path:
        return self.incoming_dir(key) / instance_file_name(sop_uid)

    def write_temporary(self, data: bytes) -> Path:
        """A received instance's bytes on disk and fsynced, not yet part of any series (the
        staging folder is inside the spool, so publishing it is a rename)."""
        staging = self.root / "tmp"
        staging.mkdir(parents=True, exist_ok=True)
        tmp = staging / f".tmp-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
        write_synced(tmp, data)
        return tmp

    def publish(self, key: str, tmp: Path, sop_uid: str) -> None:
        """Rename a checked temporary file into the series (call under the series lock)."""
        final = self.instance_path(key, sop_uid)
        final.parent.mkdir(parents=True, exist_ok=True)
        new = not final.exists()
        os.replace(tmp, final)
        fsync_dir(final.parent)
        if new:
            self._counts[key] = self.instance_count(key) + 1
        self._arrivals[key] = time.time()

    def instance_count(self, key: str) -> int:
        if key not in self._counts:
            self._counts[key] = len(self.instance_files(key))
        return self._counts[key]

    def instance_files(self, key: str) -> list[Path]:
        folder = self.incoming_dir(key)
        if not folder.is_dir():
            return []
        return sorted(path for path in folder.iterdir() if path.suffix == ".dcm" and path.is_file())

    def last_arrival(self, key: str) -> float:
        """When the series last grew: this process's clock, else the folder's mtime (the
        rename that published the newest instance), which survives a restart."""
        folder = self.incoming_dir(key)
        on_disk = folder.stat().st_mtime if folder.is_dir() else 0.0
        return max(self._arrivals.get(key, 0.0), on_disk)

    # ---- sending journal
    def sent_uids(self, key: str, destination: str) -> set[str]:
        path = self._journal(key, destination)
        if not path.is_file():
            return set()
        # A record is "UID ok": a line torn by a kill -9 mid-append lacks the mark and does
        # not count, even when what remains of it looks like another UID.
        return {
            line[: -len(SENT_MARK)]
            for line in path.read_text().splitlines()
            if line.endswith(SENT_MARK)
        }

    def record_sent(self, key: str, destination: str, sop_uid: str) -> None:
        """Durably note that ``destination`` accepted ``sop_uid`` (before anything else)."""
        path = self._journal(key, destination)
        with self._journal_guard:
            new = not path.exists()
            with open(path, "a", encoding="ascii") as journal:
                if journal.tell() and not _ends_with_newline(path):
                    journal.write("\n")  # a torn line from a crash stays a line of its own
                journal.write(sop_uid + SENT_MARK + "\n")
                journal.flush()
                os.fsync(journal.fileno())
            if new:
                fsync_dir(path.parent)

    def record_failure(self, **entry: object) -> None:
        """Append one permanent failure to failures.jsonl (kept for people and node-status)."""
        entry = {"time": round(time.time(), 3), **entry}
        with self._journal_guard, open(self.root / "failures.jsonl", "a") as failures:
            failures.write(json.dumps(entry) + "\n")
            failures.flush()
            os.fsync(failures.fileno())

    def failures(self) -> list[dict]:
        path = self.root / "failures.jsonl"
        if not path.is_file():
            return []
        entries = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                entries.append(json.loads(line))
        return entries

    # ---- housekeeping
    def disk_used_percent(self) -> float:
        usage = shutil.disk_usage(self.root)
        return 100.0 * (usage.total - usage.free) / usage.total

    def recover(self) -> list[str]:
        """After a start: drop leftovers of interrupted writes, requeue interrupted work,
        rebuild records for instances whose record was never written. Returns notes."""
        notes: list[str] = []
        for junk in (self.root / "tmp").glob(".tmp-*"):
            junk.unlink(missing_ok=True)
        if not self.series_root.is_dir():
            return notes
        for folder in sorted(self.series_root.iterdir()):
            if not folder.is_dir():
                continue
            _drop_partial_writes(folder)
            key = folder.name
            record = self._records.get(key)
            has_files = bool(self.instance_files(key))
            if record is None:
                if not has_files:
                    shutil.rmtree(folder, ignore_errors=True)
                    continue
                uid = _series_uid_of(self.instance_files(key)[0]) or key
                record = SeriesRecord(key, uid, first_received=time.time())
                record.note("record rebuilt at start-up from received instances")
                self.save(record)
                notes.append(f"series {key}: record rebuilt from its instances")
            elif record.state == State.PROCESSING:
                record.state = State.QUEUED
                record.note("processing interrupted by a stop; queued again")
                self.save(record)
                notes.append(f"series {key}: processing was interrupted, queued again")
            elif record.state == State.RECEIVING and not has_files:
                shutil.rmtree(folder, ignore_errors=True)
                self._records.pop(key, None)
        return notes

    def purge(self, key: str) -> None:
        """Forget a finished series (its files and record)."""
        with self.lock(key):
            shutil.rmtree(self.series_dir(key), ignore_errors=True)
            self._records.pop(key, None)
            self._counts.pop(key, None)
            self._arrivals.pop(key, None)


def _drop_partial_writes(folder: Path) -> None:
    """Remove what an interrupted write left in a series folder (never a finished file)."""
    for junk in folder.glob(".derived.partial-*"):
        shutil.rmtree(junk, ignore_errors=True)
    for junk in folder.glob(".*.tmp-*"):
        junk.unlink(missing_ok=True)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"


def _series_uid_of(path: Path) -> str | None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except Exception:
        return None
    return str(ds.get("SeriesInstanceUID", "") or "") or None
