"""The DICOM node's parts on their own: configuration checks and overrides, routing rules,
the spool's journal and recovery, and the sender's handling of real (in-process pynetdicom)
peers that refuse, fail transiently or are not there. Fast: no model, no subprocess."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
from conftest import CHEST, CT, J2K, need
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage
from typer.testing import CliRunner

from manas_infer.cli import app
from manas_infer.data.series import scan
from manas_infer.dicom_node.config import NodeConfigError, load_config, parse_override
from manas_infer.dicom_node.records import DestinationProgress, SeriesRecord, State
from manas_infer.dicom_node.routing import Router, series_ctdivol, series_kernel
from manas_infer.dicom_node.sender import Sender
from manas_infer.dicom_node.spool import Spool, series_key

runner = CliRunner()
ALLOW = "security.allow_any=true"


def _problems(tmp_path: Path, text: str, *overrides: str) -> list[str]:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(NodeConfigError) as info:
        load_config(path, overrides)
    return info.value.problems


def test_example_config_is_valid_and_documented() -> None:
    example = Path(__file__).resolve().parents[1] / "dicom_node" / "node.example.toml"
    config = load_config(example)
    assert config.node.ae_title == "MANAS" and config.spool.stable_age == 30
    assert [d.name for d in config.destinations] == ["pacs"]
    assert config.routing.rules[2].calling_ae == ["CT_LOWDOSE"]
    assert config.routing.rules[0].convolution_kernel[0] == "L"
    text = example.read_text()
    for section in ("[node]", "[spool]", "[limits]", "[processing]", "[[routing.rules]]",
                    "[sending]", "[[destinations]]", "[[security.allowed]]", "[tls]",
                    "[logging]"):  # fmt: skip
        assert section in text


def test_the_node_takes_a_gpu_index_as_the_runtime_does() -> None:
    """processing.device follows the runtime's rule: cuda:1 is a GPU, cuda:x is refused."""
    example = Path(__file__).resolve().parents[1] / "dicom_node" / "node.example.toml"
    assert load_config(example, ["processing.device=cuda:1"]).processing.device == "cuda:1"
    with pytest.raises(NodeConfigError) as info:
        load_config(example, ["processing.device=cuda:x"])
    assert any("processing.device" in p and "cuda:x" in p for p in info.value.problems)


def test_unknown_keys_and_impossible_values_are_all_named(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        """
[node]
port = 70000
ae_title = "A_TITLE_LONGER_THAN_16"
prot = 4
[spool]
stable_age = -1
[limits]
disk_watermark_percent = 150
max_slices = "many"
[processing]
device = "gpu"
[[routing.rules]]
model = "manas-5pct"
dose = 5
destinations = ["nowhere"]
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = 0
[security]
allowed = [{ae_title = "X", host = "not-an-address"}]
[tls]
enabled = true
certificate = "missing.pem"
[colour]
x = 1
""",
    )
    text = "\n".join(problems)
    for expected in (
        "unknown key node.prot",
        "unknown key colour",
        "node.port must be between 1 and 65535, got 70000",
        "node.ae_title 'A_TITLE_LONGER_THAN_16' is longer than 16 characters",
        "spool.stable_age must be between 0.1 and 86400, got -1",
        "limits.disk_watermark_percent must be between 1 and 100, got 150",
        "limits.max_slices must be a whole number, got 'many'",
        "processing.device must be one of auto, cpu, cuda, tensorrt, got 'gpu'",
        "routing.rules[0] needs exactly one of model or dose",
        "routing.rules[0].destinations names 'nowhere', which is not a destination",
        "destinations[0].port must be between 1 and 65535, got 0",
        "security.allowed[0].host must be an IP address or network",
        "tls.certificate: no such file",
        "tls.private_key is required",
    ):
        assert expected in text, expected


def test_an_empty_allow_list_is_refused_unless_allow_any(tmp_path: Path) -> None:
    (problem,) = _problems(tmp_path, "")
    assert "no calling AE title may connect" in problem and "allow_any" in problem
    assert load_config(None, [ALLOW]).security.allow_any


def test_every_key_can_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[node]\nport = 104\n[spool]\npath = "sp"\n[security]\nallow_any = true\n')
    config = load_config(path, ["node.port=11113", "node.ae_title=NODE2", "spool.stable_age=2.5",
                                'destinations=[{name="a", ae_title="A", host="h", port=1}]',
                                "tls.require_client_certificate=false"])  # fmt: skip
    assert config.node.port == 11113 and config.node.ae_title == "NODE2"
    assert config.spool.stable_age == 2.5 and config.spool.path == tmp_path / "sp"
    assert config.destinations[0].ae_title == "A"
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    with pytest.raises(NodeConfigError, match=r"expected section\.key=value"):
        parse_override("node.port")


def test_serve_refuses_a_bad_config_with_clear_lines(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[node]\nport = "eleven"\nbogus = 1\n')
    result = runner.invoke(app, ["serve", "--config", str(path), "--set", ALLOW])
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert "config error:" in flat and "node.port must be a whole number, got 'eleven'" in flat
    assert "unknown key node.bogus" in flat
    missing = runner.invoke(app, ["serve", "--config", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2 and "no such configuration file" in missing.output


def test_routing_by_calling_ae_and_ctdivol() -> None:
    rules = (
        'routing.rules=[{name="scanner", calling_ae=["CT_LOW"], model="manas-10pct"},'
        '{name="very low", ctdivol_below=2.0, dose=5}]'
    )
    router = Router(load_config(None, [ALLOW, rules]))
    assert router.choose("CT_LOW", 20.0).rule == "scanner"
    assert router.choose("CT_LOW", 20.0).model.name == "manas-10pct"
    low = router.choose("OTHER", 1.2)
    assert low.rule == "very low" and low.model.name == "manas-5pct"
    assert "CTDIvol 1.20 mGy" in low.why
    default = router.choose("OTHER", None)
    assert default.rule == "default" and default.model.name == "manas-5pct"
    assert "no CTDIvol" in default.why
    with pytest.raises(NodeConfigError, match="no model named 'no-such-model'"):
        Router(load_config(None, [ALLOW, 'routing.rules=[{model="no-such-model"}]']))


def test_routing_by_kernel_leaves_a_sharp_kernel_normal_dose_chest_alone(tmp_path: Path) -> None:
    """The measured noise cannot tell a lung kernel at normal dose (the a0001 chest, 57 HU)
    from a soft kernel at 5 %: a rule on ConvolutionKernel and CTDIvol can, on the real
    headers of three vendors."""
    chest, soft_chest, j2k = (
        scan(need(path)).series[0] for path in (CHEST, CT / "lung-pet-ct-dx-a0002", J2K)
    )
    assert series_kernel(chest) == "L" and series_ctdivol(chest) == pytest.approx(10.6)
    assert series_kernel(soft_chest) == "B40f" and series_ctdivol(soft_chest) is None
    assert series_kernel(j2k) == "Br38f"  # Siemens' second value (the ADMIRE level) dropped
    rules = (
        'routing.rules=[{name="lung kernel, normal dose", convolution_kernel=["l", "B70f"], '
        "ctdivol_at_least=5, dose=5, strength=0}]"
    )
    router = Router(load_config(None, [ALLOW, rules]))
    kept = router.choose("CT", series_ctdivol(chest), chest, series_kernel(chest))
    assert kept.rule == "lung kernel, normal dose" and kept.strength == 0
    assert "CTDIvol 10.60 mGy, kernel L" in kept.why
    screening = router.choose("CT", 1.2, chest, "L")  # the same kernel at a screening dose
    assert screening.rule == "default" and screening.strength > 0
    soft = router.choose("CT", None, soft_chest, series_kernel(soft_chest))
    assert soft.rule == "default" and "kernel B40f" in soft.why
    assert router.choose("CT", 10.6, None, None).rule == "default"  # no kernel: no match
    problems = _problems(tmp_path, "", ALLOW, 'routing.rules=[{convolution_kernel=[" "], dose=5}]')
    assert any("convolution_kernel holds an empty name" in p for p in problems)


def test_spool_journal_survives_a_torn_line_and_recovery_requeues(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    key = series_key("1.2.3")
    spool.save(SeriesRecord(key, "1.2.3", state=State.PROCESSING, first_received=time.time()))
    spool.incoming_dir(key).mkdir(parents=True)
    (spool.incoming_dir(key) / "1.2.3.4.dcm").write_bytes(b"x")
    spool.record_sent(key, "pacs", "1.2.3.4.1")
    with open(spool.series_dir(key) / "sent-pacs.log", "a") as f:
        f.write("1.2.3.4.")  # a kill -9 in the middle of an append
    assert spool.sent_uids(key, "pacs") == {"1.2.3.4.1"}
    spool.record_sent(key, "pacs", "1.2.3.4.2")
    assert spool.sent_uids(key, "pacs") == {"1.2.3.4.1", "1.2.3.4.2"}
    (spool.series_dir(key) / ".derived.partial-999").mkdir()
    orphan = series_key("9.9")  # instance written, record never written (kill -9)
    spool.incoming_dir(orphan).mkdir(parents=True)
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ct.save_as(spool.incoming_dir(orphan) / "a.dcm")

    again = Spool(tmp_path)
    notes = again.recover()
    assert again.get(key).state == State.QUEUED
    assert not (spool.series_dir(key) / ".derived.partial-999").exists()
    assert again.get(orphan).series_uid == str(ct.SeriesInstanceUID)
    assert any("interrupted" in n for n in notes) and any("rebuilt" in n for n in notes)
    state = json.loads((spool.series_dir(key) / "state.json").read_text())
    assert state["state"] == "queued"


# ---- the sender against in-process peers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Peer:
    """A pynetdicom Storage SCP whose answers the test chooses."""

    def __init__(self, answers: list[int] | None = None, ae_title: str = "PEER", tls=None) -> None:
        self.port = _free_port()
        self.answers = list(answers or [])
        self.received: list[str] = []
        ae = AE(ae_title=ae_title)
        ae.require_called_aet = True
        ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self.store)],
            ssl_context=tls,
        )

    def store(self, event) -> int:
        code = self.answers.pop(0) if self.answers else 0x0000
        if code == 0x0000:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
        return code

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def processed(tmp_path: Path):
    """A spool holding one processed series of 3 instances, and a sender factory."""
    spool = Spool(tmp_path / "spool")
    key = series_key("1.2.826.0.1.1")
    derived = spool.derived_dir(key)
    derived.mkdir(parents=True)
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    uids = []
    for i in range(3):
        base.SOPInstanceUID = base.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        uids.append(str(base.SOPInstanceUID))
        base.save_as(derived / f"CT{i + 1:05d}.dcm")
    record = SeriesRecord(key, "1.2.826.0.1.1", state=State.SENDING, first_received=time.time())
    record.destinations = {"peer": DestinationProgress(total=3)}
    spool.save(record)
    stop = threading.Event()
    made: list[Peer] = []

    def sender(peer_ae: str, port: int, tls: str = "", **sending: float) -> Sender:
        sets = [f"sending.{k}={v}" for k, v in sending.items()]
        tls = f", tls=true, ca_certificates={json.dumps(tls)}" if tls else ""
        where = f'ae_title="{peer_ae}", host="127.0.0.1", port={port}'
        dest = f'destinations=[{{name="peer", {where}{tls}}}]'
        config = load_config(None, [ALLOW, dest, "node.network_timeout=5", *sets])
        return Sender(config, config.destinations[0], spool, stop)

    yield spool, key, uids, sender, made
    stop.set()
    for peer in made:
        peer.close()


def test_sender_delivers_once_and_skips_what_was_accepted(processed) -> None:
    spool, key, uids, sender, made = processed
    peer = Peer()
    made.append(peer)
    spool.record_sent(key, "peer", uids[0])  # accepted before a restart
    outcome = sender("PEER", peer.port).send_series(key)
    assert outcome.kind == "done" and outcome.sent == 2
    assert peer.received == uids[1:]
    assert spool.get(key).state == State.SENT
    assert spool.sent_uids(key, "peer") == set(uids)


def test_sender_out_of_resources_is_transient_then_delivered(processed) -> None:
    spool, key, uids, sender, made = processed
    peer = Peer(answers=[0x0000, 0xA700])
    made.append(peer)
    s = sender("PEER", peer.port, retry_initial=0.5, retry_max=1)
    first = s.send_series(key)
    assert first.kind == "transient" and "0xA700 (Refused: Out of Resources)" in first.reason
    record = spool.get(key)
    assert record.state == State.SENDING and record.destinations["peer"].attempts == 1
    assert record.destinations["peer"].sent == 1 and s.retry_at > time.time()
    assert s.send_series(key).kind == "done"
    assert sorted(peer.received) == sorted(uids)  # each exactly once


@pytest.mark.parametrize(
    ("answers", "peer_ae", "expected"),
    [
        ([0x0122], "PEER", "0x0122 (Refused: SOP Class Not Supported)"),
        ([0xA900], "PEER", "0xA900"),
        ([], "WRONG_AE", "called AE title not recognised (permanent)"),
    ],
)
def test_sender_permanent_refusals_are_recorded_not_retried(
    processed, answers: list[int], peer_ae: str, expected: str
) -> None:
    spool, key, _, sender, made = processed
    peer = Peer(answers=answers)
    made.append(peer)
    outcome = sender(peer_ae, peer.port).send_series(key)
    assert outcome.kind == "permanent" and expected in outcome.reason
    record = spool.get(key)
    assert record.state == State.FAILED and expected in record.error
    assert record.destinations["peer"].state == "failed"
    (failure,) = spool.failures()
    assert failure["destination"] == "peer" and expected in failure["reason"]
    assert key not in [r.key for r in sender(peer_ae, peer.port).pending()]  # no loop


def test_sender_connection_refused_backs_off_and_gives_up(processed) -> None:
    spool, key, _, sender, _ = processed
    s = sender("PEER", _free_port(), retry_initial=0.2, retry_max=0.4, give_up_after=0.5)
    waits = []
    for _ in range(3):
        outcome = s.send_series(key)
        assert outcome.kind == "transient" and "connection refused" in outcome.reason
        waits.append(round(s.retry_at - time.time(), 1))
    assert waits[0] < waits[1] <= 0.4  # exponential, capped
    time.sleep(0.6)
    s.send_series(key)
    record = spool.get(key)
    assert record.state == State.FAILED and "gave up after 4 attempts" in record.error


def test_sender_over_tls_verifies_the_destination(processed, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    _, key, uids, sender, made = processed
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=peer", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", "peer.key", "-out", "peer.pem"],
                   cwd=tmp_path, check=True, capture_output=True)  # fmt: skip
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "peer.pem", tmp_path / "peer.key")
    peer = Peer(tls=server)
    made.append(peer)
    assert sender("PEER", peer.port, tls=str(tmp_path / "peer.pem")).send_series(key).kind == "done"
    assert sorted(peer.received) == sorted(uids)


# ---- the Storage SCP's limits, with the node's own handlers and no model


@pytest.fixture
def intake_server(tmp_path: Path):
    """Start the node's SCP (handlers and contexts, no worker) with the given overrides."""
    from manas_infer.dicom_node.intake import Intake
    from manas_infer.dicom_node.server import start_scp

    servers = []

    def start(*overrides: str) -> tuple[int, Spool]:
        spool_path = json.dumps(str(tmp_path / "spool"))
        port = _free_port()
        config = load_config(
            None, [ALLOW, f"spool.path={spool_path}", f"node.port={port}", *overrides]
        )
        spool = Spool(config.spool.path)
        servers.append(start_scp(config, Intake(config, spool)))
        return port, spool

    yield start
    for server in servers:
        server.shutdown()


def _send(port: int, *datasets: pydicom.Dataset) -> list[tuple[int, str]]:
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="MANAS")
    assert assoc.is_established
    try:
        out = []
        for ds in datasets:
            rsp = assoc.send_c_store(ds)
            out.append((int(rsp.Status), str(rsp.get("ErrorComment", ""))))
        return out
    finally:
        assoc.release()


def _small_series(count: int) -> list[pydicom.Dataset]:
    series_uid = generate_uid()
    out = []
    for _ in range(count):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, generate_uid()
        out.append(ds)
    return out


def test_limits_max_slices_max_bytes_and_disk_watermark(intake_server) -> None:
    port, spool = intake_server("limits.max_slices=2", "limits.max_instance_mb=0.05")
    first, second, third = _small_series(3)
    (a, b, c, again) = _send(port, first, second, third, first)
    assert a[0] == b[0] == 0x0000
    assert c == (0xA701, "series over limits.max_slices 2")
    assert again[0] == 0x0000  # a duplicate of an instance it has is still acknowledged
    key = series_key(str(first.SeriesInstanceUID))
    stored = spool.instance_files(key)
    # Refused whole (issue 16, finding 5): the two slices taken never go out as a series
    # that looks complete.
    record = spool.get(key)
    assert len(stored) == 2 and record.state == State.FAILED and record.refused_over_limit == 2
    assert "refused whole" in record.error and spool.failures()[0]["stage"] == "receiving"
    assert pydicom.dcmread(stored[0]).Rows == 128  # the instance, readable, on disk
    big = _small_series(1)[0]
    big.PixelData = bytes(2 * 256 * 256)
    big.Rows = big.Columns = 256
    ((code, comment),) = _send(port, big)
    assert code == 0xA702 and "over limits.max_instance_mb 0.05" in comment

    port, _ = intake_server("limits.disk_watermark_percent=1")
    ((code, comment),) = _send(port, _small_series(1)[0])
    assert code == 0xA700 and "(watermark)" in comment


def test_a_series_reopened_while_sending_stays_with_the_worker(processed) -> None:
    spool, key, uids, sender, made = processed
    peer = Peer()
    made.append(peer)
    s = sender("PEER", peer.port)
    spool.update(key, lambda r: setattr(r, "state", State.RECEIVING))  # new instance arrived
    assert s.send_series(key).kind == "done"
    record = spool.get(key)
    assert record.state == State.RECEIVING  # not marked sent: it will be processed again
    assert record.destinations["peer"].sent == 3 and spool.sent_uids(key, "peer") == set(uids)
