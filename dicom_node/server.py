"""Wiring: spool + router + models + SCP handlers + worker + senders, signals and a
graceful stop. ``run_node`` is what ``manas-infer serve`` calls."""

from __future__ import annotations

import logging
import signal
import ssl
import sys
import threading
import time

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from manas_infer.dicom_node.config import NodeConfig
from manas_infer.dicom_node.door import GuardSettings, known_host_check
from manas_infer.dicom_node.guard import GuardedServer
from manas_infer.dicom_node.intake import STORAGE_CLASSES, TRANSFER_SYNTAXES, Intake
from manas_infer.dicom_node.records import State
from manas_infer.dicom_node.routing import Router
from manas_infer.dicom_node.sender import Sender
from manas_infer.dicom_node.spool import Spool
from manas_infer.dicom_node.worker import Worker

log = logging.getLogger("manas_infer.node")
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
STOP_WAIT_S = 60.0  # longest wait for the worker and senders to reach a step boundary


class _OneLine(logging.Filter):
    """pynetdicom logs a full traceback for a PDU it cannot decode (a blank calling AE
    title, junk bytes): anyone on the network could fill the log. Keep the line, with the
    exception's type and message, and drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.name.startswith("pynetdicom"):
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


class _Reported(logging.Filter):
    """Drop pynetdicom's lines about failed outgoing connections: the sender reports them
    itself, once, with the destination, the cause and the next retry."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(
            ("Association request failed: unable to connect", "TCP Initialisation Error")
        )


def setup_logging(config: NodeConfig) -> None:
    """Plain timestamped lines on stderr and in the log file (a daemon's output is read in
    journald or a file, not a terminal). pynetdicom's own lines only from warnings up:
    its debug output describes PDUs and would add nothing an on-call person needs."""
    level = getattr(logging, config.logging.level.upper())
    formatter = logging.Formatter(LOG_FORMAT)
    config.log_file.parent.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [
        logging.StreamHandler(sys.stderr),
        logging.FileHandler(config.log_file, encoding="utf-8"),
    ]
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(_Reported())
        handler.addFilter(_OneLine())
    ours = logging.getLogger("manas_infer")
    for old in list(ours.handlers):
        ours.removeHandler(old)
    for handler in handlers:
        ours.addHandler(handler)
    ours.setLevel(level)
    ours.propagate = False
    theirs = logging.getLogger("pynetdicom")
    for old in list(theirs.handlers):
        theirs.removeHandler(old)
    for handler in handlers:
        theirs.addHandler(handler)
    theirs.setLevel(max(level, logging.WARNING))
    theirs.propagate = False


def server_tls(config: NodeConfig) -> ssl.SSLContext | None:
    """The node's TLS context, TLS 1.2 at least; the handshake itself runs in the
    connection's thread under ``node.handshake_timeout`` (see ``guard``)."""
    tls = config.tls
    if not tls.enabled:
        return None
    context = ssl.create_default_context(
        ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca_certificates) if tls.ca_certificates else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    if tls.require_client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
    elif tls.ca_certificates:
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def build_ae(config: NodeConfig) -> AE:
    """The Storage SCP's application entity: limits, timeouts, accepted contexts."""
    node = config.node
    ae = AE(ae_title=node.ae_title)
    ae.maximum_associations = node.max_associations
    ae.maximum_pdu_size = node.max_pdu
    ae.acse_timeout = node.acse_timeout
    ae.dimse_timeout = node.dimse_timeout
    ae.network_timeout = node.network_timeout
    ae.require_called_aet = True
    for sop_class in STORAGE_CLASSES:
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    return ae


def start_scp(config: NodeConfig, intake: Intake) -> GuardedServer:
    """Listen, behind the door of ``guard``: pynetdicom's threaded server (made through
    ``AE.make_server`` with our server class), served from a daemon thread as
    ``AE.start_server(block=False)`` does. Raises OSError when the port cannot be bound."""
    node = config.node
    ae = build_ae(config)
    allowed = config.security
    settings = GuardSettings(
        ae_title=node.ae_title,
        handshake_timeout=node.handshake_timeout,
        max_pending=node.max_pending_connections,
        max_associations=node.max_associations,
        is_allowed=intake.is_allowed,
        is_known_host=known_host_check(
            [entry.host for entry in allowed.allowed], allowed.allow_any
        ),
    )
    server = ae.make_server(
        (node.host, node.port),
        ssl_context=server_tls(config),
        evt_handlers=intake.handlers(),
        server_class=GuardedServer,
        settings=settings,
    )
    ae._servers.append(server)  # AssociationServer.shutdown() removes itself from this list
    thread = threading.Thread(
        target=server.serve_forever, name=f"manas-node-acceptor-{node.port}", daemon=True
    )
    thread.start()
    return server


class Node:
    """The running node. ``start`` returns once it listens; ``stop`` is graceful."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.stop_event = threading.Event()
        self.spool = Spool(config.spool.path)
        self.router = Router(config)  # raises NodeConfigError for unknown models
        self.intake = Intake(config, self.spool)
        self.senders = {
            destination.name: Sender(config, destination, self.spool, self.stop_event)
            for destination in config.destinations
        }
        self.worker = Worker(config, self.spool, self.router, self.stop_event, self._processed)
        self.ae: AE | None = None
        self.server = None

    def _processed(self, key: str) -> None:
        for sender in self.senders.values():
            sender.wake.set()

    def start(self) -> None:
        for note in self.spool.recover():
            log.info("recovered: %s", note)
        for choice in self.router.choices():  # load every routed model once, now
            self.worker.denoiser(choice)
        self.server = start_scp(self.config, self.intake)
        self.ae = self.server.ae
        self.worker.start()
        for sender in self.senders.values():
            sender.start()
        self._log_started()

    def _log_started(self) -> None:
        config = self.config
        backlog = _by_state(self.spool.count_by_state()) or "empty"
        allowed = (
            "any calling AE"
            if config.security.allow_any
            else ", ".join(f"{entry.ae_title}@{entry.host}" for entry in config.security.allowed)
        )
        tls = "off"
        if config.tls.enabled:
            tls = "on, client certificate " + (
                "required" if config.tls.require_client_certificate else "optional"
            )
        destinations = (
            ", ".join(
                f"{dest.name}={dest.ae_title}@{dest.host}:{dest.port}"
                for dest in config.destinations
            )
            or "NONE (derived series stay in the spool)"
        )
        models = ", ".join(
            f"{denoiser.name} on {denoiser.provider}" for denoiser in self.worker.denoisers.values()
        )
        log.info(
            "DICOM node %s listening on %s:%d (TLS %s); allowed: %s; destinations: %s; "
            "models: %s; stable age %g s; spool %s (%s)",
            config.node.ae_title,
            config.node.host,
            config.node.port,
            tls,
            allowed,
            destinations,
            models,
            config.spool.stable_age,
            config.spool.path,
            backlog,
        )

    def stop(self) -> None:
        """Stop listening, let open associations finish (up to shutdown_grace), then stop
        the worker and senders between steps: in-flight work is finished or parked."""
        grace = self.config.node.shutdown_grace
        log.info("stopping: no new associations; waiting up to %g s for open ones", grace)
        if self.server is not None:
            self.server.shutdown()
        deadline = time.monotonic() + grace
        while self.server is not None and self.server.active_associations:
            if time.monotonic() > deadline:
                log.warning("aborting %d open association(s)", len(self.server.active_associations))
                for assoc in self.server.active_associations:
                    assoc.abort()
                break
            time.sleep(0.1)
        self.stop_event.set()
        self.worker.wake.set()
        for sender in self.senders.values():
            sender.wake.set()
        # The worker stops between slices; a slice on a busy CPU can take several seconds,
        # and leaving the interpreter under a running onnxruntime call aborts the process.
        for thread in [self.worker, *self.senders.values()]:
            if thread.is_alive():
                thread.join(timeout=max(STOP_WAIT_S, deadline - time.monotonic()))
        left = {
            state: count
            for state, count in self.spool.count_by_state().items()
            if state not in (State.SENT, State.FAILED)
        }
        log.info("stopped; left in the spool for the next start: %s", _by_state(left) or "nothing")


def _by_state(counts: dict[str, int]) -> str:
    """``{"queued": 2, "sent": 5}`` -> "2 queued, 5 sent" (states in name order)."""
    return ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))


def run_node(config: NodeConfig) -> int:
    """Start, serve until SIGTERM or SIGINT, stop gracefully. Returns the exit code."""
    setup_logging(config)
    node = Node(config)
    stop_requested = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        node.start()
    except OSError as exc:
        log.error(
            "cannot listen on %s:%d: %s",
            config.node.host,
            config.node.port,
            exc.strerror or exc,
        )
        node.stop_event.set()
        return 1
    while not stop_requested.wait(1.0):
        if not node.worker.is_alive():
            log.error("the worker thread died; stopping")
            break
    node.stop()
    return 0
