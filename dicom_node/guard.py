"""The door before pynetdicom: nothing unauthenticated may hold the accept loop or a slot.

pynetdicom's ``AssociationServer`` does the TLS handshake inside its accept step with no
timeout, and creates an ``Association`` (which counts against ``max_associations``) for
every TCP connection before any request has arrived; that association then waits up to
``acse_timeout`` for an A-ASSOCIATE-RQ even when the peer has already gone. So one idle
connection stalls every TLS peer, and ten port-scanner probes take every slot.

``GuardedServer`` keeps pynetdicom's model (a ``ThreadedAssociationServer`` with its own
request handler, built through ``AE.make_server``) but moves the work out of the accept
step: ``get_request`` only accepts. Each connection's own thread then, within one deadline
(``node.handshake_timeout``), does the TLS handshake and reads one complete A-ASSOCIATE-RQ
PDU, and checks it (well formed, calling AE title not blank and allow-listed with this
host, called AE title ours, a free slot). Only then is a pynetdicom ``Association`` made,
with the bytes already read handed to it, so only allow-listed peers ever take a slot.
Connections still at the door are capped (``node.max_pending_connections``), counted
separately for allow-listed hosts and the rest, so junk from elsewhere cannot shed them.

What the door checks on one connection is ``door.py``. Every refused or dropped connection
gets one log line with the peer and the reason, and no traceback; ``RateLimitedLog`` keeps a
flood from filling the disk.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable

from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from manas_infer.dicom_node.door import (
    REJECT_LIMIT,
    Admitted,
    GuardSettings,
    Refusal,
    check_connection,
    reject_pdu,
)

log = logging.getLogger("manas_infer.node.guard")


class RateLimitedLog:
    """At most ``burst`` lines per ``window`` seconds for each (kind, peer host); what is
    held back is counted and said in one line when that key next logs."""

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = 5,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger, self.burst, self.window, self.clock = logger, burst, window, clock
        self._state: dict[tuple[str, str], list[float | int]] = {}  # start, logged, held
        self._lock = threading.Lock()

    def warning(self, kind: str, host: str, message: str, *args: object) -> bool:
        """Log one line unless this key is over its budget; True when it was logged."""
        now = self.clock()
        with self._lock:
            if len(self._state) > 10_000:  # a scan over many addresses: forget old keys
                self._state = {k: v for k, v in self._state.items() if now - v[0] < self.window}
            start, logged, held = self._state.get((kind, host), (now, 0, 0))
            if now - start >= self.window:
                start, logged = now, 0
            if logged >= self.burst:
                self._state[(kind, host)] = [start, logged, held + 1]
                return False
            self._state[(kind, host)] = [start, logged + 1, 0]
        if held:
            message += f" (and {held} more like this from {host} not logged)"
        self.logger.warning(message, *args)
        return True


class _PrimedSocket(AssociationSocket):
    """pynetdicom's socket wrapper, first serving the bytes the door already read."""

    _primed: bytearray

    @classmethod
    def adopt(cls, original: AssociationSocket, primed: bytes) -> _PrimedSocket:
        # Take over the instance pynetdicom made (its event queue already holds the
        # transport-connected event; a second constructor call would queue another).
        new = cls.__new__(cls)
        new.__dict__.update(original.__dict__)
        new._primed = bytearray(primed)
        return new

    @property
    def ready(self) -> bool:
        return bool(self._primed) or super().ready

    def recv(self, nr_bytes: int) -> bytearray:
        out = self._primed[:nr_bytes]
        del self._primed[:nr_bytes]
        if len(out) < nr_bytes:
            out += super().recv(nr_bytes - len(out))
        return out


class GuardedRequestHandler(RequestHandler):
    """Runs in the connection's own thread: the door first, then pynetdicom's handler."""

    server: GuardedServer
    _admitted: Admitted | None = None

    def handle(self) -> None:
        server = self.server
        address = str(self.client_address[0])
        known = server.settings.is_known_host(address)
        try:
            admitted = server.admit(self.request, address)
        finally:
            server.release_pending(known)
        if admitted is None:
            return
        self._admitted = admitted
        self.request = admitted.sock
        # Check the slot count and create the association as one step, so two requests
        # at once cannot both take the last slot.
        with server.slot_lock:
            busy = server.busy_slots()
            if busy >= server.settings.max_associations:
                server.refuse(
                    admitted.sock,
                    address,
                    Refusal(
                        "slots",
                        f"refused association from AE {admitted.calling_ae!r} "
                        f"at {address}: all {busy} association slots busy (node."
                        "max_associations); rejected transient",
                        REJECT_LIMIT,
                    ),
                )
                return
            super().handle()

    def _create_association(self):
        assoc = super()._create_association()
        if self._admitted is not None:
            assoc.dul.socket = _PrimedSocket.adopt(assoc.dul.socket, self._admitted.request)
        return assoc


class GuardedServer(ThreadedAssociationServer):
    """A ``ThreadedAssociationServer`` whose accept step only accepts (see module doc)."""

    daemon_threads = True

    def __init__(self, *args, settings: GuardSettings, **kwargs) -> None:
        self.settings = settings
        self.connection_log = RateLimitedLog(log)
        self.slot_lock = threading.Lock()
        self._pending = {True: 0, False: 0}  # allow-listed host -> connections at the door
        self._pending_lock = threading.Lock()
        self.refused = 0  # connections refused or dropped at the door (for tests and status)
        kwargs["request_handler"] = GuardedRequestHandler
        super().__init__(*args, **kwargs)

    # ---- the accept loop: never blocks on a peer
    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        return self.socket.accept()  # TLS is done later, in the connection's own thread

    def verify_request(self, request: socket.socket, client_address: tuple) -> bool:
        """Reserve a place at the door, or drop the connection now (no thread made)."""
        address = str(client_address[0])
        known = self.settings.is_known_host(address)
        with self._pending_lock:
            if self._pending[known] < self.settings.max_pending:
                self._pending[known] += 1
                return True
            waiting = self._pending[known]
        self.refused += 1
        self.connection_log.warning(
            "door-full",
            address,
            "dropped connection from %s: %d connections from %s hosts already waiting to "
            "send an association request (node.max_pending_connections)",
            address,
            waiting,
            "allow-listed" if known else "other",
        )
        return False

    def release_pending(self, known: bool) -> None:
        with self._pending_lock:
            self._pending[known] = max(0, self._pending[known] - 1)

    def handle_error(self, request: socket.socket, client_address: tuple) -> None:
        """One line, never the traceback socketserver would print on stderr."""
        exc = sys.exc_info()[1]
        self.connection_log.warning(
            "error",
            str(client_address[0]),
            "connection from %s ended by an error: %s: %s",
            client_address[0],
            type(exc).__name__,
            exc,
        )

    def busy_slots(self) -> int:
        return len([assoc for assoc in self.ae.active_associations if assoc.is_acceptor])

    # ---- the door, in the connection's thread
    def admit(self, sock: socket.socket, address: str) -> Admitted | None:
        """TLS handshake and one A-ASSOCIATE-RQ within the deadline, checked; None (the
        connection closed, one line logged) for anything else."""
        try:
            return check_connection(sock, address, self.settings, self.ssl_context)
        except Refusal as refusal:
            self.refuse(sock, address, refusal)
        except Exception as exc:  # whatever a peer manages to provoke: one line, go on
            self.refuse(
                sock,
                address,
                Refusal("error", f"dropped connection from {address}: {type(exc).__name__}: {exc}"),
            )
        return None

    def refuse(self, sock: socket.socket, address: str, refusal: Refusal) -> None:
        self.refused += 1
        if refusal.reject is not None:
            try:
                sock.settimeout(1.0)
                sock.sendall(reject_pdu(*refusal.reject))
                # Give the peer the reject before the close, as pynetdicom does.
                time.sleep(0.05)
            except (OSError, ValueError):
                pass
        self.connection_log.warning(refusal.kind, address, "%s", refusal.text)
        with contextlib.suppress(OSError, ValueError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
