"""Sending derived series: one C-STORE SCU thread per destination.

Each instance a destination accepts is written to the spool's journal before the next is
sent, so after any stop only the unacknowledged ones go again. Transient failures (nothing
listening, timeouts, an aborted association, 0xA7xx out of resources, a rejected-transient
association) back off exponentially for the whole destination; permanent ones (a rejected
AE title, 0x0122 and the other refusals) stop that series for that destination at once and
are recorded with their reason, so nothing loops on a refusal.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, Association
from pynetdicom.status import GENERAL_STATUS, STORAGE_SERVICE_CLASS_STATUS

from manas_infer.data.series import CT_IMAGE_STORAGE
from manas_infer.dicom_node.config import Destination, NodeConfig
from manas_infer.dicom_node.disk import is_disk_full
from manas_infer.dicom_node.records import DestinationProgress, DestState, SeriesRecord, State
from manas_infer.dicom_node.spool import Spool

log = logging.getLogger("manas_infer.node.sender")

ACCEPTED = {0x0000, 0x0001, 0x0107, 0x0111, 0x0116, 0xB000, 0xB006, 0xB007}  # 0x0111: has it
TRANSIENT = {0x0210, 0x0213}  # duplicate invocation, resource limitation
REJECT_DIAGNOSTICS = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised",
    (1, 7): "called AE title not recognised",
    (2, 1): "no reason given",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}


@dataclass(frozen=True)
class Outcome:
    kind: str  # "done", "transient", "permanent", "stopped"
    reason: str = ""
    sent: int = 0  # instances accepted in this attempt


def status_text(code: int) -> str:
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(code) or GENERAL_STATUS.get(code)
    if meaning is None and 0xA700 <= code <= 0xA7FF:
        meaning = ("Failure", "Refused: Out of Resources")
    elif meaning is None and 0xA900 <= code <= 0xA9FF:
        meaning = ("Failure", "Data Set does not match SOP Class")
    elif meaning is None and 0xC000 <= code <= 0xCFFF:
        meaning = ("Failure", "Cannot understand")
    return f"0x{code:04X} ({meaning[1] if meaning else 'unknown status'})"


def is_transient_status(code: int) -> bool:
    return 0xA700 <= code <= 0xA7FF or code in TRANSIENT


def diagnose_connection(host: str, port: int, timeout: float) -> str:
    """Why an association could not be opened, in words an on-call person can act on."""
    try:
        socket.create_connection((host, port), timeout=min(timeout, 5.0)).close()
    except ConnectionRefusedError:
        return f"connection refused at {host}:{port} (is the destination running?)"
    except TimeoutError:
        return f"connection to {host}:{port} timed out (host down or a firewall)"
    except OSError as exc:
        return f"cannot connect to {host}:{port} ({exc.strerror or exc})"
    return (
        f"association with {host}:{port} aborted or timed out (the port answers: check the "
        "destination's logs and its AE configuration)"
    )


def client_tls(destination: Destination) -> ssl.SSLContext:
    """TLS towards a destination: its CA verifies the server, our certificate if it asks."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(destination.ca_certificates)
    )
    if destination.certificate is not None:
        key = destination.private_key
        context.load_cert_chain(str(destination.certificate), str(key) if key else None)
    return context


class Sender(threading.Thread):
    """Delivers every processed series to one destination, in the order processed."""

    def __init__(
        self, config: NodeConfig, destination: Destination, spool: Spool, stop: threading.Event
    ) -> None:
        super().__init__(name=f"manas-node-sender-{destination.name}", daemon=True)
        self.config, self.dest, self.spool, self.stop = config, destination, spool, stop
        self.wake = threading.Event()
        self.retry_at = 0.0
        self.consecutive_failures = 0
        self.ae = AE(ae_title=config.sending_ae)
        node = config.node
        self.ae.acse_timeout = node.acse_timeout
        self.ae.dimse_timeout = node.dimse_timeout
        self.ae.network_timeout = node.network_timeout
        self.ae.connection_timeout = min(node.network_timeout, 10.0)
        self.ae.maximum_pdu_size = node.max_pdu
        self.ae.add_requested_context(
            CT_IMAGE_STORAGE, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
        self.tls_args = (client_tls(destination), destination.host) if destination.tls else None

    def pending(self) -> list[SeriesRecord]:
        waiting = [
            record
            for record in self.spool.records(State.SENDING)
            if record.destinations.get(self.dest.name) is not None
            and record.destinations[self.dest.name].state == DestState.PENDING
        ]
        return sorted(waiting, key=lambda record: record.processed_at or 0.0)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                waiting = self.pending()
                delay = self.retry_at - time.time()
                if waiting and delay <= 0:
                    self.send_series(waiting[0].key)
                    continue
                self.wake.wait(min(max(delay, 0.05), 1.0) if waiting else 1.0)
                self.wake.clear()
            except Exception as exc:
                if not is_disk_full(exc):
                    log.exception("sender %s error; continuing in 5 s", self.dest.name)
                    self.stop.wait(5)
                    continue
                # The journal or a record could not be written: nothing is lost (an
                # instance accepted but not journalled is sent again, the PACS keeps one),
                # so wait for space with the destination's back-off, without a restart.
                wait = self._back_off()
                log.warning(
                    "sender %s: spool disk full (%s); retrying in %.1f s",
                    self.dest.name,
                    getattr(exc, "strerror", None) or exc,
                    wait,
                )

    def send_series(self, key: str) -> Outcome:
        record = self.spool.get(key)
        if record is None:
            return Outcome("stopped")
        files = sorted(self.spool.derived_dir(key).glob("*.dcm"))
        done = self.spool.sent_uids(key, self.dest.name)
        started = time.perf_counter()
        outcome = self._transfer(key, files, done)
        seconds = time.perf_counter() - started
        self._record(key, outcome, len(files), seconds)
        return outcome

    def _transfer(self, key: str, files: list[Path], done: set[str]) -> Outcome:
        dest = self.dest
        if not files:
            return Outcome("transient", "the derived series is missing from the spool")
        assoc = self.ae.associate(
            dest.host, dest.port, ae_title=dest.ae_title, tls_args=self.tls_args
        )
        if not assoc.is_established:
            return self._not_established(assoc)
        sent = 0
        try:
            for path in files:
                if self.stop.is_set():
                    return Outcome("stopped", "node stopping", sent)
                try:
                    ds = pydicom.dcmread(path)
                    uid = str(ds.SOPInstanceUID)
                except Exception as exc:  # our own output, damaged on disk: not worth retrying
                    reason = f"derived file {path.name} unreadable ({type(exc).__name__})"
                    return Outcome("permanent", reason, sent)
                if uid in done:
                    continue
                try:
                    response = assoc.send_c_store(ds)
                except ValueError as exc:  # no accepted presentation context for the class
                    return Outcome(
                        "permanent", f"{dest.ae_title} accepts no CT Image Storage ({exc})"
                    )
                except RuntimeError:
                    return Outcome("transient", "association lost while sending", sent)
                if not response or "Status" not in response:
                    return Outcome(
                        "transient", "no C-STORE response (timeout or association aborted)", sent
                    )
                code = int(response.Status)
                if code in ACCEPTED:
                    self.spool.record_sent(key, dest.name, uid)
                    done.add(uid)
                    sent += 1
                    continue
                comment = str(response.get("ErrorComment", "") or "")
                text = f"C-STORE of {path.name} answered {status_text(code)}"
                text += f": {comment}" if comment else ""
                kind = "transient" if is_transient_status(code) else "permanent"
                return Outcome(kind, text, sent)
        finally:
            if assoc.is_established:
                assoc.release()
            else:
                assoc.abort()
        return Outcome("done", "", sent)

    def _not_established(self, assoc: Association) -> Outcome:
        """Why no association: the peer's rejection (permanent or transient, as it said), or
        what a plain connection attempt finds."""
        dest = self.dest
        if assoc.is_rejected and assoc.acceptor.primitive is not None:
            rejection = assoc.acceptor.primitive
            why = REJECT_DIAGNOSTICS.get(
                (rejection.result_source, rejection.diagnostic), "unknown reason"
            )
            text = f"association rejected by {dest.ae_title}@{dest.host}:{dest.port}: {why}"
            if rejection.result == 0x01:
                return Outcome("permanent", text + " (permanent)")
            return Outcome("transient", text + " (transient)")
        return Outcome(
            "transient", diagnose_connection(dest.host, dest.port, self.ae.connection_timeout)
        )

    def _record(self, key: str, outcome: Outcome, total: int, seconds: float) -> None:
        """The attempt's outcome into the series' record, then its log line and back-off."""
        now = time.time()
        gave_up = False

        def change(record: SeriesRecord) -> None:
            nonlocal gave_up
            gave_up = self._note_outcome(record, key, outcome, total, now)
            _settle(record)

        try:
            record = self.spool.update(key, change)
        except KeyError:
            return
        self._report(key, record, outcome, total, seconds, gave_up)

    def _note_outcome(
        self, record: SeriesRecord, key: str, outcome: Outcome, total: int, now: float
    ) -> bool:
        """This destination's progress after an attempt; True when it gives up on the series
        (transient failures for longer than sending.give_up_after)."""
        name = self.dest.name
        gave_up = False
        progress = record.destinations[name]
        progress.sent = len(self.spool.sent_uids(key, name))
        progress.total = total
        if outcome.kind == "done":
            progress.state, progress.last_error = DestState.SENT, None
            record.note(f"sent to {name}: {progress.sent}/{total} accepted")
        elif outcome.kind == "transient":
            progress.attempts += 1
            progress.first_failure = progress.first_failure or now
            progress.last_error = outcome.reason
            if now - progress.first_failure > self.config.sending.give_up_after:
                gave_up = True
                progress.state = DestState.FAILED
                progress.last_error = (
                    f"gave up after {progress.attempts} attempts in "
                    f"{now - progress.first_failure:.0f} s: {outcome.reason}"
                )
            record.note(f"{name}: {progress.last_error}")
        elif outcome.kind == "permanent":
            progress.state, progress.last_error = DestState.FAILED, outcome.reason
            progress.attempts += 1
            record.note(f"{name}: permanent failure: {outcome.reason}")
        return gave_up

    def _report(
        self,
        key: str,
        record: SeriesRecord,
        outcome: Outcome,
        total: int,
        seconds: float,
        gave_up: bool,
    ) -> None:
        """The attempt's log line and the destination's back-off; a failure is recorded."""
        progress = record.destinations[self.dest.name]
        where = self._where()
        if outcome.kind == "done":
            self.consecutive_failures, self.retry_at = 0, 0.0
            log.info(
                "series %s sent to %s: %d/%d instances accepted (%d now, %.1f s)",
                key,
                where,
                progress.sent,
                total,
                outcome.sent,
                seconds,
            )
        elif outcome.kind == "permanent" or gave_up:
            self.consecutive_failures, self.retry_at = 0, 0.0
            self._record_failure(key, record, progress, total)
        elif outcome.kind == "transient":
            if outcome.sent:
                self.consecutive_failures = 0
            wait = self._back_off()
            log.warning(
                "series %s to %s: %s; %d/%d accepted so far, retry %d in %.1f s",
                key,
                where,
                outcome.reason,
                progress.sent,
                total,
                progress.attempts,
                wait,
            )

    def _record_failure(
        self, key: str, record: SeriesRecord, progress: DestinationProgress, total: int
    ) -> None:
        """A series this destination will not get: in failures.jsonl and one error line."""
        self.spool.record_failure(
            series=key,
            series_uid=record.series_uid,
            derived_series_uid=record.derived_series_uid,
            stage="sending",
            destination=self.dest.name,
            reason=progress.last_error,
            sent=progress.sent,
            total=total,
        )
        log.error(
            "series %s NOT delivered to %s: %s. %d/%d instances were accepted; not retried "
            "(recorded in failures.jsonl; fix the cause and send the series again)",
            key,
            self._where(),
            progress.last_error,
            progress.sent,
            total,
        )

    def _back_off(self) -> float:
        """One more failure in a row: the next attempt waits twice as long as the last (from
        sending.retry_initial up to sending.retry_max). Returns the wait in seconds."""
        self.consecutive_failures += 1
        settings = self.config.sending
        wait = min(
            settings.retry_initial * 2 ** (self.consecutive_failures - 1), settings.retry_max
        )
        self.retry_at = time.time() + wait
        return wait

    def _where(self) -> str:
        """The destination as log lines name it: its name, AE title and address."""
        dest = self.dest
        return f"{dest.name} ({dest.ae_title}@{dest.host}:{dest.port})"


def _settle(record: SeriesRecord) -> None:
    """Once no destination is pending, the series is sent, or failed naming who failed."""
    states = {progress.state for progress in record.destinations.values()}
    # A series reopened by new instances meanwhile is the worker's again.
    if record.state == State.SENDING and DestState.PENDING not in states:
        failed = [
            name
            for name, progress in record.destinations.items()
            if progress.state == DestState.FAILED
        ]
        record.state = State.FAILED if failed else State.SENT
        record.error = (
            "; ".join(f"{name}: {record.destinations[name].last_error}" for name in failed) or None
        )
