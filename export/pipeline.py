"""``export_run``: a finished training run -> a verified, self-describing ONNX model file."""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from manas_infer.export.card import build_card
from manas_infer.export.graph import ORIENTATIONS, HUModel
from manas_infer.export.onnx_file import set_metadata, to_onnx
from manas_infer.export.verify import Parity, compare
from manas_infer.hashing import sha256
from manas_infer.runtime.models import ModelError, card_path, models_dir, name_for_dose
from manas_infer.runtime.providers import DEVICE_HELP, parse_device
from manas_infer.train.run import load_run_config, load_trained, run_stage

PRECISIONS = {"float32": torch.float32, "float16": torch.float16}


# What a float16 card says about automatic use. Without a GPU the variant is still written,
# checked on the CPU and marked opt-in, rather than refused: the CPU check still proves the
# graph right (weights, casts, padding; an export bug shows up as tens of HU), the file is
# what a GPU user opts into, and the runtime never picks it on its own (``session.py`` wants
# a GPU parity record). Refusing --fp16 would make the variant impossible to produce on the
# CPU-only machines most exports run on, for no safety gained.
AUTO_ON_GPU = "automatic on a GPU: its float16 parity was checked on {provider}"
OPT_IN_ONLY = (
    "opt-in only: not verified on a GPU (its parity was checked on {provider}, which computes "
    "float16 convolutions in float32); export with --fp16 where a GPU works to let the "
    "runtime choose it"
)


class ExportError(Exception):
    """The export cannot be done or did not verify; the message says which file and why."""


@dataclass(frozen=True)
class Exported:
    path: Path
    card_path: Path
    parity: Parity
    selection: str = ""  # float16: automatic on a GPU, or opt-in only


def latest_finished_run(runs_root: Path) -> Path:
    """The newest run directory (by name: runs are named by start time) that finished."""
    runs = sorted(
        folder for folder in Path(runs_root).glob("*") if (folder / "config.json").is_file()
    )
    for folder in reversed(runs):
        if run_stage(folder) == "done":
            return folder
    raise ExportError(
        f"{runs_root}: no finished training run here (train one with "
        f"'manas-infer train --dose 5', or pass the run directory)"
    )


def ensemble_card(network_gflops: float, ensemble: int) -> dict:
    """What the card says of the self-ensemble: the orientations, and the FLOPs a slice
    costs with them (``gflops_512``, what the runtime pays) beside one network pass's."""
    return {
        "ensemble": list(ORIENTATIONS)[:ensemble],
        "network_gflops_512": network_gflops,
        "gflops_512": round(network_gflops * ensemble, 2),
    }


def verification_slices(run_dir: Path, count: int = 3) -> tuple[np.ndarray, str]:
    """Whole native slices (HU) of the run's held-out test patient, from its dataset cache;
    the synthetic phantom when that cache is gone (the card says which)."""
    from manas_infer.train.dataset import PreparedDataset

    dataset = json.loads((run_dir / "dataset.json").read_text())
    folder = Path(dataset["folder"])
    if (folder / "manifest.json").is_file():
        native = PreparedDataset.load(folder).native("test")
        if native is not None and len(native[0]):
            slices = native[0]
            pick = np.linspace(0, len(slices) - 1, min(count, len(slices))).round().astype(int)
            return slices[pick], f"{len(pick)} real slices of the run's test patient"
    from manas_infer.data.phantom import phantom_volume

    return phantom_volume(count, 256).astype(np.float32), f"{count} synthetic phantom slices"


def export_run(
    run_dir: Path,
    out: Path | None = None,
    float16: bool = False,
    citations: list[str] | None = None,
    overwrite: bool = False,
    device: str = "auto",
    ensemble: int = 1,
) -> list[Exported]:
    """Export, verify against torch, and write model + card; float16 variant on request;
    ``ensemble`` N: the file averages the network over N orientations (``graph.py``).

    Files appear only after they verified: each is written under a hidden partial name and
    renamed into place, so a failed or interrupted export never leaves a model behind.
    """
    run_dir = Path(run_dir)
    _check_exportable(run_dir, device)
    config = load_run_config(run_dir)
    net, _ = load_trained(run_dir)
    out = Path(out) if out else models_dir() / f"{name_for_dose(config.dose, config.arch)}.onnx"
    if out.suffix != ".onnx":
        raise ExportError(f"{out}: the output must be a .onnx file")
    slices, checked_on = verification_slices(run_dir)
    reference = HUModel(copy.deepcopy(net), net.size_multiple, ensemble=ensemble)
    targets = _targets(out, float16, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    done: list[Exported] = []
    for precision, path in targets:
        name = path.name.removesuffix(".onnx")
        card = build_card(run_dir, name, precision, citations or [])
        card["size_multiple"] = net.size_multiple
        card.update(ensemble_card(card["gflops_512"], ensemble))
        proto = to_onnx(
            HUModel(copy.deepcopy(net), net.size_multiple, PRECISIONS[precision], ensemble)
        )
        verify = functools.partial(
            compare,
            reference,
            slices=slices,
            precision=precision,
            checked_on=checked_on,
            device=device,
        )
        parity = _write_verified(path, precision, proto, card, verify, done)
        done.append(Exported(path, card_path(path), parity, card.get("selection", "")))
    return done


def _check_exportable(run_dir: Path, device: str) -> None:
    """An ExportError, saying what to do, unless ``run_dir`` is a finished run and ``device``
    one the runtime takes."""
    try:
        parse_device(device)
    except ValueError:
        raise ExportError(f"--device {device!r}: use {DEVICE_HELP}") from None
    if not (run_dir / "config.json").is_file():
        raise ExportError(f"{run_dir}: not a training run directory (no config.json)")
    if run_stage(run_dir) != "done":
        raise ExportError(
            f"{run_dir}: the run has not finished (stage {run_stage(run_dir)!r}); "
            f"finish it with 'manas-infer train --resume {run_dir}'"
        )


def _targets(out: Path, float16: bool, overwrite: bool) -> list[tuple[str, Path]]:
    """(precision, file) of each model to write; an ExportError if one exists already and
    ``overwrite`` was not given."""
    targets = [("float32", out)]
    if float16:
        targets.append(("float16", out.with_name(out.name.removesuffix(".onnx") + ".fp16.onnx")))
    for _, path in targets:
        if (path.exists() or card_path(path).exists()) and not overwrite:
            raise ExportError(f"{path}: exists already (use --overwrite to replace it)")
    return targets


def _write_verified(
    path: Path,
    precision: str,
    proto: onnx.ModelProto,
    card: dict,
    verify: Callable[[Path], Parity],
    written: list[Exported],
) -> Parity:
    """The model and its card at ``path``, once the file verified under a hidden partial name;
    nothing there if it did not. ``written``: this export's files already in place."""
    set_metadata(proto, card)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(proto.SerializeToString())
    try:
        parity = _verified(path, partial, precision, verify, written)
        card["verification"] = parity.to_dict()
        if precision == "float16":
            card["selection"] = (AUTO_ON_GPU if parity.on_gpu else OPT_IN_ONLY).format(
                provider=parity.provider
            )
        set_metadata(proto, card)
        partial.write_bytes(proto.SerializeToString())
        card["sha256"] = sha256(partial)
        card["file"] = path.name
        card["bytes"] = partial.stat().st_size
        card_partial = card_path(partial)
        card_partial.write_text(json.dumps(card, indent=2) + "\n")
        os.replace(partial, path)
        os.replace(card_partial, card_path(path))
    finally:
        partial.unlink(missing_ok=True)
        card_path(partial).unlink(missing_ok=True)
    return parity


def _verified(
    path: Path,
    partial: Path,
    precision: str,
    verify: Callable[[Path], Parity],
    written: list[Exported],
) -> Parity:
    """The parity of the file at ``partial`` (to become ``path``); an ExportError if the check
    cannot run or the file differs from torch by more than its tolerance."""
    try:
        parity = verify(partial)
    except (ModelError, RuntimeError, ValueError) as e:
        raise ExportError(f"{path}: the {precision} check could not run: {e}") from None
    if not parity.ok:
        names = [str(item.path) for item in written]
        raise ExportError(
            f"{path}: onnxruntime ({parity.provider}) differs from torch by up to "
            f"{parity.max_abs_diff_hu:.3g} HU, more than the {parity.tolerance_hu} HU "
            f"allowed for {precision}; it was not written"
            + (f" (written and verified: {', '.join(names)})" if names else "")
        )
    return parity
