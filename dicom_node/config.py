"""The node's configuration: one TOML file, ``--set section.key=value`` overrides, and
validation that names the file, the key and the problem before anything starts.

Every key is a field of one of the frozen dataclasses below, so the known keys, their types
and their defaults are written once; unknown keys and impossible values are refused at
start-up rather than found at 3 a.m. Relative paths are taken from the config file's folder.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

# The default character repertoire without backslash and control characters (PS3.5 6.2).
AE_TITLE_CHARS = {chr(c) for c in range(0x20, 0x7F)} - {"\\"}
LOG_LEVELS = ("debug", "info", "warning", "error")
DEVICES = ("auto", "cpu", "cuda", "tensorrt")


class NodeConfigError(Exception):
    """Every problem found in a configuration, one per line, each naming its key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


@dataclass(frozen=True)
class NodeSection:
    ae_title: str = "MANAS"
    host: str = "127.0.0.1"
    port: int = 11112
    max_associations: int = 10
    max_pdu: int = 65536
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    shutdown_grace: float = 20.0
    # Everything before a valid A-ASSOCIATE-RQ (TLS handshake included) must be done in
    # this many seconds, so no unauthenticated connection holds anything for long.
    handshake_timeout: float = 5.0
    # Connections still at that stage, counted for allow-listed hosts and for the rest
    # separately; more are dropped at once.
    max_pending_connections: int = 32


@dataclass(frozen=True)
class SpoolSection:
    path: Path = Path("spool")
    stable_age: float = 30.0
    keep_sent_hours: float = 24.0
    # A full spool disk while processing is waited out, not a failure: the series is
    # queued again and retried after this back-off (doubling up to the maximum).
    disk_full_retry_initial: float = 5.0
    disk_full_retry_max: float = 120.0


@dataclass(frozen=True)
class LimitsSection:
    max_slices: int = 3000
    max_instance_mb: float = 64.0
    max_matrix: int = 4096
    disk_watermark_percent: float = 90.0


@dataclass(frozen=True)
class ProcessingSection:
    device: str = "auto"
    batch: int = 4
    # Empty: when no rule matches, the series' own noise picks the model and the strength
    # (manas_infer/runtime/choice.py); a name or path: that model for every such series.
    default_model: str = ""
    # Percent of the estimated noise removed (0-100). None: fitted to the measured noise for
    # the automatic choice, the runtime's default (90 %) for a named model.
    strength: float | None = None


@dataclass(frozen=True)
class Rule:
    """One routing rule; the first rule whose conditions all hold picks the model."""

    name: str = ""
    calling_ae: list[str] = field(default_factory=list)
    ctdivol_below: float | None = None
    ctdivol_at_least: float | None = None
    model: str = ""
    dose: float | None = None
    strength: float | None = None  # None: processing.strength, else the runtime's default
    destinations: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RoutingSection:
    rules: list[Rule] = field(default_factory=list)


@dataclass(frozen=True)
class SendingSection:
    calling_ae: str = ""  # empty: node.ae_title
    retry_initial: float = 2.0
    retry_max: float = 60.0
    give_up_after: float = 86400.0


@dataclass(frozen=True)
class Destination:
    name: str = ""
    ae_title: str = ""
    host: str = ""
    port: int = 0
    tls: bool = False
    ca_certificates: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None


@dataclass(frozen=True)
class Allowed:
    ae_title: str = ""
    host: str = ""  # an address or a network (10.0.0.0/24)


@dataclass(frozen=True)
class SecuritySection:
    allow_any: bool = False
    allowed: list[Allowed] = field(default_factory=list)


@dataclass(frozen=True)
class TlsSection:
    enabled: bool = False
    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None
    require_client_certificate: bool = False


@dataclass(frozen=True)
class LoggingSection:
    level: str = "info"
    file: Path | None = None  # default: node.log in the spool folder


@dataclass(frozen=True)
class NodeConfig:
    node: NodeSection = field(default_factory=NodeSection)
    spool: SpoolSection = field(default_factory=SpoolSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    processing: ProcessingSection = field(default_factory=ProcessingSection)
    routing: RoutingSection = field(default_factory=RoutingSection)
    sending: SendingSection = field(default_factory=SendingSection)
    destinations: list[Destination] = field(default_factory=list)
    security: SecuritySection = field(default_factory=SecuritySection)
    tls: TlsSection = field(default_factory=TlsSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    source: str = "(defaults)"

    @property
    def spool_path(self) -> Path:
        return self.spool.path

    @property
    def log_file(self) -> Path:
        return self.logging.file or self.spool.path / "node.log"

    @property
    def sending_ae(self) -> str:
        return self.sending.calling_ae or self.node.ae_title

    def destination(self, name: str) -> Destination:
        return next(d for d in self.destinations if d.name == name)


# Tables whose entries are lists of tables, and the dataclass of one entry.
_LIST_ITEMS: dict[str, type] = {"rules": Rule, "destinations": Destination, "allowed": Allowed}


def _convert(value: Any, hint: Any, where: str, problems: list[str], base: Path) -> Any:
    """Check one TOML value against a field's type; append a problem and return None if wrong."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is not None and type(None) in args:  # X | None
        inner = next(a for a in args if a is not type(None))
        return _convert(value, inner, where, problems, base)
    if hint is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{where} must be true or false, got {value!r}")
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"{where} must be a whole number, got {value!r}")
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        problems.append(f"{where} must be a number, got {value!r}")
    elif hint is str:
        if isinstance(value, str):
            return value
        problems.append(f"{where} must be a string, got {value!r}")
    elif hint is Path:
        if isinstance(value, str):
            if not value:
                return None
            path = Path(value).expanduser()
            return path if path.is_absolute() else base / path
        problems.append(f"{where} must be a path (a string), got {value!r}")
    elif origin is list and args[0] is str:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        problems.append(f"{where} must be a list of strings, got {value!r}")
    elif origin is list:
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            problems.append(f"{where} must be a list of tables ([[{where}]]), got {value!r}")
            return []
        return [_build(args[0], v, f"{where}[{i}]", problems, base) for i, v in enumerate(value)]
    elif isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
        if isinstance(value, dict):
            return _build(hint, value, where, problems, base)
        problems.append(f"{where} must be a table ([{where}]), got {value!r}")
    else:  # pragma: no cover - a field type this loader does not know
        raise TypeError(f"{where}: unsupported field type {hint}")
    return None


def _build(cls: type, raw: dict, where: str, problems: list[str], base: Path) -> Any:
    """A dataclass from a TOML table: unknown keys and wrong types become problems."""
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.name != "source"}
    for key in raw:
        if key not in known:
            name = f"{where}.{key}" if where else key
            problems.append(f"unknown key {name} (known keys: {', '.join(sorted(known))})")
    values = {}
    for f in fields(cls):
        if f.name in raw:
            name = f"{where}.{f.name}" if where else f.name
            converted = _convert(raw[f.name], hints[f.name], name, problems, base)
            if converted is not None or _optional(hints[f.name]):
                values[f.name] = converted
            elif hints[f.name] is Path and raw[f.name] == "":
                problems.append(f"{name} must not be empty")
    return cls(**values)


def _optional(hint: Any) -> bool:
    return type(None) in get_args(hint)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (["section", "key"], value); the value is read as TOML
    (numbers, booleans, "strings", [lists], {inline tables}) or else taken as a bare string."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise NodeConfigError("--set", [f"{text!r}: expected section.key=value"])
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.split("."), parsed


def load_config(
    path: Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> NodeConfig:
    """Read, override and validate; raise NodeConfigError listing every problem."""
    raw: dict = {}
    source = "(defaults)"
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise NodeConfigError(source, ["no such configuration file"])
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise NodeConfigError(source, [f"not valid TOML ({exc})"]) from None
        base = path.resolve().parent
    for text in overrides:
        keys, value = parse_override(text)
        table = raw
        for k in keys[:-1]:
            table = table.setdefault(k, {})
            if not isinstance(table, dict):
                raise NodeConfigError(source, [f"--set {text}: {k} is not a table"])
        table[keys[-1]] = value
    if overrides:
        source += " (with --set overrides)"
    problems: list[str] = []
    config = _build(NodeConfig, raw, "", problems, base)
    config = replace(config, source=source)
    problems += _check(config)
    if problems:
        raise NodeConfigError(source, problems)
    return config


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


def _check(c: NodeConfig) -> list[str]:
    """Values that parse but cannot work: ranges, references, files, addresses."""
    p: list[str] = []
    n = c.node
    _ae_title(p, "node.ae_title", n.ae_title)
    _between(p, "node.port", n.port, 1, 65535)
    _between(p, "node.max_associations", n.max_associations, 1, 1000)
    _between(p, "node.max_pdu", n.max_pdu, 0, 2**32 - 1)
    for key in ("acse_timeout", "dimse_timeout", "network_timeout"):
        _between(p, f"node.{key}", getattr(n, key), 0.1, 86400)
    _between(p, "node.shutdown_grace", n.shutdown_grace, 0, 3600)
    _between(p, "node.handshake_timeout", n.handshake_timeout, 0.1, 300)
    _between(p, "node.max_pending_connections", n.max_pending_connections, 1, 10_000)
    try:
        ipaddress.ip_address(n.host)
    except ValueError:
        if n.host != "localhost":
            p.append(f"node.host must be an IP address to listen on, got {n.host!r}")
    _between(p, "spool.stable_age", c.spool.stable_age, 0.1, 86400)
    _between(p, "spool.keep_sent_hours", c.spool.keep_sent_hours, 0, 24 * 365)
    _between(p, "spool.disk_full_retry_initial", c.spool.disk_full_retry_initial, 0.01, 3600)
    _between(p, "spool.disk_full_retry_max", c.spool.disk_full_retry_max,
             c.spool.disk_full_retry_initial, 86400)  # fmt: skip
    if c.spool.path.exists() and not c.spool.path.is_dir():
        p.append(f"spool.path {c.spool.path} exists and is not a folder")
    lim = c.limits
    _between(p, "limits.max_slices", lim.max_slices, 1, 100_000)
    _between(p, "limits.max_instance_mb", lim.max_instance_mb, 0.01, 4096)
    _between(p, "limits.max_matrix", lim.max_matrix, 16, 65535)
    _between(p, "limits.disk_watermark_percent", lim.disk_watermark_percent, 1, 100)
    from manas_infer.runtime.providers import parse_device  # onnxruntime: only when checked

    try:
        parse_device(c.processing.device)  # the runtime's own rule: auto, cpu, cuda[:N]...
    except ValueError:
        p.append(f"processing.device must be one of {', '.join(DEVICES)}, got "
                 f"{c.processing.device!r} (cuda and tensorrt may name a GPU: cuda:1)")  # fmt: skip
    _between(p, "processing.batch", c.processing.batch, 1, 1024)
    if c.processing.strength is not None:
        _between(p, "processing.strength", c.processing.strength, 0, 100)
    s = c.sending
    if s.calling_ae:
        _ae_title(p, "sending.calling_ae", s.calling_ae)
    _between(p, "sending.retry_initial", s.retry_initial, 0.01, 3600)
    _between(p, "sending.retry_max", s.retry_max, s.retry_initial, 86400)
    _between(p, "sending.give_up_after", s.give_up_after, 0, 30 * 86400)

    names = [d.name for d in c.destinations]
    for i, d in enumerate(c.destinations):
        where = f"destinations[{i}]"
        if not d.name or not d.name.replace("-", "").replace("_", "").isalnum():
            p.append(f"{where}.name must be a word (letters, digits, - and _), got {d.name!r}")
        elif names.count(d.name) > 1:
            p.append(f"{where}.name {d.name!r} is used by more than one destination")
        _ae_title(p, f"{where}.ae_title", d.ae_title)
        if not d.host:
            p.append(f"{where}.host is required")
        _between(p, f"{where}.port", d.port, 1, 65535)
        _file(p, f"{where}.ca_certificates", d.ca_certificates, required=d.tls)
        _file(p, f"{where}.certificate", d.certificate, required=False)
        _file(p, f"{where}.private_key", d.private_key, required=d.certificate is not None)

    for i, rule in enumerate(c.routing.rules):
        where = f"routing.rules[{i}]" + (f" ({rule.name})" if rule.name else "")
        if bool(rule.model) == (rule.dose is not None):
            p.append(f"{where} needs exactly one of model or dose")
        if rule.dose is not None and rule.dose <= 0:
            p.append(f"{where}.dose must be a positive percentage, got {rule.dose:g}")
        if rule.strength is not None:
            _between(p, f"{where}.strength", rule.strength, 0, 100)
        for key in ("ctdivol_below", "ctdivol_at_least"):
            value = getattr(rule, key)
            if value is not None and value < 0:
                p.append(f"{where}.{key} must not be negative, got {value:g}")
        for title in rule.calling_ae:
            _ae_title(p, f"{where}.calling_ae", title)
        for name in rule.destinations:
            if name not in names:
                p.append(f"{where}.destinations names {name!r}, which is not a destination "
                         f"(destinations: {', '.join(names) or 'none'})")  # fmt: skip

    sec = c.security
    for i, a in enumerate(sec.allowed):
        _ae_title(p, f"security.allowed[{i}].ae_title", a.ae_title)
        try:
            ipaddress.ip_network(a.host, strict=False)
        except ValueError:
            p.append(f"security.allowed[{i}].host must be an IP address or network "
                     f"(10.0.0.0/24), got {a.host!r}")  # fmt: skip
    if not sec.allowed and not sec.allow_any:
        p.append("no calling AE title may connect: add [[security.allowed]] entries "
                 "(ae_title and host) or set security.allow_any = true")  # fmt: skip
    t = c.tls
    if t.enabled:
        _file(p, "tls.certificate", t.certificate, required=True)
        _file(p, "tls.private_key", t.private_key, required=True)
        _file(p, "tls.ca_certificates", t.ca_certificates, required=t.require_client_certificate)
    elif t.require_client_certificate:
        p.append("tls.require_client_certificate needs tls.enabled = true")
    if c.logging.level not in LOG_LEVELS:
        p.append(f"logging.level must be one of {', '.join(LOG_LEVELS)}, got {c.logging.level!r}")
    return p
