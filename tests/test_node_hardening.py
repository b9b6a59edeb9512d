"""Issue 16: the node under hostile or unlucky conditions, with real peers on loopback.

The node runs in this process (``Node`` with its real server, intake, spool, worker and
senders; only the model loading is skipped where no series is denoised), so each test
starts in a second. DCMTK's storescu is the legitimate peer; raw sockets are the junk.
Every server started here is stopped, every junk socket closed.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from conftest import free_port, tool, wait_for
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from manas_infer.dicom_node.config import NodeConfig, load_config
from manas_infer.dicom_node.records import State
from manas_infer.dicom_node.server import Node, setup_logging
from manas_infer.dicom_node.spool import series_key

NODE_AET = "MANAS"


def _series(folder: Path, count: int) -> str:
    """``count`` CT slices (pydicom's CT_small, 128 x 128) as a new series in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    for i in range(count):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-158.1, -179.0, -75.7 + 2.5 * i]
        ds.save_as(folder / f"ct{i:03d}.dcm")
    return series_uid


@contextlib.contextmanager
def _node_logging(config: NodeConfig) -> Iterator[Path]:
    """The node's own log set-up (file and filters), undone afterwards for other tests."""
    saved = {
        name: (list(lg.handlers), lg.level, lg.propagate)
        for name in ("manas_infer", "pynetdicom")
        for lg in [logging.getLogger(name)]
    }
    setup_logging(config)
    try:
        yield config.log_file
    finally:
        for name, (handlers, level, propagate) in saved.items():
            lg = logging.getLogger(name)
            for handler in list(lg.handlers):
                lg.removeHandler(handler)
                handler.close()
            for handler in handlers:
                lg.addHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Start an in-process node with the given --set overrides; stopped at the end."""
    started: list[Node] = []
    stack = contextlib.ExitStack()

    def start(*overrides: str, load_models: bool = False) -> tuple[Node, Path]:
        port = free_port()
        spool = json.dumps(str(tmp_path / "spool"))
        config = load_config(None, [
            f"node.port={port}", f"node.ae_title={NODE_AET}", f"spool.path={spool}",
            "processing.device=\"cpu\"", "node.shutdown_grace=2", *overrides,
        ])  # fmt: skip
        log_file = stack.enter_context(_node_logging(config))
        n = Node(config)
        if not load_models:  # nothing is denoised in these tests: skip minutes of loading
            monkeypatch.setattr(n.router, "choices", lambda: [])
        n.start()
        started.append(n)
        return n, log_file

    yield start
    for n in started:
        n.stop()
    stack.close()


def _storescu(port: int, folder: Path, *extra: str, timeout: float = 30) -> tuple[int, str, float]:
    """Send a folder with DCMTK's storescu; (exit code, output, seconds)."""
    started = time.monotonic()
    try:
        out = subprocess.run(
            [tool("storescu"), "-aet", "STORESCU", "-aec", NODE_AET, *extra, "+sd", "+r",
             "127.0.0.1", str(port), str(folder)],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return -1, f"storescu still running after {timeout:g} s", time.monotonic() - started
    return out.returncode, out.stdout + out.stderr, time.monotonic() - started


def _spooled(n: Node, series_uid: str) -> int:
    return len(n.spool.instance_files(series_key(series_uid)))


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([tool("openssl"), *args], cwd=cwd, check=True, capture_output=True)


def _certificates(folder: Path) -> Path:
    folder.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=folder)  # fmt: skip
    for name in ("node", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", cwd=folder)  # fmt: skip
    return folder


def _associate_rq(calling: str = "PYSCU", called: str = NODE_AET) -> bytes:
    """The A-ASSOCIATE-RQ PDU pynetdicom sends, captured on a bare listening socket."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        ae = AE(ae_title=calling)
        ae.acse_timeout = ae.network_timeout = 2
        ae.add_requested_context(CTImageStorage)
        requester = threading.Thread(
            target=lambda: ae.associate("127.0.0.1", port, ae_title=called), daemon=True
        )
        requester.start()
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            data = b""
            while len(data) < 6 or len(data) < 6 + int.from_bytes(data[2:6], "big"):
                data += conn.recv(65536)
        requester.join(10)
    return data


def _junk(port: int, count: int, payload: bytes = b"", close: bool = False) -> list[socket.socket]:
    """``count`` connections that send ``payload`` (maybe nothing) and then stall or close."""
    out = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if payload:
            s.sendall(payload)
        if close:
            s.close()
        else:
            out.append(s)
    return out


def test_idle_tcp_and_stalled_tls_clients_do_not_block_a_tls_storescu(node, tmp_path: Path) -> None:
    """Finding 1: with TLS on, an idle TCP connection and a client stalled inside its TLS
    handshake held pynetdicom's accept step; a legitimate TLS storescu hung until they
    closed. Now the handshake runs in the connection's thread with a deadline."""
    storescu = tool("storescu")
    certs = _certificates(tmp_path / "certs")
    n, log_file = node(
        'security.allowed=[{ae_title="STORESCU", host="127.0.0.1"}]',
        "tls.enabled=true", f"tls.certificate={json.dumps(str(certs / 'node.pem'))}",
        f"tls.private_key={json.dumps(str(certs / 'node.key'))}",
        f"tls.ca_certificates={json.dumps(str(certs / 'ca.pem'))}",
        "tls.require_client_certificate=true",
    )  # fmt: skip
    series_uid = _series(tmp_path / "in", 3)
    port = n.config.node.port
    # A TCP connection that says nothing, and one that starts a ClientHello and stops.
    junk = _junk(port, 1) + _junk(port, 1, payload=b"\x16\x03\x01\x00\xc8\x01\x00")
    try:
        time.sleep(0.3)  # both are accepted before the legitimate peer connects
        tls = ("+tls", str(certs / "client.key"), str(certs / "client.pem"),
               "+cf", str(certs / "ca.pem"))  # fmt: skip
        code, output, seconds = _storescu(port, tmp_path / "in", *tls, timeout=20)
        assert code == 0, output
        assert seconds < 10, f"storescu over TLS took {seconds:.1f} s"
        assert _spooled(n, series_uid) == 3
        # The stalled ones are dropped after node.handshake_timeout (5 s), one line each.
        text = wait_for(
            "the stalled connections to be dropped",
            lambda: (t := log_file.read_text()).count("no TLS handshake within 5 s") == 2 and t,
            timeout=15,
        )
        assert "Traceback" not in text
        assert storescu  # the real peer was used
    finally:
        for s in junk:
            s.close()


def test_junk_connections_take_no_association_slot_and_log_one_line_each(
    node, tmp_path: Path
) -> None:
    """Finding 2: ten bare connect-and-close probes, ten A-ASSOCIATE-RQs with a blank
    calling AE title and ten silent connections held all ten association slots for the
    ACSE timeout, so the legitimate peer was rejected (local limit exceeded), and each
    blank AE title wrote a traceback. Now junk never reaches an association slot and
    each refused or dropped connection gets one log line, rate-limited."""
    n, log_file = node(
        'security.allowed=[{ae_title="STORESCU", host="127.0.0.1"}]', "node.max_associations=10"
    )
    port = n.config.node.port
    blank = bytearray(_associate_rq())
    blank[26:42] = b" " * 16  # the calling AE title field
    series_uid = _series(tmp_path / "in", 3)
    junk: list[socket.socket] = []
    try:
        _junk(port, 10, close=True)
        junk += _junk(port, 10, payload=bytes(blank))
        junk += _junk(port, 10)
        time.sleep(0.5)
        code, output, seconds = _storescu(port, tmp_path / "in", timeout=20)
        assert code == 0, output
        assert "Local Limit Exceeded" not in output
        assert seconds < 5, f"the legitimate association took {seconds:.1f} s under junk load"
        assert _spooled(n, series_uid) == 3
        wait_for(
            "the silent connections to be dropped",
            lambda: log_file.read_text().count("no association request within 5 s") >= 5,
            timeout=20,
        )
        time.sleep(1.5)  # the other five are dropped too, and not logged
        text = log_file.read_text()
    finally:
        for s in junk:
            s.close()
    assert "Traceback" not in text and "pynetdicom.dul" not in text
    # One line per connection, at most 5 a minute per kind and host (the rest counted).
    assert 1 <= text.count("closed before sending an association request") <= 5
    assert text.count("blank calling AE title") == 5
    assert text.count("no association request within 5 s") == 5


def _variant(base: pydicom.Dataset, keyword: str, value: object) -> pydicom.Dataset:
    ds = copy.deepcopy(base)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if value is None:
        delattr(ds, keyword)
    else:
        ds[keyword].value = value
    return ds


def test_unusable_headers_are_refused_with_0xC000_and_never_spooled(node) -> None:
    """Finding 3: a zero, NaN or absurd rescale slope, a NaN position, a skewed or
    non-unit orientation, a missing slope and a zero pixel spacing were accepted and the
    derived images (blank or failing dciodvfy) sent to the PACS. Now each is refused at
    the door with a 0xC000 status that says why, and none reaches the spool."""
    n, _ = node("security.allow_any=true")
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    base.SeriesInstanceUID = generate_uid()
    cases = {
        "RescaleSlope is 0": ("RescaleSlope", "0"),
        "RescaleSlope is not finite": ("RescaleSlope", "NaN"),
        "RescaleSlope 1e+300 not plausible": ("RescaleSlope", "1e300"),
        "RescaleIntercept is not finite": ("RescaleIntercept", "inf"),
        "RescaleSlope missing": ("RescaleSlope", None),
        "ImagePositionPatient is not finite": ("ImagePositionPatient", ["NaN", "0", "0"]),
        "ImageOrientationPatient not orthogonal": (
            "ImageOrientationPatient", ["1", "0", "0", "0.5", "0.866025", "0"]),
        "ImageOrientationPatient not unit vectors": (
            "ImageOrientationPatient", ["2", "0", "0", "0", "1", "0"]),
        "PixelSpacing not positive": ("PixelSpacing", ["0", "0.66"]),
    }  # fmt: skip
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", n.config.node.port, ae_title=NODE_AET)
    assert assoc.is_established
    answers = {}
    try:
        for why, (keyword, value) in cases.items():
            rsp = assoc.send_c_store(_variant(base, keyword, value))
            answers[why] = (int(rsp.Status), str(rsp.get("ErrorComment", "")))
        good = assoc.send_c_store(_variant(base, "InstanceNumber", "1"))
    finally:
        assoc.release()
    for why, (code, comment) in answers.items():
        assert 0xC000 <= code <= 0xCFFF, (why, hex(code), comment)
        assert comment == f"bad header: {why}"[:64], (why, comment)
    assert int(good.Status) == 0x0000  # the same series with a sound header is taken
    assert _spooled(n, str(base.SeriesInstanceUID)) == 1


class Destination:
    """A pynetdicom Storage SCP that counts what it gets (by SOP instance UID)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[str] = []
        ae = AE(ae_title="DEST")
        ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self.store)])  # fmt: skip

    def store(self, event) -> int:
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB tmpfs (needs root, as CI has); unmounted at the end."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def _fill(folder: Path) -> Path:
    """Write until the disk is full; the filler file is returned to free the space."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def test_a_disk_full_during_denoising_is_waited_out_without_a_restart(
    small_disk: Path, node, tmp_path: Path
) -> None:
    """Finding 4: the spool's disk filled while a series was denoised; the series stayed
    "processing" (or would have been failed for good) until a restart. Now it goes back
    to the queue, nothing half-written is left, and once space is freed it is delivered
    without a restart."""
    dest = Destination()
    try:
        n, log_file = node(
            "security.allow_any=true", f"spool.path={json.dumps(str(small_disk / 'spool'))}",
            "spool.stable_age=2", "processing.batch=1", 'processing.default_model="manas-5pct"',
            "limits.disk_watermark_percent=100",
            f'destinations=[{{name="dest", ae_title="DEST", host="127.0.0.1", port={dest.port}}}]',
            load_models=True,
        )  # fmt: skip
        series_uid = _series(tmp_path / "in", 4)
        key = series_key(series_uid)
        code, output, _ = _storescu(n.config.node.port, tmp_path / "in", timeout=60)
        assert code == 0, output

        def processing() -> bool:
            record = n.spool.get(key)
            return record is not None and record.state == State.PROCESSING

        wait_for("denoising to start", processing, timeout=60, every=0.005)
        filler = _fill(small_disk)
        wait_for(
            "the full disk to be noticed",
            lambda: "spool disk full" in log_file.read_text(),
            timeout=180,
        )
        time.sleep(1.5)  # a few retries while the disk stays full
        record = n.spool.get(key)
        assert record.state in (State.QUEUED, State.PROCESSING), record.state
        assert n.spool.failures() == []  # not a permanent failure
        assert not list(n.spool.series_dir(key).glob(".derived.partial-*"))
        filler.unlink()
        wait_for("the series to be delivered", lambda: len(dest.received) == 4, timeout=180)
        wait_for("the record to say sent", lambda: n.spool.get(key).state == State.SENT, 30)
        assert len(set(dest.received)) == 4
        assert "worker error" not in log_file.read_text()
    finally:
        dest.close()


def test_refusal_lines_are_rate_limited_per_kind_and_host() -> None:
    """Finding 2: a flood of junk must not flood the log; what is held back is counted."""
    from manas_infer.dicom_node.guard import RateLimitedLog

    now = [0.0]
    lines: list[str] = []

    class Sink(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("test.ratelimit")
    logger.propagate = False
    logger.addHandler(Sink())
    limited = RateLimitedLog(logger, burst=2, window=60, clock=lambda: now[0])
    for _ in range(5):
        limited.warning("idle", "10.0.0.9", "dropped %s", "10.0.0.9")
    limited.warning("idle", "10.0.0.8", "dropped %s", "10.0.0.8")  # another host: its own
    now[0] = 61
    limited.warning("idle", "10.0.0.9", "dropped %s", "10.0.0.9")
    assert lines == ["dropped 10.0.0.9"] * 2 + [
        "dropped 10.0.0.8",
        "dropped 10.0.0.9 (and 3 more like this from 10.0.0.9 not logged)",
    ]


def _enospc(*_args: object, **_kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_at_intake_answers_0xA700_spool_disk_full(
    node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 4 at the first step: a full spool disk while an instance is written is
    answered 0xA700 (out of resources: the sender retries), saying so, with nothing kept."""
    n, _ = node("security.allow_any=true")
    monkeypatch.setattr(n.spool, "write_temporary", _enospc)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", n.config.node.port, ae_title=NODE_AET)
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(pydicom.dcmread(get_testdata_file("CT_small.dcm")))
    finally:
        assoc.release()
    assert (int(rsp.Status), str(rsp.get("ErrorComment", ""))) == (0xA700, "spool disk full")
    assert n.spool.records() == []


def test_a_full_disk_while_journalling_is_retried_by_the_sender(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 4 at the last step: the sent journal cannot be appended (disk full). The
    sender waits with its back-off and delivers the rest, without a restart and without
    a traceback in the log; nothing accepted and journalled is sent twice."""
    from manas_infer.dicom_node.records import DestinationProgress, SeriesRecord
    from manas_infer.dicom_node.sender import Sender
    from manas_infer.dicom_node.spool import Spool

    spool = Spool(tmp_path / "spool")
    key = series_key("1.2.826.0.1.7")
    derived = spool.derived_dir(key)
    derived.mkdir(parents=True)
    uids = []
    for i in range(3):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        uids.append(str(ds.SOPInstanceUID))
        ds.save_as(derived / f"CT{i + 1:05d}.dcm")
    record = SeriesRecord(key, "1.2.826.0.1.7", state=State.SENDING, first_received=time.time())
    record.destinations = {"dest": DestinationProgress(total=3)}
    spool.save(record)
    dest = Destination()
    calls = {"n": 0}
    journal = spool.record_sent

    def record_sent(*args: str) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the second accepted instance cannot be journalled
            _enospc()
        journal(*args)

    monkeypatch.setattr(spool, "record_sent", record_sent)
    where = f'name="dest", ae_title="DEST", host="127.0.0.1", port={dest.port}'
    config = load_config(None, ["security.allow_any=true", f"destinations=[{{{where}}}]",
                                "sending.retry_initial=0.2", "sending.retry_max=0.5"])  # fmt: skip
    stop = threading.Event()
    sender = Sender(config, config.destinations[0], spool, stop)
    caplog.set_level(logging.INFO, logger="manas_infer")
    sender.start()
    try:
        wait_for("the series to be sent", lambda: spool.get(key).state == State.SENT, 30)
    finally:
        stop.set()
        sender.wake.set()
        sender.join(10)
        dest.close()
    assert set(dest.received) == set(uids)
    assert dest.received.count(uids[0]) == 1  # journalled before the full disk: not resent
    assert len(dest.received) <= 4  # only the one not journalled may come twice
    assert any("spool disk full" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
