"""Where the user's data and caches are: command-line option, environment, config file.

The config file is TOML, ``./manas-infer.toml`` or ``~/.config/manas-infer/config.toml``,
with keys ``data`` (normal-dose CT root) and ``cache`` (dataset cache folder).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path


def config_files() -> tuple[Path, Path]:
    """The config files, project first; computed per call so HOME is read when it matters."""
    return Path("manas-infer.toml"), Path.home() / ".config" / "manas-infer" / "config.toml"


class ConfigError(Exception):
    """A setting that is missing or wrong, with what to do about it."""


def user_config() -> tuple[dict, Path | None]:
    """The first config file that exists, parsed, and its path."""
    for path in config_files():
        if path.is_file():
            try:
                return tomllib.loads(path.read_text()), path
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return {}, None


def resolve_data_root(option: Path | None) -> Path:
    """--data, else $MANAS_DATA, else ``data`` in the config file; never a silent default."""
    if option is not None:
        root = option
    elif os.environ.get("MANAS_DATA"):
        root = Path(os.environ["MANAS_DATA"])
    else:
        config, path = user_config()
        if "data" not in config:
            raise ConfigError(
                "no training data given: pass --data DIR (a folder of normal-dose CT, one "
                'sub-folder per patient), or set MANAS_DATA, or put data = "DIR" in '
                f"{config_files()[0]} or {config_files()[1]}"
            )
        root = Path(str(config["data"])).expanduser()
        if not root.is_absolute() and path is not None:
            root = path.parent / root
    if not root.exists():
        raise ConfigError(f"{root}: data folder does not exist")
    if not root.is_dir():
        raise ConfigError(f"{root}: is not a folder (give the folder that holds the CT data)")
    return root


def cache_root() -> Path:
    """Dataset cache: $MANAS_CACHE, else ``cache`` in the config file, else ~/.cache."""
    if os.environ.get("MANAS_CACHE"):
        return Path(os.environ["MANAS_CACHE"])
    config, _ = user_config()
    if "cache" in config:
        return Path(str(config["cache"])).expanduser()
    return Path.home() / ".cache" / "manas-infer"


def shared_ct_root() -> Path:
    """The project's own CT series: ``$MANAS_SHARED_DATA/ct``, else ``../shared/data/ct``
    beside the repository, where the tests and benches find them; the default data of the
    scripts that calibrate and score the shipped models."""
    shared = os.environ.get("MANAS_SHARED_DATA")
    return (
        Path(shared) if shared else Path(__file__).resolve().parents[2] / "shared" / "data"
    ) / "ct"
