"""Which onnxruntime build this Python has, and the one-line repair for a mixed install.

The CPU build (``onnxruntime``, the default dependency) and the GPU build
(``onnxruntime-gpu``, the ``gpu`` extra) install the same ``onnxruntime`` package folder, and
onnxruntime's own documentation says only one may be installed at a time. ``pip install
manas-infer[gpu]`` installs both, so whichever was written last decides what Python loads;
when that is the CPU build the CUDA provider is simply missing. The runtime names that
state and the exact repair instead of running on the CPU without a word.
"""

from __future__ import annotations

from importlib import metadata

BUILDS = ("onnxruntime", "onnxruntime-gpu")
REPAIR = 'pip uninstall -y onnxruntime onnxruntime-gpu && pip install "onnxruntime-gpu[cuda,cudnn]"'


def installed_builds() -> dict[str, str]:
    """{distribution: version} of the onnxruntime builds installed in this environment."""
    found: dict[str, str] = {}
    for name in BUILDS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def gpu_install_advice(available_providers: list[str]) -> str | None:
    """A sentence saying why CUDA is not offered and how to fix it, or None when it is.

    ``available_providers`` is ``onnxruntime.get_available_providers()`` (a parameter, so
    every case can be tested without installing either build).
    """
    if "CUDAExecutionProvider" in available_providers:
        return None
    builds = installed_builds()
    if "onnxruntime-gpu" not in builds:
        return (
            'the CPU build of onnxruntime is installed; for a GPU: pip install "manas-infer[gpu]"'
        )
    if "onnxruntime" in builds:
        versions = ", ".join(f"{name} {version}" for name, version in builds.items())
        return (
            f"both onnxruntime builds are installed ({versions}) and Python loads the CPU one;"
            f" repair: {REPAIR}"
        )
    return None
