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

Every refused or dropped connection gets one log line with the peer and the reason, and
no traceback; ``RateLimitedLog`` keeps a flood from filling the disk.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

log = logging.getLogger("manas_infer.node.guard")

ASSOCIATE_RQ = 0x01
# An A-ASSOCIATE-RQ is a few kB (128 presentation contexts of a dozen syntaxes stay far
# below this); a bigger "request" is junk, not worth buffering.
MAX_REQUEST_BYTES = 256 * 1024
# A-ASSOCIATE-RJ (result, source, reason), PS3.8 9.3.4 and 7.1.1.9.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # rejected-permanent, service-user, calling AE
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # rejected-permanent, service-user, called AE
REJECT_LIMIT = (0x02, 0x03, 0x02)  # rejected-transient, service-provider, local limit


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


class Refusal(Exception):
    """Why a connection is not handed to pynetdicom: a log kind, a line, maybe a reject."""

    def __init__(self, kind: str, text: str, reject: tuple[int, int, int] | None = None) -> None:
        self.kind, self.text, self.reject = kind, text, reject
        super().__init__(text)


@dataclass(frozen=True)
class Admitted:
    """A connection past the door: its socket (TLS done) and the request's bytes."""

    sock: socket.socket
    request: bytes
    calling_ae: str


@dataclass(frozen=True)
class GuardSettings:
    """What the door checks; built from the node's config by ``server``."""

    ae_title: str
    handshake_timeout: float
    max_pending: int
    max_associations: int
    is_allowed: Callable[[str, str], bool]  # (calling AE title, peer address)
    is_known_host: Callable[[str], bool]  # an address some allow-list entry covers


def known_host_check(networks: list[str], allow_any: bool) -> Callable[[str], bool]:
    """Whether an address belongs to some allow-listed network (every address if allow_any)."""
    nets = [ipaddress.ip_network(n, strict=False) for n in networks]

    def known(address: str) -> bool:
        if allow_any:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in nets)

    return known


def _ae(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace").strip(" \x00")


def _reject_pdu(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU: type 3, length 4, reserved, result, source, reason."""
    return struct.pack(">BBLBBBB", 0x03, 0, 4, 0, result, source, reason)


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
        return len([a for a in self.ae.active_associations if a.is_acceptor])

    # ---- the door, in the connection's thread
    def admit(self, sock: socket.socket, address: str) -> Admitted | None:
        """TLS handshake and one A-ASSOCIATE-RQ within the deadline, checked; None (the
        connection closed, one line logged) for anything else."""
        try:
            return self._admit(sock, address)
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
                sock.sendall(_reject_pdu(*refusal.reject))
                # Give the peer the reject before the close, as pynetdicom does.
                time.sleep(0.05)
            except (OSError, ValueError):
                pass
        self.connection_log.warning(refusal.kind, address, "%s", refusal.text)
        with contextlib.suppress(OSError, ValueError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def _admit(self, sock: socket.socket, address: str) -> Admitted:
        s = self.settings
        deadline = time.monotonic() + s.handshake_timeout
        within = f"within {s.handshake_timeout:g} s (node.handshake_timeout)"

        def remaining() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            return left

        if self.ssl_context is not None:
            try:
                sock = self.ssl_context.wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False
                )
                sock.settimeout(remaining())
                sock.do_handshake()
            except TimeoutError:
                raise Refusal(
                    "tls", f"dropped connection from {address}: no TLS handshake " + within
                ) from None
            except (ssl.SSLError, OSError) as exc:
                why = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
                raise Refusal(
                    "tls", f"refused connection from {address}: TLS handshake failed ({why})"
                ) from None

        def read(n: int) -> bytes:
            data = bytearray()
            while len(data) < n:
                sock.settimeout(remaining())
                chunk = sock.recv(min(n - len(data), 65536))
                if not chunk:
                    raise EOFError
                data += chunk
            return bytes(data)

        try:
            head = read(6)
            kind, _, length = struct.unpack(">BBL", head)
            if kind != ASSOCIATE_RQ:
                raise Refusal(
                    "junk",
                    f"dropped connection from {address}: not a DICOM "
                    f"association request (first byte 0x{kind:02X})",
                )
            if length > MAX_REQUEST_BYTES or length < 68:
                raise Refusal(
                    "junk",
                    f"dropped connection from {address}: association "
                    f"request of implausible length {length}",
                )
            body = read(length)
        except TimeoutError:
            raise Refusal(
                "idle", f"dropped connection from {address}: no association request " + within
            ) from None
        except EOFError:
            raise Refusal(
                "closed",
                f"dropped connection from {address}: closed before sending an association request",
            ) from None
        except OSError as exc:
            raise Refusal(
                "closed", f"dropped connection from {address}: {exc.strerror or type(exc).__name__}"
            ) from None
        sock.settimeout(None)  # as pynetdicom has it: its own timers govern from here
        called, calling = _ae(body[4:20]), _ae(body[20:36])
        if not calling:
            raise Refusal(
                "calling-ae",
                f"refused association from {address}: blank calling AE title",
                REJECT_CALLING_AE,
            )
        try:
            A_ASSOCIATE_RQ().decode(head + body)
        except Exception as exc:
            raise Refusal(
                "junk",
                f"dropped connection from {address}: malformed association "
                f"request ({type(exc).__name__})",
            ) from None
        if called != s.ae_title.strip():
            raise Refusal(
                "called-ae",
                f"refused association from AE {calling!r} at {address}: "
                f"called AE title {called!r} is not this node's {s.ae_title!r}",
                REJECT_CALLED_AE,
            )
        if not s.is_allowed(calling, address):
            raise Refusal(
                "calling-ae",
                f"refused association from AE {calling!r} at "
                f"{address}: not in security.allowed (add an [[security.allowed]] "
                "entry with this AE title and host to let it in)",
                REJECT_CALLING_AE,
            )
        return Admitted(sock, head + body, calling)
