"""The Storage SCP's event handlers. Each runs in an association thread and does one small
thing: check the caller, or check an instance, put it in the spool durably and answer.
No decoding beyond one check that the pixels can be read, no inference, no sending here.

Statuses (PS3.4 B.2.3): 0xA700-0xA702 out of resources (disk watermark or disk full, max
slices, max bytes), 0xA900 not an axial CT image (another modality or class, a localizer),
0xC000 cannot be understood (unreadable, no or undecodable pixels, implausible matrix,
multi-frame, inconsistent UIDs, a rescale or geometry the HU values and the derived series
cannot be made from). Each failure carries an ErrorComment saying why.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import evt

from manas_infer.data.header import check_header
from manas_infer.data.series import (
    CT_IMAGE_STORAGE,
    ENHANCED_CT_IMAGE_STORAGE,
    read_hu_file,
    sop_class_of,
)
from manas_infer.dicom_node.config import NodeConfig
from manas_infer.dicom_node.disk import is_disk_full
from manas_infer.dicom_node.records import SeriesRecord, State
from manas_infer.dicom_node.spool import Spool, series_key
from manas_infer.errors import InputProblem

log = logging.getLogger("manas_infer.node.intake")

STORAGE_CLASSES = (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE)
# Uncompressed, and every compressed syntax the reader decodes (pylibjpeg plugins, zlib).
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEG2000Lossless,
    JPEG2000,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
]

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
TOO_MANY_SLICES = 0xA701
TOO_LARGE = 0xA702
NOT_CT = 0xA900
CANNOT_UNDERSTAND = 0xC000
OWN_MANUFACTURER = "manas-infer"


def status(code: int, comment: str = "") -> Dataset:
    """A C-STORE status with an ErrorComment (LO: at most 64 characters)."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


def is_own_output(ds: Dataset, spool: Spool) -> bool:
    """A derived series this node produced: DERIVED with manas-infer as contributing
    equipment, or a series UID the spool knows as one of its outputs."""
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "DERIVED" not in image_type:
        return False
    for item in ds.get("ContributingEquipmentSequence") or []:
        if str(item.get("Manufacturer", "")).strip() == OWN_MANUFACTURER:
            return True
    return spool.known_derived(str(ds.get("SeriesInstanceUID", "")))


class Refused(Exception):
    """An instance the node will not take: the status code and the reason."""

    def __init__(self, code: int, reason: str) -> None:
        self.code, self.reason = code, reason
        super().__init__(reason)


class Intake:
    """Handlers for EVT_REQUESTED (allow-list), EVT_C_ECHO and EVT_C_STORE."""

    def __init__(self, config: NodeConfig, spool: Spool) -> None:
        self.config = config
        self.spool = spool
        self.max_bytes = int(config.limits.max_instance_mb * 1024 * 1024)
        self.allowed = [
            (entry.ae_title.strip(), ipaddress.ip_network(entry.host, strict=False))
            for entry in config.security.allowed
        ]
        self._own_seen: set[str] = set()
        self._lock = threading.Lock()
        self.counts = {"stored": 0, "refused": 0, "own_output": 0, "duplicates": 0}

    def handlers(self) -> list:
        """The (event, handler) pairs to bind to the server."""
        return [
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
        ]

    # ---- association level
    def is_allowed(self, ae_title: str, address: str) -> bool:
        if self.config.security.allow_any:
            return True
        try:
            peer = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ae_title.strip() == title and peer in network for title, network in self.allowed)

    def on_requested(self, event) -> None:
        """Refuse a calling AE title that is not allow-listed with this host address."""
        assoc = event.assoc
        ae_title = str(assoc.requestor.primitive.calling_ae_title).strip()
        address = str(assoc.requestor.address)
        if not self.is_allowed(ae_title, address):
            log.warning(
                "refused association from AE %r at %s: not in security.allowed "
                "(add an [[security.allowed]] entry with this AE title and host to let it in)",
                ae_title,
                address,
            )
            # rejected-permanent, service-user, calling AE title not recognised; then wait
            # for the reject to go out, as pynetdicom does for its own rejections
            assoc.acse.send_reject(0x01, 0x01, 0x03)
            assoc.kill()

    def on_echo(self, event) -> int:
        return SUCCESS

    # ---- instances
    def on_store(self, event) -> Dataset:
        """Check, spool durably, answer. Never raises: every problem becomes a status."""
        calling = str(event.assoc.requestor.ae_title)
        sop_uid = str(event.request.AffectedSOPInstanceUID or "")
        try:
            outcome = self._store(event, calling, sop_uid)
        except Refused as refused:
            with self._lock:
                self.counts["refused"] += 1
            log.warning(
                "refused instance %s from %s: 0x%04X %s",
                sop_uid or "(no SOP instance UID)",
                calling,
                refused.code,
                refused.reason,
            )
            return status(refused.code, refused.reason)
        except Exception as exc:  # a bug or an OS error must not kill the association
            if is_disk_full(exc):  # nothing was kept: the temporary file is removed
                with self._lock:
                    self.counts["refused"] += 1
                log.error(
                    "spool disk full storing instance %s from %s: answered 0xA700 (free space "
                    "in %s; the sender retries)",
                    sop_uid,
                    calling,
                    self.spool.root,
                )
                return status(OUT_OF_RESOURCES, "spool disk full")
            log.error(
                "could not store instance %s from %s (%s); answered 0xA700",
                sop_uid,
                calling,
                type(exc).__name__,
            )
            return status(OUT_OF_RESOURCES, f"node error storing it ({type(exc).__name__})")
        with self._lock:
            self.counts[outcome] += 1
        return status(SUCCESS)

    def _store(self, event, calling: str, sop_uid: str) -> str:
        limits = self.config.limits
        size = event.request.DataSet.getbuffer().nbytes
        if size > self.max_bytes:
            raise Refused(
                TOO_LARGE,
                f"{size / 2**20:.1f} MB over limits.max_instance_mb {limits.max_instance_mb:g}",
            )
        used = self.spool.disk_used_percent()
        if used >= limits.disk_watermark_percent:
            log.error(
                "spool disk %.1f %% full, above limits.disk_watermark_percent %g: refusing new "
                "instances with 0xA700 until space is freed (%s)",
                used,
                limits.disk_watermark_percent,
                self.spool.root,
            )
            raise Refused(OUT_OF_RESOURCES, f"spool disk {used:.0f}% full (watermark)")
        if not sop_uid:
            raise Refused(CANNOT_UNDERSTAND, "no Affected SOP Instance UID")
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception as exc:
            raise Refused(CANNOT_UNDERSTAND, f"cannot encode ({type(exc).__name__})") from None
        # Check the instance from a temporary file in the series folder: the same bytes that
        # will be renamed into place, read by the same reader that will process them.
        tmp = self.spool.write_temporary(data)
        try:
            ds = self._check(tmp, event.context.abstract_syntax, calling, sop_uid)
            if ds is None:
                return "own_output"
            return self._accept(tmp, ds, event, calling, sop_uid)
        finally:
            tmp.unlink(missing_ok=True)

    def _check(self, path, context_class: str, calling: str, sop_uid: str) -> Dataset | None:
        try:
            ds = pydicom.dcmread(path, defer_size="64 KB")
            ds.get("Modality")  # parse the header now, inside this try
        except Exception as exc:
            raise Refused(CANNOT_UNDERSTAND, f"not readable DICOM ({type(exc).__name__})") from None
        if is_own_output(ds, self.spool):
            uid = str(ds.get("SeriesInstanceUID", ""))
            if uid not in self._own_seen:
                self._own_seen.add(uid)
                log.info(
                    "series %s from %s is this node's own derived output: acknowledged, "
                    "not processed again",
                    series_key(uid),
                    calling,
                )
            return None
        declared = sop_class_of(ds)
        if declared and declared != context_class:
            raise Refused(NOT_CT, f"SOPClassUID {declared} differs from the context's")
        modality = str(ds.get("Modality", "") or "")
        if modality != "CT":
            raise Refused(NOT_CT, f"not a CT image (Modality {modality or 'missing'})")
        if context_class == ENHANCED_CT_IMAGE_STORAGE or int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise Refused(CANNOT_UNDERSTAND, "multi-frame Enhanced CT unsupported: send classic CT")
        if not str(ds.get("SeriesInstanceUID", "") or ""):
            raise Refused(CANNOT_UNDERSTAND, "no SeriesInstanceUID")
        own_uid = str(ds.get("SOPInstanceUID", "") or "")
        if own_uid and own_uid != sop_uid:
            raise Refused(CANNOT_UNDERSTAND, "SOPInstanceUID differs from the request's")
        if "LOCALIZER" in [str(v).upper() for v in (ds.get("ImageType") or [])]:
            raise Refused(NOT_CT, "a localizer (scout): only axial CT is denoised")
        if "PixelData" not in ds:
            raise Refused(CANNOT_UNDERSTAND, "no pixel data")
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        limit = self.config.limits.max_matrix
        if not (0 < rows <= limit and 0 < cols <= limit):
            raise Refused(CANNOT_UNDERSTAND, f"matrix {rows}x{cols} outside 1..{limit}")
        try:
            # Rescale, position, orientation, spacing: what the HU values and the derived
            # series depend on. A file that fails here would be a blank or invalid image
            # at the PACS; it is refused now, with the reason, and never forwarded.
            check_header(ds, path)
        except InputProblem as problem:
            raise Refused(CANNOT_UNDERSTAND, f"bad header: {problem.problem}") from None
        try:
            read_hu_file(path)
        except InputProblem as problem:
            raise Refused(CANNOT_UNDERSTAND, problem.problem) from None
        except Exception as exc:
            raise Refused(CANNOT_UNDERSTAND, f"pixels unreadable ({type(exc).__name__})") from None
        return ds

    def _refuse_whole(self, record: SeriesRecord, limit: int) -> None:
        """A series over ``limits.max_slices`` is refused whole (call under its lock): the
        slices taken before the limit would otherwise go out as a derived series that looks
        complete. It is failed and recorded; the generation bump drops a result the worker
        may be computing for it."""
        record.state = State.FAILED
        record.generation += 1
        record.refused_over_limit = limit
        record.error = f"more than limits.max_slices ({limit}) instances: refused whole"
        record.note(record.error)
        self.spool.save(record)
        self.spool.record_failure(
            series=record.key, series_uid=record.series_uid, stage="receiving", reason=record.error
        )
        log.error(
            "series %s (key %s) has more than limits.max_slices (%d) instances: the whole "
            "series is refused and will not be processed or sent (its further instances are "
            "answered 0xA701; raise the limit and send it again to process it)",
            record.series_uid,
            record.key,
            limit,
        )

    def _accept(self, tmp, ds: Dataset, event, calling: str, sop_uid: str) -> str:
        series_uid = str(ds.SeriesInstanceUID)
        key = series_key(series_uid)
        address = str(event.assoc.requestor.address)
        with self.spool.lock(key):
            record = self.spool.get(key)
            known = self.spool.instance_path(key, sop_uid).exists()
            if record is not None and known and record.state != State.RECEIVING:
                return "duplicates"  # already taken into a series that moved on
            limit = self.config.limits.max_slices
            if not known and self.spool.instance_count(key) >= limit:
                if record is not None and not record.refused_over_limit:
                    self._refuse_whole(record, limit)
                raise Refused(TOO_MANY_SLICES, f"series over limits.max_slices {limit}")
            if record is None:
                record = SeriesRecord(key, series_uid, calling_ae=calling, calling_host=address)
                record.first_received = time.time()
                record.note(f"first instance from {calling} at {address}")
                self.spool.save(record)
                log.info(
                    "receiving series %s (key %s) from %s at %s", series_uid, key, calling, address
                )
            elif record.state != State.RECEIVING:
                previous = record.state
                record.state = State.RECEIVING
                record.generation += 1
                record.calling_ae, record.calling_host = calling, address
                record.refused_over_limit, record.error = 0, None  # the limit was raised
                record.note(f"new instance while {previous}: receiving again")
                self.spool.save(record)
                log.info(
                    "series %s (key %s) got a new instance while %s: receiving again, "
                    "it will be processed again once stable",
                    series_uid,
                    key,
                    previous,
                )
            size = tmp.stat().st_size
            self.spool.publish(key, tmp, sop_uid)
        log.debug(
            "stored instance %s of series %s from %s (%d bytes%s)",
            sop_uid,
            key,
            calling,
            size,
            ", a duplicate" if known else "",
        )
        return "duplicates" if known else "stored"
