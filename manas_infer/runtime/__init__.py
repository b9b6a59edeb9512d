"""The one inference runtime (SPEC section 3): every caller that denoises uses it.

models/ -> ``resolve_model`` (by name, path or dose) -> ``Denoiser`` (onnxruntime session on
the best provider that really works) -> HU slices in, HU slices out. The denoise command
and the DICOM node both go through here; nothing else opens an ONNX session for inference.
"""

from manas_infer.runtime.models import (
    DEFAULT_MODEL,
    ModelChoice,
    ModelError,
    ModelInfo,
    list_models,
    models_dir,
    read_card,
    resolve_model,
)
from manas_infer.runtime.session import Denoiser

__all__ = [
    "DEFAULT_MODEL",
    "Denoiser",
    "ModelChoice",
    "ModelError",
    "ModelInfo",
    "list_models",
    "models_dir",
    "read_card",
    "resolve_model",
]
