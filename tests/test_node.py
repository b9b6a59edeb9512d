"""The DICOM node end to end, with real components on loopback: ``manas-infer serve`` as a
subprocess with a generated config and free ports, DCMTK's echoscu/storescu/storescp,
Orthanc, openssl-made certificates, kill -9 and SIGTERM. Every derived slice is checked
with dciodvfy; the node's logs are searched for the patient data that was sent."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from conftest import CHEST, J2K, copy_slices, dciodvfy_errors, free_port, need, tool, wait_for
from pydicom.data import get_testdata_file
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import CTImageStorage, EnhancedCTImageStorage, MRImageStorage

from manas_infer.data.series import scan
from manas_infer.runtime.choice import choose
from manas_infer.runtime.models import read_card

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

NODE_AET = "MANAS"
PATIENT = {"PatientName": "Quixote^Zebulon", "PatientID": "PID-739184",
           "PatientBirthDate": "19370412"}  # fmt: skip
LOGS: list[Path] = []  # every node log of this module, searched by the last test
SENT_PATIENT_VALUES: set[str] = set(PATIENT.values())


def toml(config: dict) -> str:
    """A small TOML writer for the node's config shape (tables, arrays of tables)."""

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        return json.dumps(str(v))

    lines = []
    for section, body in config.items():
        items = body if isinstance(body, list) else [body]
        for item in items:
            lines.append(f"[[{section}]]" if isinstance(body, list) else f"[{section}]")
            lines += [f"{k} = {value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


class Node:
    """``manas-infer serve`` in its own process group, with its config and spool in a folder."""

    def __init__(self, folder: Path, port: int, config: dict) -> None:
        self.folder, self.port = folder, port
        folder.mkdir(parents=True, exist_ok=True)
        base = {
            "node": {"ae_title": NODE_AET, "host": "127.0.0.1", "port": port,
                     "network_timeout": 10, "dimse_timeout": 10, "shutdown_grace": 5},
            "spool": {"path": str(folder / "spool"), "stable_age": 1.0},
            "processing": {"device": "cpu", "batch": 4},
            "sending": {"retry_initial": 0.5, "retry_max": 1.0},
            "logging": {"level": "debug"},
        }  # fmt: skip
        for key, body in config.items():
            if isinstance(body, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **body}
            else:
                base[key] = body
        self.config_path = folder / "node.toml"
        self.config_path.write_text(toml(base))
        self.spool = folder / "spool"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.folder / f"stderr-{self.starts}.log"

    def start(self) -> Node:
        self.starts += 1
        LOGS.append(self.log_path)
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "manas_infer", "serve", "--config", str(self.config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "MANAS_NO_PROGRESS": "1"},
            )
        wait_for("the node to listen", self._listening, timeout=120)
        return self

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"node exited {self.proc.returncode}:\n{self.log_path.read_text()}"
            )
        return "listening on" in self.log_path.read_text()

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate(20)
            except subprocess.TimeoutExpired:
                self.kill9()
        LOGS.append(self.spool / "node.log")

    def status(self) -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "manas_infer", "node-status", "--spool", str(self.spool),
             "--json"], capture_output=True, text=True, check=True,
        )  # fmt: skip
        return json.loads(out.stdout)

    def log(self) -> str:
        return self.log_path.read_text()


class Process:
    """A helper program (storescp, Orthanc) in its own process group, stopped at the end."""

    def __init__(self, args: list[str], log: Path, cwd: Path | None = None) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def storescp(folder: Path, port: int) -> Process:
    folder.mkdir(parents=True, exist_ok=True)
    # +uf: a unique file per received instance, so a duplicate send shows as an extra file
    proc = Process([tool("storescp"), "+uf", "-aet", "STORESCP", "-od", str(folder), str(port)],
                   folder.parent / f"storescp-{port}.log")  # fmt: skip
    wait_for("storescp to listen", lambda: _port_open(port), timeout=20)
    return proc


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def fresh_series(files: list[Path], **attributes: str) -> str:
    """Give copied slices a new series (and instance) UIDs so each test's series is its own;
    set the given attributes; repair an empty SOPClassUID from the file meta (storescu
    refuses those). Returns the new SeriesInstanceUID."""
    series_uid = generate_uid()
    for f in files:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if not ds.get("SOPClassUID"):
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.save_as(f)
    return series_uid


def derived_by_source(folder: Path) -> dict[str, list[pydicom.Dataset]]:
    """Received derived instances grouped by the source series they reference."""
    found: dict[str, list[pydicom.Dataset]] = {}
    for f in sorted(folder.rglob("*")):
        if not f.is_file() or f.suffix in (".log", ".json"):
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            source = ds.ReferencedSeriesSequence[0].SeriesInstanceUID
        except Exception:
            continue  # being written, or not a derived instance
        ds.filename = str(f)
        found.setdefault(str(source), []).append(ds)
    return found


def wait_derived(folder: Path, source_uid: str, count: int, timeout: float = 120) -> list:
    def arrived():
        got = derived_by_source(folder).get(source_uid, [])
        return got if len(got) >= count else None

    return wait_for(f"{count} derived instances of {source_uid}", arrived, timeout=timeout)


def storescu(port: int, folder: Path, *extra: str, aet: str = "STORESCU") -> subprocess.Popen:
    return subprocess.Popen(
        [tool("storescu"), "-aet", aet, "-aec", NODE_AET, *extra, "+sd", "+r", "127.0.0.1",
         str(port), str(folder)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def scu(port: int, aet: str = "PYSCU", extra: tuple = ()):
    ae = AE(ae_title=aet)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    for context in extra:
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    assert assoc.is_established
    return assoc


# ---- one node shared by the DCMTK, bad-input and own-output tests


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory):
    need(CHEST)
    base = tmp_path_factory.mktemp("node")
    dest_port, node_port = free_port(), free_port()
    out = base / "received"
    receiver = storescp(out, dest_port)
    node = Node(base / "node", node_port, {
        "destinations": [{"name": "scp", "ae_title": "STORESCP", "host": "127.0.0.1",
                          "port": dest_port}],
        "security": {"allowed": [{"ae_title": t, "host": "127.0.0.1"}
                                 for t in ("STORESCU", "ECHOSCU", "PYSCU")]},
        # the J2K series (CTDIvol 18.5 mGy) goes to the 10 % model, the chest (10.6) not
        "routing": {"rules": [{"name": "higher dose", "ctdivol_at_least": 15.0,
                               "model": "manas-10pct"}]},
        "limits": {"max_matrix": 2048},
    })  # fmt: skip
    try:
        yield {"node": node.start(), "out": out, "base": base}
    finally:
        node.stop()
        receiver.stop()


def test_echo_and_unknown_calling_ae_refused(shared: dict) -> None:
    port = shared["node"].port
    ok = subprocess.run([tool("echoscu"), "-aec", NODE_AET, "127.0.0.1", str(port)],
                        capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = subprocess.run([tool("echoscu"), "-aet", "INTRUDER", "-aec", NODE_AET, "127.0.0.1",
                          str(port)], capture_output=True, text=True)  # fmt: skip
    assert bad.returncode != 0
    assert "Calling AE Title Not Recognized" in bad.stdout + bad.stderr
    wrong_called = subprocess.run([tool("echoscu"), "-aec", "OTHER", "127.0.0.1", str(port)],
                                  capture_output=True, text=True)  # fmt: skip
    assert "Called AE Title Not Recognized" in wrong_called.stdout + wrong_called.stderr
    # The refusal is logged by the connection's own thread, which may finish after the
    # peer has read the rejection and gone.
    refusal = "refused association from AE 'INTRUDER' at 127.0.0.1"
    wait_for("the refusal in the node's log", lambda: refusal in shared["node"].log(), 10, 0.05)


def test_storescu_plain_and_jpeg2000_series_come_back_valid(shared: dict) -> None:
    node, out, base = shared["node"], shared["out"], shared["base"]
    chest = copy_slices(CHEST, base / "in-chest", 4, start=30)
    chest_uid = fresh_series(chest, **PATIENT)
    j2k = copy_slices(need(J2K), base / "in-j2k", 3, start=8)
    j2k_uid = fresh_series(j2k, PatientName="Jotunheim^Ottoline", PatientID="J2K-55102")
    SENT_PATIENT_VALUES.update({"Jotunheim^Ottoline", "J2K-55102"})
    assert pydicom.dcmread(j2k[0]).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    senders = [storescu(node.port, base / "in-chest"),
               storescu(node.port, base / "in-j2k", "-xv")]  # fmt: skip
    for sender in senders:
        output = sender.communicate(timeout=120)[0]
        assert sender.returncode == 0, output
    # No routing rule matches the chest: the node measures its noise and picks the model
    # (runtime/choice.py), as `denoise` without --model/--dose does.
    auto = choose(scan(base / "in-chest").series[0])
    chest_dose = f"{read_card(auto.model.path)['dose_percent']:g} %"
    for source_uid, files, model, dose in ((chest_uid, chest, auto.model.name, chest_dose),
                                           (j2k_uid, j2k, "manas-10pct", "10 %")):  # fmt: skip
        derived = wait_derived(out, source_uid, len(files))
        assert len(derived) == len(files)
        assert len({ds.SeriesInstanceUID for ds in derived}) == 1
        sources = {pydicom.dcmread(f).SOPInstanceUID for f in files}
        assert {ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in derived} == sources
        for ds in derived:
            assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
            assert model in ds.SeriesDescription and dose in ds.SeriesDescription
            study = pydicom.dcmread(files[0]).StudyInstanceUID  # empty in the J2K data
            assert ds.StudyInstanceUID == study or (not study and ds.StudyInstanceUID)
            assert dciodvfy_errors(Path(ds.filename)) == [], ds.filename
    status = node.status()
    states = {s["series_uid"]: s for s in status["series"]}
    for uid, n in ((chest_uid, 4), (j2k_uid, 3)):
        assert states[uid]["state"] == "sent" and states[uid]["destinations"]["scp"]["sent"] == n


def test_own_derived_series_routed_back_is_acknowledged_not_processed(shared: dict) -> None:
    node, out, base = shared["node"], shared["out"], shared["base"]
    derived = wait_for("a derived series from the previous test", lambda: [
        ds for group in derived_by_source(out).values() for ds in group][:2])  # fmt: skip
    back = base / "back"
    back.mkdir()
    for ds in derived:
        shutil.copy(ds.filename, back / Path(ds.filename).name)
    before = len(node.status()["series"])
    sender = storescu(node.port, back)
    output = sender.communicate(timeout=60)[0]
    assert sender.returncode == 0, output  # acknowledged with success
    time.sleep(2.5)  # longer than the stable age: nothing may be queued
    assert len(node.status()["series"]) == before
    assert "this node's own derived output: acknowledged, not processed again" in node.log()


def test_rle_and_deflated_instances_are_received_and_decoded(shared: dict) -> None:
    node, out, base = shared["node"], shared["out"], shared["base"]
    files = copy_slices(CHEST, base / "in-rle", 2, start=44)
    source_uid = fresh_series(files)
    rle, deflated = (pydicom.dcmread(f) for f in files)
    rle.compress(RLELossless)
    rle.save_as(files[0])
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated.save_as(files[1], enforce_file_format=True)
    ae = AE(ae_title="PYSCU")
    for syntax in (RLELossless, DeflatedExplicitVRLittleEndian):
        ae.add_requested_context(CTImageStorage, syntax)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AET)
    assert assoc.is_established
    try:
        _config.STORE_SEND_CHUNKED_DATASET = True  # the encoded bytes as they are
        for f in files:
            assert assoc.send_c_store(f).Status == 0x0000
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        assoc.release()
    spooled = {pydicom.dcmread(p).file_meta.TransferSyntaxUID
               for p in (node.spool / "series").glob("*/incoming/*.dcm")}  # fmt: skip
    assert {RLELossless, DeflatedExplicitVRLittleEndian} <= spooled  # stored as received
    derived = wait_derived(out, source_uid, 2)
    assert len(derived) == 2 and dciodvfy_errors(Path(derived[0].filename)) == []


def _bad_inputs(folder: Path) -> dict[str, Path]:
    """Malformed and unsuitable instances, each a file whose file meta says CT Image Storage
    (so it reaches the node's handler) unless noted."""
    folder.mkdir()
    made = {}

    def relabel(ds: pydicom.Dataset, name: str) -> Path:
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=False)
        made[name] = path
        return path

    truncated = pydicom.dcmread(get_testdata_file("MR_truncated.dcm"))
    truncated.Modality = "CT"
    relabel(truncated, "truncated-pixels")
    no_pixels = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del no_pixels.PixelData
    relabel(no_pixels, "no-pixel-data")
    huge = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    huge.Rows = huge.Columns = 40000
    relabel(huge, "huge-rows-columns")
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    relabel(mr, "mr-as-ct-class")  # Modality stays MR
    bad_vr = pydicom.dcmread(get_testdata_file("badVR.dcm"))
    relabel(bad_vr, "bad-vr")
    scout = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    relabel(scout, "localizer")
    enhanced = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    path = relabel(enhanced, "enhanced-ct")
    enhanced.SOPClassUID = enhanced.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    enhanced.NumberOfFrames = 1
    enhanced.save_as(path, enforce_file_format=False)
    # A file cut in the middle, and garbage behind a valid CT file meta.
    template = relabel(pydicom.dcmread(get_testdata_file("CT_small.dcm")), "template").read_bytes()
    del made["template"]
    meta_end = 144 + struct.unpack("<I", template[140:144])[0]  # after (0002,0000)'s group
    (folder / "truncated-file.dcm").write_bytes(template[: len(template) // 2])
    made["truncated-file"] = folder / "truncated-file.dcm"
    (folder / "garbage.dcm").write_bytes(template[:meta_end] + os.urandom(3000))
    made["garbage"] = folder / "garbage.dcm"
    return made


def test_bad_input_is_refused_while_a_good_series_comes_back(shared: dict) -> None:
    node, out, base = shared["node"], shared["out"], shared["base"]
    good = copy_slices(CHEST, base / "in-good", 3, start=40)
    good_uid = fresh_series(good, **PATIENT)
    sender = storescu(node.port, base / "in-good")  # at the same time as the bad ones
    bad = _bad_inputs(base / "bad")
    statuses: dict[str, str] = {}
    assoc = scu(node.port, extra=(MRImageStorage, EnhancedCTImageStorage))
    try:
        with pytest.raises(ValueError, match="No presentation context"):
            assoc.send_c_store(pydicom.dcmread(get_testdata_file("MR_small.dcm")))
        statuses["mr"] = "refused: no presentation context"
        _config.STORE_SEND_CHUNKED_DATASET = True  # send the files' bytes as they are
        for name, path in bad.items():
            rsp = assoc.send_c_store(path)
            statuses[name] = f"0x{rsp.Status:04X} {rsp.get('ErrorComment', '')}"
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        assoc.release()
    print(json.dumps(statuses, indent=1))
    for name, text in statuses.items():
        assert not text.startswith("0x0000"), (name, text)
    assert statuses["no-pixel-data"].startswith("0xC000 no pixel data")
    assert statuses["huge-rows-columns"].startswith("0xC000 matrix 40000x40000")
    assert statuses["mr-as-ct-class"].startswith("0xA900 not a CT image (Modality MR)")
    assert statuses["truncated-pixels"].startswith("0xC000")
    assert statuses["localizer"].startswith("0xA900 a localizer (scout)")
    assert statuses["enhanced-ct"].startswith("0xC000 multi-frame Enhanced CT unsupported")
    output = sender.communicate(timeout=120)[0]
    assert sender.returncode == 0, output
    derived = wait_derived(out, good_uid, 3)
    assert len(derived) == 3 and dciodvfy_errors(Path(derived[0].filename)) == []
    ok = subprocess.run([tool("echoscu"), "-aec", NODE_AET, "127.0.0.1", str(node.port)],
                        capture_output=True)  # fmt: skip
    assert ok.returncode == 0  # still serving
    failed = [s for s in node.status()["series"] if s["state"] == "failed"]
    assert failed == []  # refused at the door: nothing bad reached the spool


# ---- Orthanc routes to the node and gets the derived series back

LUA = """
function OnStableSeries(seriesId, tags, metadata)
  local instances = ParseJson(RestApiGet('/series/' .. seriesId .. '/instances'))
  local first = ParseJson(RestApiGet('/instances/' .. instances[1]['ID'] .. '/simplified-tags'))
  if first['ImageType'] ~= nil and string.find(first['ImageType'], 'DERIVED') then
    return
  end
  RestApiPost('/modalities/node/store', seriesId)
end
"""


def _http(port: int, path: str, body: bytes | None = None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                     method="POST" if body is not None else "GET")  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_orthanc_routes_a_series_and_shows_the_derived_one_beside_it(tmp_path: Path) -> None:
    orthanc_bin = tool("Orthanc")
    files = copy_slices(need(CHEST), tmp_path / "in", 3, start=20)
    SENT_PATIENT_VALUES.update({"Lung_Dx-A0001"})  # the real data's own name and ID
    http, dicom, node_port = free_port(), free_port(), free_port()
    (tmp_path / "route.lua").write_text(LUA)
    (tmp_path / "orthanc.json").write_text(json.dumps({
        "Name": "test", "StorageDirectory": str(tmp_path / "db"),
        "IndexDirectory": str(tmp_path / "db"), "HttpPort": http, "DicomPort": dicom,
        "DicomAet": "ORTHANC", "StableAge": 1, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "LuaScripts": [str(tmp_path / "route.lua")],
        "DicomModalities": {"node": [NODE_AET, "127.0.0.1", node_port]},
        "HttpServerEnabled": True, "DicomServerEnabled": True,
    }))  # fmt: skip
    node = Node(tmp_path / "node", node_port, {
        "destinations": [{"name": "orthanc", "ae_title": "ORTHANC", "host": "127.0.0.1",
                          "port": dicom}],
        "security": {"allowed": [{"ae_title": "ORTHANC", "host": "127.0.0.1"}]},
    })  # fmt: skip
    orthanc = Process([orthanc_bin, str(tmp_path / "orthanc.json")], tmp_path / "orthanc.log")
    try:
        wait_for("Orthanc's REST API", lambda: _port_open(http), timeout=60)
        node.start()
        uploaded = [_http(http, "/instances", f.read_bytes()) for f in files]
        source_series = uploaded[0]["ParentSeries"]
        study = uploaded[0]["ParentStudy"]

        def derived_series():
            series = _http(http, f"/studies/{study}/series")
            new = [s for s in series if s["ID"] != source_series]
            return new if new and len(new[0]["Instances"]) == len(files) else None

        (derived,) = wait_for("the derived series in Orthanc", derived_series, timeout=180)
        tags = _http(http, f"/instances/{derived['Instances'][0]}/simplified-tags")
        assert tags["ImageType"].startswith("DERIVED\\SECONDARY")
        assert tags["StudyInstanceUID"] == pydicom.dcmread(files[0]).StudyInstanceUID
        picked = choose(scan(tmp_path / "in").series[0])  # no routing rule: automatic choice
        assert picked.automatic and picked.model.name in tags["SeriesDescription"]
        time.sleep(3)  # Orthanc's own stable age passes for the derived series too
        assert len(_http(http, f"/studies/{study}/series")) == 2  # no loop, no duplicate
        (record,) = node.status()["series"]
        assert record["state"] == "sent" and record["destinations"]["orthanc"]["sent"] == 3
    finally:
        node.stop()
        orthanc.stop()


# ---- restarts: kill -9 while receiving, kill -9 while sending, SIGTERM while retrying


def test_kill9_while_receiving_loses_nothing_acknowledged(tmp_path: Path) -> None:
    files = copy_slices(need(CHEST), tmp_path / "in", 5, start=10)
    source_uid = fresh_series(files, **PATIENT)
    out, dest_port = tmp_path / "received", free_port()
    receiver = storescp(out, dest_port)
    node = Node(tmp_path / "node", free_port(), {
        "destinations": [{"name": "scp", "ae_title": "STORESCP", "host": "127.0.0.1",
                          "port": dest_port}],
        "security": {"allowed": [{"ae_title": "PYSCU", "host": "127.0.0.1"}]},
        "spool": {"stable_age": 30.0},  # the kill comes long before the series is complete
    })  # fmt: skip
    try:
        node.start()
        acknowledged = []
        assoc = scu(node.port)
        for f in files[:3]:
            ds = pydicom.dcmread(f)
            assert assoc.send_c_store(ds).Status == 0x0000
            acknowledged.append(str(ds.SOPInstanceUID))
        node.kill9()  # mid-association, mid-series
        try:
            unanswered = assoc.send_c_store(pydicom.dcmread(files[3]))
        except RuntimeError:  # the association already noticed
            unanswered = None
        assert not unanswered  # no status: not acknowledged
        assoc.abort()
        node.config_path.write_text(node.config_path.read_text().replace(
            "stable_age = 30.0", "stable_age = 1.0"))  # fmt: skip
        node.start()
        derived = wait_derived(out, source_uid, 3)
        assert {d.SourceImageSequence[0].ReferencedSOPInstanceUID for d in derived} >= set(
            acknowledged
        )
        # The sender sends the whole series again, as a PACS retrying would.
        assoc = scu(node.port)
        for f in files:
            assert assoc.send_c_store(pydicom.dcmread(f)).Status == 0x0000
        assoc.release()
        derived = wait_derived(out, source_uid, 5)
        time.sleep(2)
        derived = derived_by_source(out)[source_uid]
        assert len(derived) == 5 and len({d.SeriesInstanceUID for d in derived}) == 1
        assert len(derived_by_source(out)) == 1  # exactly one derived series
    finally:
        node.stop()
        receiver.stop()


class SlowDestination:
    """A pynetdicom Storage SCP that takes its time and counts what it gets (by SOP UID)."""

    def __init__(self, delay: float) -> None:
        self.port, self.delay = free_port(), delay
        self.started: list[str] = []
        self.received: Counter = Counter()
        ae = AE(ae_title="SLOWDEST")
        ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self.store)])  # fmt: skip

    def store(self, event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        self.started.append(uid)
        time.sleep(self.delay)
        self.received[uid] += 1
        return 0x0000

    def close(self) -> None:
        self.server.shutdown()


def test_kill9_while_sending_resends_only_what_was_not_acknowledged(tmp_path: Path) -> None:
    files = copy_slices(need(CHEST), tmp_path / "in", 5, start=50)
    fresh_series(files, **PATIENT)
    dest = SlowDestination(delay=0.7)
    node = Node(tmp_path / "node", free_port(), {
        "destinations": [{"name": "slow", "ae_title": "SLOWDEST", "host": "127.0.0.1",
                          "port": dest.port}],
        "security": {"allowed": [{"ae_title": "STORESCU", "host": "127.0.0.1"}]},
    })  # fmt: skip
    try:
        node.start()
        sender = storescu(node.port, tmp_path / "in")
        assert sender.wait(60) == 0
        wait_for("the third instance to be on its way", lambda: len(dest.started) >= 3,
                 timeout=120, every=0.02)  # fmt: skip
        node.kill9()
        key = next((node.spool / "series").iterdir()).name
        journal = node.spool / "series" / key / "sent-slow.log"
        acknowledged = {line.split()[0] for line in journal.read_text().splitlines()}
        assert len(acknowledged) >= 2
        before = Counter(dest.received)
        node.start()
        wait_for("all 5 derived instances", lambda: len(dest.received) == 5, timeout=120)
        wait_for("the series to be sent", lambda: node.status()["series"][0]["state"] == "sent")
        for uid in acknowledged:  # never sent again once its acceptance was recorded
            assert dest.received[uid] == before[uid] == 1, uid
        assert sum(dest.received.values()) <= 6  # at most the one in flight at the kill
        derived_dir = node.spool / "series" / key / "derived"
        assert {pydicom.dcmread(f).SOPInstanceUID for f in derived_dir.iterdir()} == set(
            dest.received
        )
        assert node.terminate() == 0
        assert "stopped; left in the spool for the next start: nothing" in node.log()
    finally:
        node.stop()
        dest.close()


def test_sigterm_parks_work_and_a_down_destination_gets_everything_later(
    tmp_path: Path,
) -> None:
    """SIGTERM while denoising parks the series; after a restart it is processed, the absent
    destination is retried with back-off, a second SIGTERM leaves it processed-but-unsent,
    and the third start delivers it once the destination is up."""
    files = copy_slices(need(CHEST), tmp_path / "in", 4, start=36)
    source_uid = fresh_series(files, **PATIENT)
    out, dest_port = tmp_path / "received", free_port()
    node = Node(tmp_path / "node", free_port(), {
        "destinations": [{"name": "scp", "ae_title": "STORESCP", "host": "127.0.0.1",
                          "port": dest_port}],
        "security": {"allowed": [{"ae_title": "STORESCU", "host": "127.0.0.1"}]},
        "processing": {"batch": 1},  # a stop is noticed after every slice
    })  # fmt: skip
    receiver = None
    try:
        node.start()
        assert storescu(node.port, tmp_path / "in").wait(60) == 0
        wait_for("denoising to start", lambda: "denoising 4 slices" in node.log(), every=0.05)
        assert node.terminate() == 0
        assert "parked by the stop" in node.log()
        assert "left in the spool for the next start: 1 queued" in node.log()

        node.start()

        def retrying():
            series = node.status()["series"]
            dest = series[0]["destinations"].get("scp") if series else None
            return dest and dest["attempts"] >= 2 and "retry 2 in" in node.log()

        wait_for("the node to retry the absent destination", retrying, timeout=120)
        (record,) = node.status()["series"]
        assert record["state"] == "sending"
        assert "connection refused" in record["destinations"]["scp"]["last_error"]
        assert "connection refused at 127.0.0.1" in node.log()
        assert node.terminate() == 0  # a normal stop with work left
        assert "left in the spool for the next start: 1 sending" in node.log()

        receiver = storescp(out, dest_port)
        node.start()
        derived = wait_derived(out, source_uid, 4)
        assert len(derived) == 4 and dciodvfy_errors(Path(derived[0].filename)) == []
        wait_for("the series to be sent", lambda: node.status()["series"][0]["state"] == "sent")
        text = subprocess.run(
            [sys.executable, "-m", "manas_infer", "node-status", "--config", str(node.config_path)],
            capture_output=True, text=True, check=True,
        ).stderr  # fmt: skip
        assert "1 sent" in " ".join(text.split()) and "scp sent 4/4" in text
    finally:
        node.stop()
        if receiver is not None:
            receiver.stop()


# ---- TLS


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([tool("openssl"), *args], cwd=cwd, check=True, capture_output=True)


def test_tls_needs_a_valid_client_certificate(tmp_path: Path) -> None:
    echoscu = tool("echoscu")
    certs = tmp_path / "certs"
    certs.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=certs)  # fmt: skip
    for name in ("node", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=certs)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", cwd=certs)  # fmt: skip
    # A client certificate from a CA the node does not trust.
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=rogue",
             "-keyout", "rogue.key", "-out", "rogue.pem", cwd=certs)  # fmt: skip
    node = Node(tmp_path / "node", free_port(), {
        "security": {"allowed": [{"ae_title": "ECHOSCU", "host": "127.0.0.1"}]},
        "tls": {"enabled": True, "certificate": str(certs / "node.pem"),
                "private_key": str(certs / "node.key"), "ca_certificates": str(certs / "ca.pem"),
                "require_client_certificate": True},
    })  # fmt: skip

    def echo(*tls: str) -> subprocess.CompletedProcess:
        return subprocess.run([echoscu, *tls, "-aec", NODE_AET, "127.0.0.1", str(node.port)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    try:
        node.start()
        assert "(TLS on, client certificate required)" in node.log()
        good = echo("+tls", str(certs / "client.key"), str(certs / "client.pem"),
                    "+cf", str(certs / "ca.pem"))  # fmt: skip
        assert good.returncode == 0, good.stdout + good.stderr
        no_cert = echo("+tla", "+cf", str(certs / "ca.pem"))
        assert no_cert.returncode != 0
        rogue = echo("+tls", str(certs / "rogue.key"), str(certs / "rogue.pem"),
                     "+cf", str(certs / "ca.pem"))  # fmt: skip
        assert rogue.returncode != 0
        plain = echo()
        assert plain.returncode != 0
        assert node.proc.poll() is None  # refused handshakes leave it serving
        assert echo("+tls", str(certs / "client.key"), str(certs / "client.pem"),
                    "+cf", str(certs / "ca.pem")).returncode == 0  # fmt: skip
    finally:
        node.stop()


# ---- last: the logs of every node above


def test_logs_never_hold_patient_names_ids_or_birth_dates() -> None:
    logs = [p for p in LOGS if p.is_file()]
    if not logs:
        pytest.skip("no node ran in this session (run the whole module)")
    assert len(SENT_PATIENT_VALUES) >= 3
    for path in logs:
        text = path.read_text(errors="replace")
        for value in SENT_PATIENT_VALUES:
            for form in {value, value.replace("^", " ")}:
                assert form not in text, f"{form!r} in {path}"
    joined = "".join(p.read_text(errors="replace") for p in logs)
    assert "DEBUG" in joined or "INFO" in joined  # the logs were written, at debug level
