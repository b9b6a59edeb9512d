"""Writing the ONNX file: trace, dynamic axes, checker, metadata_props."""

from __future__ import annotations

import io
import json
import warnings

import onnx
import torch
from torch import nn

OPSET = 17  # onnxruntime >= 1.14 runs it everywhere; nothing here needs a newer op
INPUT, OUTPUT = "hu", "denoised_hu"
AXES = {0: "batch", 2: "height", 3: "width"}


def to_onnx(model: nn.Module, example_size: int = 64) -> onnx.ModelProto:
    """Trace ``model`` (HU in, HU out) to ONNX with dynamic batch, height and width.

    The TorchScript exporter (``dynamo=False``): the graph has no data-dependent control flow,
    it exports in a second, and its output is checked against torch right after.
    """
    buf = io.BytesIO()
    example = torch.full((1, 1, example_size, example_size), -1000.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        torch.onnx.export(
            model.eval(),
            (example,),
            buf,
            dynamo=False,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: AXES, OUTPUT: AXES},
            opset_version=OPSET,
        )
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto, full_check=True)
    return proto


def set_metadata(proto: onnx.ModelProto, card: dict) -> None:
    """Store the card in metadata_props: strings as they are, everything else as JSON."""
    del proto.metadata_props[:]
    for key, value in card.items():
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    proto.doc_string = str(card.get("description", ""))
    proto.producer_name = "manas-infer"
