"""Finding models: the shipped ``models/`` folder, names, doses, paths, and their cards.

A model is ``NAME.onnx`` with its card ``NAME.card.json`` beside it. The card's content is
also stored in the ONNX file's metadata_props, so a model copied without its card still
says what it is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "manas-5pct"
CARD_SUFFIX = ".card.json"


class ModelError(Exception):
    """A model that cannot be found or used; the message names the file and the problem."""


def models_dir() -> Path:
    """$MANAS_MODELS (a site's own models folder), else the shipped models: package data in
    an installed wheel (``manas_infer/models``), the repository's ``models/`` in a checkout.
    """
    if os.environ.get("MANAS_MODELS"):
        return Path(os.environ["MANAS_MODELS"])
    package = Path(__file__).resolve().parents[1]
    installed = package / "models"
    return installed if installed.is_dir() else package.parent / "models"


def name_for_dose(dose: float, arch: str = "manas") -> str:
    """The shipped model name for a dose: 5 -> ``manas-5pct``, 2.5 -> ``manas-2.5pct``."""
    return f"{arch}-{dose:g}pct"


def card_path(model: Path) -> Path:
    return model.with_name(model.name.removesuffix(".onnx") + CARD_SUFFIX)


def read_card(model: Path) -> dict:
    """The model card: the JSON beside the file, else the file's own metadata_props."""
    beside = card_path(model)
    if beside.is_file():
        try:
            return json.loads(beside.read_text())
        except json.JSONDecodeError as e:
            raise ModelError(f"{beside}: the model card is not valid JSON ({e})") from None
    return card_from_metadata(model)


def card_from_metadata(model: Path) -> dict:
    """Rebuild the card from metadata_props (values are strings; JSON ones are decoded)."""
    import onnx

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others for a corrupt file
        raise ModelError(f"{model}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    card: dict = {}
    for prop in proto.metadata_props:
        try:
            card[prop.key] = json.loads(prop.value)
        except json.JSONDecodeError:
            card[prop.key] = prop.value
    return card


def taught_grain(card: dict) -> str:
    """The noise grain a model was taught, from its card: ``coarse`` when its training gave
    the noise a soft-tissue kernel's grain too (``--noise-texture``), else ``fine`` (the
    simulator's ramp grain only)."""
    augmentation = (card.get("training") or {}).get("augmentation") or {}
    texture = augmentation.get("texture") or [0.0, 0.0]
    return "coarse" if float(texture[1]) > 0.0 else "fine"


@dataclass(frozen=True)
class ModelChoice:
    """Which model file a command uses and why (the summary names both)."""

    path: Path
    name: str
    why: str


def resolve_model(
    model: str | None = None, dose: float | None = None, folder: Path | None = None
) -> ModelChoice:
    """``model`` (a path or a name in models/) wins; otherwise ``dose``; otherwise the default."""
    folder = folder or models_dir()
    if model:
        as_path = Path(model).expanduser()
        if as_path.suffix == ".onnx" or as_path.exists() or os.sep in model:
            if not as_path.is_file():
                raise ModelError(f"{as_path}: no such model file")
            return ModelChoice(as_path, as_path.name.removesuffix(".onnx"), "--model")
        return ModelChoice(_named(model, folder), model, "--model")
    if dose is not None:
        if dose <= 0:
            raise ModelError(f"--dose must be a positive percentage, got {dose:g}")
        name = name_for_dose(dose)
        return ModelChoice(_named(name, folder), name, f"--dose {dose:g}")
    return ModelChoice(_named(DEFAULT_MODEL, folder), DEFAULT_MODEL, "default model")


def _named(name: str, folder: Path) -> Path:
    path = folder / f"{name}.onnx"
    if path.is_file():
        return path
    available = ", ".join(info.name for info in list_models(folder)) or "none"
    raise ModelError(f"{path}: no model named {name!r} in {folder} (available: {available})")


@dataclass(frozen=True)
class ModelInfo:
    """One line of ``manas-infer models``."""

    name: str
    path: Path
    card: dict
    megabytes: float

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_MODEL


def list_models(folder: Path | None = None) -> list[ModelInfo]:
    """Every ``*.onnx`` in the folder with its card, by name; unreadable cards say so."""
    folder = folder or models_dir()
    found = []
    for path in sorted(
        Path(folder).glob("*.onnx"), key=lambda model: model.name.removesuffix(".onnx")
    ):
        try:
            card = read_card(path)
        except ModelError as e:
            card = {"problem": str(e)}
        name = path.name.removesuffix(".onnx")
        found.append(ModelInfo(name, path, card, path.stat().st_size / 1e6))
    return found
