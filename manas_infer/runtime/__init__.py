"""The one inference runtime (SPEC section 3): every caller that denoises uses it.

models/ -> ``resolve_model`` (by name, path or dose), or ``choice.choose`` (by the series'
own measured noise, ``noise.py``, against ``models/noise-levels.json``) -> ``Denoiser``
(onnxruntime session on the best provider that really works) -> HU slices in, HU slices
out. ``Denoiser.denoise`` is the product step: the network, the CT-number bias guard
(``guard.py``) and the strength (``strength.py``). The denoise command, the demo and the
DICOM node all go through here; nothing else opens an ONNX session for inference.
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
