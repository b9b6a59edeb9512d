"""The node's configuration: one TOML file, ``--set section.key=value`` overrides, and
validation (``config_check.py``) that names the file, the key and the problem before anything
starts.

Every key is a field of one of the frozen dataclasses below, so the known keys, their types
and their defaults are written once; unknown keys and impossible values are refused at
start-up rather than found at 3 a.m. Relative paths are taken from the config file's folder.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from manas_infer.dicom_node.config_check import config_problems


class NodeConfigError(Exception):
    """Every problem found in a configuration, one per line, each naming its key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {problem}" for problem in problems))


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
    # ConvolutionKernel (0018,1210) names, any case: a sharp (lung, bone) kernel at normal
    # dose is as noisy as a soft one at low dose, which the measured noise cannot tell apart.
    convolution_kernel: list[str] = field(default_factory=list)
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
        return next(dest for dest in self.destinations if dest.name == name)


def _convert(value: Any, hint: Any, where: str, problems: list[str], base: Path) -> Any:
    """Check one TOML value against a field's type; append a problem and return None if wrong."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is not None and type(None) in args:  # X | None
        inner = next(arg for arg in args if arg is not type(None))
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
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
        problems.append(f"{where} must be a list of strings, got {value!r}")
    elif origin is list:
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            problems.append(f"{where} must be a list of tables ([[{where}]]), got {value!r}")
            return []
        return [
            _build(args[0], item, f"{where}[{index}]", problems, base)
            for index, item in enumerate(value)
        ]
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
    known = {spec.name for spec in fields(cls) if spec.name != "source"}
    for key in raw:
        if key not in known:
            name = f"{where}.{key}" if where else key
            problems.append(f"unknown key {name} (known keys: {', '.join(sorted(known))})")
    values = {}
    for spec in fields(cls):
        if spec.name in raw:
            name = f"{where}.{spec.name}" if where else spec.name
            converted = _convert(raw[spec.name], hints[spec.name], name, problems, base)
            if converted is not None or _optional(hints[spec.name]):
                values[spec.name] = converted
            elif hints[spec.name] is Path and raw[spec.name] == "":
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
        for key in keys[:-1]:
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                raise NodeConfigError(source, [f"--set {text}: {key} is not a table"])
        table[keys[-1]] = value
    if overrides:
        source += " (with --set overrides)"
    problems: list[str] = []
    config = _build(NodeConfig, raw, "", problems, base)
    config = replace(config, source=source)
    problems += config_problems(config)
    if problems:
        raise NodeConfigError(source, problems)
    return config
