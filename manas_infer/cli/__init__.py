"""The ``manas-infer`` command line. Each command parses its options, calls the library and
reports; the work itself lives in the modules it calls."""

from __future__ import annotations

import typer

from manas_infer import __version__
from manas_infer.console import console

app = typer.Typer(
    help=(
        "Low-dose CT denoising with MANAS (multi-scale, multi-level neural architecture "
        "search): read CT series, simulate low doses, build training data."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"manas-infer {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Low-dose CT denoising with MANAS."""
    _log_to_console()


def _log_to_console() -> None:
    """Library log lines (the runtime's provider choice) go to the stderr console, once."""
    import logging

    from rich.logging import RichHandler

    logger = logging.getLogger("manas_infer")
    if not any(isinstance(handler, RichHandler) for handler in logger.handlers):
        handler = RichHandler(console=console, show_time=False, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


from manas_infer.cli.denoise import register as _register_denoise  # noqa: E402
from manas_infer.cli.evaluate import register as _register_evaluate  # noqa: E402
from manas_infer.cli.export import register as _register_export  # noqa: E402
from manas_infer.cli.series import register as _register_series  # noqa: E402
from manas_infer.cli.train import register as _register_train  # noqa: E402
from manas_infer.dicom_node.commands import register as _register_node  # noqa: E402

_register_series(app)
_register_denoise(app)
_register_train(app)
_register_evaluate(app)
_register_export(app)
_register_node(app)
