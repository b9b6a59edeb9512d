"""Values that parse but cannot work: ranges, references between sections, files that must
exist, addresses. ``load_config`` runs these once the TOML has become a ``NodeConfig``, so a
node never starts on a configuration that would fail later; every problem is reported at
once, each naming its key, in the order of the sections.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from manas_infer.dicom_node.config import NodeConfig

# The default character repertoire without backslash and control characters (PS3.5 6.2).
AE_TITLE_CHARS = {chr(code) for code in range(0x20, 0x7F)} - {"\\"}
LOG_LEVELS = ("debug", "info", "warning", "error")


def config_problems(config: NodeConfig) -> list[str]:
    """Every problem of ``config`` that its types alone do not rule out."""
    problems: list[str] = []
    for check in SECTION_CHECKS:
        check(config, problems)
    return problems


def _between(problems: list[str], name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        problems.append(f"{name} must be between {low:g} and {high:g}, got {value:g}")


def _ae_title(problems: list[str], name: str, value: str) -> None:
    if not value.strip():
        problems.append(f"{name} must not be empty")
    elif len(value) > 16:
        problems.append(f"{name} {value!r} is longer than 16 characters")
    elif not set(value) <= AE_TITLE_CHARS or "\\" in value:
        problems.append(f"{name} {value!r} holds characters an AE title cannot")


def _file(problems: list[str], name: str, value: Path | None, required: bool) -> None:
    if value is None:
        if required:
            problems.append(f"{name} is required")
    elif not value.is_file():
        problems.append(f"{name}: no such file {value}")
    elif not os.access(value, os.R_OK):
        problems.append(f"{name}: {value} is not readable")


def _check_node(config: NodeConfig, problems: list[str]) -> None:
    node = config.node
    _ae_title(problems, "node.ae_title", node.ae_title)
    _between(problems, "node.port", node.port, 1, 65535)
    _between(problems, "node.max_associations", node.max_associations, 1, 1000)
    _between(problems, "node.max_pdu", node.max_pdu, 0, 2**32 - 1)
    for key in ("acse_timeout", "dimse_timeout", "network_timeout"):
        _between(problems, f"node.{key}", getattr(node, key), 0.1, 86400)
    _between(problems, "node.shutdown_grace", node.shutdown_grace, 0, 3600)
    _between(problems, "node.handshake_timeout", node.handshake_timeout, 0.1, 300)
    _between(problems, "node.max_pending_connections", node.max_pending_connections, 1, 10_000)
    try:
        ipaddress.ip_address(node.host)
    except ValueError:
        if node.host != "localhost":
            problems.append(f"node.host must be an IP address to listen on, got {node.host!r}")


def _check_spool(config: NodeConfig, problems: list[str]) -> None:
    spool = config.spool
    _between(problems, "spool.stable_age", spool.stable_age, 0.1, 86400)
    _between(problems, "spool.keep_sent_hours", spool.keep_sent_hours, 0, 24 * 365)
    _between(problems, "spool.disk_full_retry_initial", spool.disk_full_retry_initial, 0.01, 3600)
    _between(
        problems,
        "spool.disk_full_retry_max",
        spool.disk_full_retry_max,
        spool.disk_full_retry_initial,
        86400,
    )
    if spool.path.exists() and not spool.path.is_dir():
        problems.append(f"spool.path {spool.path} exists and is not a folder")


def _check_limits(config: NodeConfig, problems: list[str]) -> None:
    limits = config.limits
    _between(problems, "limits.max_slices", limits.max_slices, 1, 100_000)
    _between(problems, "limits.max_instance_mb", limits.max_instance_mb, 0.01, 4096)
    _between(problems, "limits.max_matrix", limits.max_matrix, 16, 65535)
    _between(problems, "limits.disk_watermark_percent", limits.disk_watermark_percent, 1, 100)


def _check_processing(config: NodeConfig, problems: list[str]) -> None:
    # onnxruntime is imported only when a configuration is checked.
    from manas_infer.runtime.providers import DEVICES, parse_device

    processing = config.processing
    try:
        parse_device(processing.device)  # the runtime's own rule: auto, cpu, cuda[:N]...
    except ValueError:
        problems.append(
            f"processing.device must be one of {', '.join(DEVICES)}, got "
            f"{processing.device!r} (cuda and tensorrt may name a GPU: cuda:1)"
        )
    _between(problems, "processing.batch", processing.batch, 1, 1024)
    if processing.strength is not None:
        _between(problems, "processing.strength", processing.strength, 0, 100)


def _check_sending(config: NodeConfig, problems: list[str]) -> None:
    sending = config.sending
    if sending.calling_ae:
        _ae_title(problems, "sending.calling_ae", sending.calling_ae)
    _between(problems, "sending.retry_initial", sending.retry_initial, 0.01, 3600)
    _between(problems, "sending.retry_max", sending.retry_max, sending.retry_initial, 86400)
    _between(problems, "sending.give_up_after", sending.give_up_after, 0, 30 * 86400)


def _check_destinations(config: NodeConfig, problems: list[str]) -> None:
    names = [destination.name for destination in config.destinations]
    for index, destination in enumerate(config.destinations):
        where = f"destinations[{index}]"
        name = destination.name
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            problems.append(f"{where}.name must be a word (letters, digits, - and _), got {name!r}")
        elif names.count(name) > 1:
            problems.append(f"{where}.name {name!r} is used by more than one destination")
        _ae_title(problems, f"{where}.ae_title", destination.ae_title)
        if not destination.host:
            problems.append(f"{where}.host is required")
        _between(problems, f"{where}.port", destination.port, 1, 65535)
        _file(
            problems,
            f"{where}.ca_certificates",
            destination.ca_certificates,
            required=destination.tls,
        )
        _file(problems, f"{where}.certificate", destination.certificate, required=False)
        _file(
            problems,
            f"{where}.private_key",
            destination.private_key,
            required=destination.certificate is not None,
        )


def _check_routing(config: NodeConfig, problems: list[str]) -> None:
    names = [destination.name for destination in config.destinations]
    for index, rule in enumerate(config.routing.rules):
        where = f"routing.rules[{index}]" + (f" ({rule.name})" if rule.name else "")
        if bool(rule.model) == (rule.dose is not None):
            problems.append(f"{where} needs exactly one of model or dose")
        if rule.dose is not None and rule.dose <= 0:
            problems.append(f"{where}.dose must be a positive percentage, got {rule.dose:g}")
        if rule.strength is not None:
            _between(problems, f"{where}.strength", rule.strength, 0, 100)
        for key in ("ctdivol_below", "ctdivol_at_least"):
            value = getattr(rule, key)
            if value is not None and value < 0:
                problems.append(f"{where}.{key} must not be negative, got {value:g}")
        for title in rule.calling_ae:
            _ae_title(problems, f"{where}.calling_ae", title)
        if any(not kernel.strip() for kernel in rule.convolution_kernel):
            problems.append(f"{where}.convolution_kernel holds an empty name")
        for name in rule.destinations:
            if name not in names:
                problems.append(
                    f"{where}.destinations names {name!r}, which is not a "
                    f"destination (destinations: {', '.join(names) or 'none'})"
                )


def _check_security(config: NodeConfig, problems: list[str]) -> None:
    security = config.security
    for index, allowed in enumerate(security.allowed):
        _ae_title(problems, f"security.allowed[{index}].ae_title", allowed.ae_title)
        try:
            ipaddress.ip_network(allowed.host, strict=False)
        except ValueError:
            problems.append(
                f"security.allowed[{index}].host must be an IP address or network "
                f"(10.0.0.0/24), got {allowed.host!r}"
            )
    if not security.allowed and not security.allow_any:
        problems.append(
            "no calling AE title may connect: add [[security.allowed]] entries "
            "(ae_title and host) or set security.allow_any = true"
        )


def _check_tls(config: NodeConfig, problems: list[str]) -> None:
    tls = config.tls
    if tls.enabled:
        _file(problems, "tls.certificate", tls.certificate, required=True)
        _file(problems, "tls.private_key", tls.private_key, required=True)
        _file(
            problems,
            "tls.ca_certificates",
            tls.ca_certificates,
            required=tls.require_client_certificate,
        )
    elif tls.require_client_certificate:
        problems.append("tls.require_client_certificate needs tls.enabled = true")


def _check_logging(config: NodeConfig, problems: list[str]) -> None:
    level = config.logging.level
    if level not in LOG_LEVELS:
        problems.append(f"logging.level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")


# In the order the problems are reported: the order of the sections in the file.
SECTION_CHECKS: tuple[Callable[[NodeConfig, list[str]], None], ...] = (
    _check_node,
    _check_spool,
    _check_limits,
    _check_processing,
    _check_sending,
    _check_destinations,
    _check_routing,
    _check_security,
    _check_tls,
    _check_logging,
)
