"""The worker: finds series that stopped growing (stable age), denoises each with the model
and strength its route names (when no rule matches, the ones its measured noise calls for),
writes the derived series with the one writer (``denoise_series``), and hands it to the
senders. One thread, one series at a time, one loaded model per name.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from manas_infer.data.series import CTSeries, scan
from manas_infer.dicom_node.config import NodeConfig
from manas_infer.dicom_node.disk import is_disk_full
from manas_infer.dicom_node.records import DestinationProgress, SeriesRecord, State
from manas_infer.dicom_node.routing import Route, Router, series_ctdivol, series_kernel
from manas_infer.dicom_node.spool import Spool
from manas_infer.errors import InputProblem
from manas_infer.jobs.denoise import denoise_series
from manas_infer.jobs.each_series import DerivedVolumes
from manas_infer.runtime import Denoiser, ModelChoice

log = logging.getLogger("manas_infer.node.worker")


class Parked(Exception):
    """Raised between batches when the node is stopping: the series goes back to the queue."""


class Worker(threading.Thread):
    def __init__(
        self,
        config: NodeConfig,
        spool: Spool,
        router: Router,
        stop: threading.Event,
        on_processed: Callable[[str], None],
        denoisers: dict[str, Denoiser] | None = None,
    ) -> None:
        super().__init__(name="manas-node-worker", daemon=True)
        self.config, self.spool, self.router, self.stop = config, spool, router, stop
        self.on_processed = on_processed
        self.denoisers: dict[str, Denoiser] = denoisers if denoisers is not None else {}
        self.wake = threading.Event()
        self._last_purge = 0.0

    def denoiser(self, choice: ModelChoice) -> Denoiser:
        """One loaded model per file, kept for the life of the process."""
        key = str(choice.path.resolve())
        if key not in self.denoisers:
            processing = self.config.processing
            self.denoisers[key] = Denoiser(choice, device=processing.device, batch=processing.batch)
        return self.denoisers[key]

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                worked = self.tick()
            except Exception as exc:
                if is_disk_full(exc):  # saving a record: nothing changed, try again later
                    log.warning("spool disk full (%s); the worker waits 5 s", exc)
                else:
                    log.exception("worker error; continuing in 5 s")
                self.stop.wait(5)
                continue
            if not worked:
                self.wake.wait(0.25)
                self.wake.clear()

    def tick(self) -> bool:
        """Queue every series that is stable, process the oldest queued one. True if it did."""
        now = time.time()
        stable_age = self.config.spool.stable_age
        for record in self.spool.records(State.RECEIVING):
            quiet = now - self.spool.last_arrival(record.key)
            if quiet >= stable_age:
                self._queue(record.key, quiet)
        self._purge_old(now)
        queued = self.spool.due(State.QUEUED, now)  # not those waiting out a full disk
        if not queued or self.stop.is_set():
            return False
        self.process(queued[0].key)
        return True

    def _queue(self, key: str, quiet: float) -> None:
        with self.spool.lock(key):
            record = self.spool.get(key)
            if record is None or record.state != State.RECEIVING:
                return
            count = self.spool.instance_count(key)
            record.state, record.instances = State.QUEUED, count
            record.note(f"complete: {count} instances, none for {quiet:.1f} s")
            self.spool.save(record)
        log.info(
            "series %s complete: %d instances, no new instance for %.1f s; queued",
            key,
            count,
            quiet,
        )

    def _purge_old(self, now: float) -> None:
        hours = self.config.spool.keep_sent_hours
        if now - self._last_purge < 60:
            return
        self._last_purge = now
        for record in self.spool.records(State.SENT):
            if now - record.updated > hours * 3600:
                self.spool.purge(record.key)
                log.info("series %s sent %.0f h ago: removed from the spool", record.key, hours)

    def process(self, key: str) -> None:
        with self.spool.lock(key):
            record = self.spool.get(key)
            if record is None or record.state != State.QUEUED:
                return
            generation = record.generation
            record.state = State.PROCESSING
            record.note("processing")
            self.spool.save(record)
        try:
            self._process(record, generation)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            spool = self.config.spool  # transient: back to the queue, retried with back-off
            self.spool.requeue_disk_full(
                key, generation, exc, spool.disk_full_retry_initial, spool.disk_full_retry_max
            )

    def _process(self, record: SeriesRecord, generation: int) -> None:
        key = record.key
        started = time.perf_counter()
        try:
            route, result = self._denoise(record)
        except Parked:
            self._finish(key, generation, self._park)
            log.info("series %s: parked by the stop; it will be processed after restart", key)
            return
        except Exception as exc:  # bad input, a model that fails: recorded, not retried
            if is_disk_full(exc):
                raise  # not the series' fault: process() queues it again
            self._fail_series(record, generation, exc)
            return
        seconds = time.perf_counter() - started
        done = self._finish(
            key, generation, lambda latest: self._processed(latest, route, result, seconds)
        )
        if done is not None:
            self._hand_over(done, route, result, seconds)

    def _denoise(self, record: SeriesRecord) -> tuple[Route, DerivedVolumes]:
        """The series' route, and its derived series written into the spool; Parked if the
        node stops meanwhile."""
        key = record.key
        series = self._read_series(key)
        route = self.router.choose(
            record.calling_ae, series_ctdivol(series), series, series_kernel(series)
        )
        denoiser = self.denoiser(route.model)
        log.info(
            "series %s: denoising %d slices with %s at strength %g %% on %s; %s",
            key,
            series.n_slices,
            denoiser.name,
            route.strength,
            denoiser.provider,
            route.why,
        )

        def check_stop(_n: int) -> None:
            if self.stop.is_set():
                raise Parked

        result = denoise_series(
            series,
            denoiser,
            self.spool.derived_dir(key),
            overwrite=True,
            on_slice=check_stop,
            strength=route.strength,
            why=route.why,
        )
        return route, result

    def _read_series(self, key: str) -> CTSeries:
        """The one CT series received under ``key``; InputProblem, with every reason, else."""
        report = scan(self.spool.incoming_dir(key))
        if report.problems or len(report.series) != 1:
            reasons = (
                "; ".join(f"{found.path.name}: {found.problem}" for found in report.problems)
                or f"{len(report.series)} series in one series folder"
            )
            raise InputProblem(self.spool.incoming_dir(key), reasons)
        return report.series[0]

    def _fail_series(self, record: SeriesRecord, generation: int, exc: Exception) -> None:
        """A series that cannot be processed: failed, in failures.jsonl, one error line."""
        key = record.key
        reason = exc.problem if isinstance(exc, InputProblem) else f"{type(exc).__name__}: {exc}"
        self._finish(key, generation, lambda latest: self._fail(latest, reason))
        self.spool.record_failure(
            series=key, series_uid=record.series_uid, stage="processing", reason=reason
        )
        log.error(
            "series %s failed in processing: %s. Nothing was sent; fix the input or the "
            "model and send the series again",
            key,
            reason,
        )

    def _hand_over(
        self, record: SeriesRecord, route: Route, result: DerivedVolumes, seconds: float
    ) -> None:
        """Wake the senders for a processed series, or say that no destination will get it."""
        key = record.key
        if record.state == State.SENT:
            log.warning(
                "series %s denoised (%d slices) but no destination is configured for route %r: "
                "the derived series stays in %s",
                key,
                result.written.n_slices,
                route.rule,
                self.spool.derived_dir(key),
            )
        else:
            log.info(
                "series %s denoised: %d slices in %.1f s, derived series %s; sending to %s",
                key,
                result.written.n_slices,
                seconds,
                result.written.series_uid,
                ", ".join(route.destinations),
            )
            self.on_processed(key)

    def _finish(
        self, key: str, generation: int, change: Callable[[SeriesRecord], None]
    ) -> SeriesRecord | None:
        """Apply the outcome unless new instances reopened the series meanwhile."""
        with self.spool.lock(key):
            record = self.spool.get(key)
            if record is None:
                return None
            if record.generation != generation:
                record.note("result dropped: new instances arrived while processing")
                self.spool.save(record)
                log.info("series %s grew while processing: it will be processed again", key)
                return None
            change(record)
            self.spool.save(record)
            return record

    @staticmethod
    def _park(record: SeriesRecord) -> None:
        record.state = State.QUEUED
        record.note("parked by a stop; queued again")

    @staticmethod
    def _fail(record: SeriesRecord, reason: str) -> None:
        record.state, record.error = State.FAILED, reason
        record.note(f"failed in processing: {reason}")

    def _processed(
        self, record: SeriesRecord, route: Route, result: DerivedVolumes, seconds: float
    ) -> None:
        written = result.written
        record.model, record.route = route.model.name, route.rule
        record.derived_series_uid, record.derived_slices = written.series_uid, written.n_slices
        record.processed_at, record.error = time.time(), None
        record.instances = self.spool.instance_count(record.key)
        previous = record.destinations
        record.destinations = {}
        for name in route.destinations:
            progress = DestinationProgress(total=written.n_slices)
            progress.sent = len(self.spool.sent_uids(record.key, name))
            old = previous.get(name)
            if old is not None:
                progress.attempts, progress.first_failure = old.attempts, old.first_failure
            record.destinations[name] = progress
        record.state = State.SENDING if route.destinations else State.SENT
        record.note(
            f"denoised {written.n_slices} slices with {route.model.name} at strength "
            f"{route.strength:g} % in {seconds:.1f} s ({route.why})"
        )
