"""The door's check of one connection, in its own thread, before pynetdicom sees it: the TLS
handshake and one whole A-ASSOCIATE-RQ PDU within one deadline (``node.handshake_timeout``),
then the request itself (well formed, calling AE title not blank and allow-listed with this
host, called AE title ours). Anything else is a ``Refusal``: the log kind, the line, and the
A-ASSOCIATE-RJ to send when the peer deserves one. ``guard.py`` runs this for each
connection and hands only what is ``Admitted`` to pynetdicom.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from pynetdicom.pdu import A_ASSOCIATE_RQ

ASSOCIATE_RQ = 0x01
PDU_HEADER_BYTES = 6  # PDU type, reserved, 4-byte length (PS3.8 9.3.1)
# An A-ASSOCIATE-RQ is a few kB (128 presentation contexts of a dozen syntaxes stay far
# below this); a bigger "request" is junk, not worth buffering.
MAX_REQUEST_BYTES = 256 * 1024
# A-ASSOCIATE-RJ (result, source, reason), PS3.8 9.3.4 and 7.1.1.9.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # rejected-permanent, service-user, calling AE
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # rejected-permanent, service-user, called AE
REJECT_LIMIT = (0x02, 0x03, 0x02)  # rejected-transient, service-provider, local limit


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
    allowed = [ipaddress.ip_network(network, strict=False) for network in networks]

    def known(address: str) -> bool:
        if allow_any:
            return True
        try:
            peer = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(peer in network for network in allowed)

    return known


def reject_pdu(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU: type 3, length 4, reserved, result, source, reason."""
    return struct.pack(">BBLBBBB", 0x03, 0, 4, 0, result, source, reason)


def _ae(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace").strip(" \x00")


def check_connection(
    sock: socket.socket,
    address: str,
    settings: GuardSettings,
    ssl_context: ssl.SSLContext | None,
) -> Admitted:
    """TLS handshake and one A-ASSOCIATE-RQ within the deadline, checked; a Refusal saying
    why for anything else."""
    deadline = _Deadline(settings.handshake_timeout)
    if ssl_context is not None:
        sock = _tls_handshake(sock, address, deadline, ssl_context)
    request = _read_request(sock, address, deadline)
    sock.settimeout(None)  # as pynetdicom has it: its own timers govern from here
    calling = _check_request(request, address, settings)
    return Admitted(sock, request, calling)


def _tls_handshake(
    sock: socket.socket, address: str, deadline: _Deadline, ssl_context: ssl.SSLContext
) -> ssl.SSLSocket:
    """The server side of the TLS handshake, done here rather than in the accept loop."""
    try:
        tls_sock = ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        tls_sock.settimeout(deadline.remaining())
        tls_sock.do_handshake()
    except TimeoutError:
        raise Refusal(
            "tls", f"dropped connection from {address}: no TLS handshake " + deadline.text
        ) from None
    except (ssl.SSLError, OSError) as exc:
        why = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        raise Refusal(
            "tls", f"refused connection from {address}: TLS handshake failed ({why})"
        ) from None
    return tls_sock


def _check_request(request: bytes, address: str, settings: GuardSettings) -> str:
    """The calling AE title of a request this node accepts; a Refusal for any other."""
    body = request[PDU_HEADER_BYTES:]
    called, calling = _ae(body[4:20]), _ae(body[20:36])
    if not calling:
        raise Refusal(
            "calling-ae",
            f"refused association from {address}: blank calling AE title",
            REJECT_CALLING_AE,
        )
    try:
        A_ASSOCIATE_RQ().decode(request)
    except Exception as exc:
        raise Refusal(
            "junk",
            f"dropped connection from {address}: malformed association "
            f"request ({type(exc).__name__})",
        ) from None
    if called != settings.ae_title.strip():
        raise Refusal(
            "called-ae",
            f"refused association from AE {calling!r} at {address}: "
            f"called AE title {called!r} is not this node's {settings.ae_title!r}",
            REJECT_CALLED_AE,
        )
    if not settings.is_allowed(calling, address):
        raise Refusal(
            "calling-ae",
            f"refused association from AE {calling!r} at "
            f"{address}: not in security.allowed (add an [[security.allowed]] "
            "entry with this AE title and host to let it in)",
            REJECT_CALLING_AE,
        )
    return calling


class _Deadline:
    """The door's one deadline (node.handshake_timeout), shared by the TLS handshake and
    the read of the request."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.text = f"within {seconds:g} s (node.handshake_timeout)"  # for refusal lines

    def remaining(self) -> float:
        """Seconds left; TimeoutError once there are none."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left


def _receive(sock: socket.socket, count: int, deadline: _Deadline) -> bytes:
    """Exactly ``count`` bytes before the deadline; EOFError if the peer closes first."""
    data = bytearray()
    while len(data) < count:
        sock.settimeout(deadline.remaining())
        chunk = sock.recv(min(count - len(data), 65536))
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)


def _read_request(sock: socket.socket, address: str, deadline: _Deadline) -> bytes:
    """One whole PDU that claims to be an A-ASSOCIATE-RQ of plausible length (its header and
    body), read before the deadline; a Refusal for anything else."""
    try:
        head = _receive(sock, PDU_HEADER_BYTES, deadline)
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
        return head + _receive(sock, length, deadline)
    except TimeoutError:
        raise Refusal(
            "idle", f"dropped connection from {address}: no association request " + deadline.text
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
