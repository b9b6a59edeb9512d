"""``manas-infer serve`` and ``manas-infer node-status``: parse options, load the config,
hand over to the server or read the spool. Registered on the main typer app."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import typer
from rich.markup import escape

from manas_infer.console import console


def _config_or_exit(config: Path | None, overrides: list[str]):
    from manas_infer.dicom_node.config import NodeConfigError, load_config

    try:
        return load_config(config, overrides)
    except NodeConfigError as exc:
        for problem in exc.problems:
            console.print(
                f"[red]config error:[/red] {escape(exc.source)}: {escape(problem)}", soft_wrap=True
            )
        raise typer.Exit(2) from None


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def serve(
    config: Path | None = typer.Option(
        None, "--config", help="The node's TOML file (see dicom_node/node.example.toml)."
    ),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="Override any key: --set section.key=value (TOML value), e.g. --set "
        "node.port=11113 --set 'limits.max_slices=2000'. Repeat for several.",
    ),
    ae_title: str | None = typer.Option(None, help="Same as --set node.ae_title=..."),
    host: str | None = typer.Option(None, help="Same as --set node.host=..."),
    port: int | None = typer.Option(None, help="Same as --set node.port=..."),
    spool: Path | None = typer.Option(None, help="Same as --set spool.path=..."),
    stable_age: float | None = typer.Option(None, help="Same as --set spool.stable_age=..."),
    log_level: str | None = typer.Option(None, help="Same as --set logging.level=..."),
    strength: float | None = typer.Option(
        None,
        min=0,
        max=100,
        help="Same as --set processing.strength=...: percent of the estimated noise removed "
        "for every series no rule with its own strength matches. Default: fitted to each "
        "series' measured noise when no rule matches, 90 % for a named model.",
    ),
) -> None:
    """Run the DICOM node: a Storage SCP that denoises the CT series routed to it and sends
    the derived series to the configured destinations. Stops gracefully on SIGTERM."""
    overrides = list(set_)
    for key, value in (("node.ae_title", ae_title), ("node.host", host),
                       ("logging.level", log_level)):  # fmt: skip
        if value is not None:
            overrides.append(f"{key}={_toml_string(value)}")
    if port is not None:
        overrides.append(f"node.port={port}")
    if spool is not None:
        overrides.append(f"spool.path={_toml_string(str(spool.resolve()))}")
    if stable_age is not None:
        overrides.append(f"spool.stable_age={stable_age}")
    if strength is not None:
        overrides.append(f"processing.strength={float(strength)}")
    cfg = _config_or_exit(config, overrides)

    from manas_infer.dicom_node.config import NodeConfigError
    from manas_infer.dicom_node.server import run_node
    from manas_infer.runtime import ModelError

    try:
        code = run_node(cfg)
    except NodeConfigError as exc:
        for problem in exc.problems:
            console.print(
                f"[red]config error:[/red] {escape(exc.source)}: {escape(problem)}", soft_wrap=True
            )
        raise typer.Exit(2) from None
    except ModelError as exc:
        console.print(f"[red]model error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def status_summary(spool_root: Path, failures: int = 20) -> dict:
    """What node-status prints, as data: counts by state and one entry per series."""
    from manas_infer.dicom_node.spool import Spool

    spool = Spool(spool_root, read_only=True)
    series = []
    for record in spool.records():
        series.append(
            {
                "key": record.key,
                "series_uid": record.series_uid,
                "state": record.state,
                "calling_ae": record.calling_ae,
                "instances": spool.instance_count(record.key),
                "model": record.model,
                "derived_series_uid": record.derived_series_uid,
                "destinations": {
                    name: {
                        "state": progress.state,
                        "sent": progress.sent,
                        "total": progress.total,
                        "attempts": progress.attempts,
                        "last_error": progress.last_error,
                    }
                    for name, progress in record.destinations.items()
                },
                "error": record.error,
                "first_received": record.first_received,
                "updated": record.updated,
                "last_event": record.history[-1][1] if record.history else None,
            }
        )
    return {
        "spool": str(spool_root),
        "counts": spool.count_by_state(),
        "series": series,
        "failures": spool.failures()[-failures:],
    }


def node_status(
    config: Path | None = typer.Option(None, "--config", help="The node's TOML file."),
    set_: list[str] = typer.Option([], "--set", help="Override a key, as for serve."),
    spool: Path | None = typer.Option(None, help="Read this spool folder instead."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
    limit: int = typer.Option(30, min=1, help="Show at most this many series (newest)."),
) -> None:
    """Show the node's queued, processing, sent and failed series, read from its spool on
    disk (works whether the node is running or not)."""
    if spool is None:
        overrides = [*set_, "security.allow_any=true"]  # reading needs no allow-list
        spool = _config_or_exit(config, overrides).spool.path
    if not (spool / "series").is_dir():
        console.print(f"[red]{spool}: no spool here (the node has not run with it)[/red]")
        raise typer.Exit(1)
    summary = status_summary(spool)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    from manas_infer.dicom_node.records import State

    counts = summary["counts"]
    console.print(
        f"spool {spool}: " + ", ".join(f"{counts.get(state, 0)} {state}" for state in State),
        soft_wrap=True,
    )
    for item in summary["series"][-limit:]:
        colour = {"failed": "red", "sent": "green"}.get(item["state"], "yellow")
        dests = "; ".join(
            f"{name} {progress['state']} {progress['sent']}/{progress['total']}"
            + (
                f" ({progress['last_error']})"
                if progress["last_error"] and progress["state"] != "sent"
                else ""
            )
            for name, progress in item["destinations"].items()
        )
        detail = item["error"] if item["state"] == "failed" else item["last_event"]
        console.print(
            f"{_when(item['updated'])}  series {item['key']}  [{colour}]{item['state']}[/{colour}]"
            f"  from {item['calling_ae'] or '?'}  {item['instances']} instances"
            + (f"  model {item['model']}" if item["model"] else "")
            + (f"  -> {dests}" if dests else "")
            + (f"  | {escape(detail)}" if detail else ""),
            soft_wrap=True,
            highlight=False,
        )
    for failure in summary["failures"][-5:]:
        where = failure.get("destination") or failure.get("stage")
        console.print(
            f"[red]failed[/red] {_when(failure.get('time'))} series {failure.get('series')} "
            f"({where}): {escape(str(failure.get('reason')))}",
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``node-status`` to the main command line."""
    app.command("serve")(serve)
    app.command("node-status")(node_status)
