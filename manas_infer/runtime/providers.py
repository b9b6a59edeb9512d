"""Choosing the onnxruntime execution provider that really works, quietly.

onnxruntime-gpu lists CUDA and TensorRT as available even where their libraries are missing,
and asking for them prints a wall of C++ errors before falling back to the CPU
(../shared/reference/FIELD-NOTES.md). Here each GPU provider is tried on its own while the
process's stdout and stderr file descriptors are captured (the errors come from C++ and
from onnxruntime's own Python prints); the session's ``get_providers()`` says whether it
really took. The caller gets the provider and one line of why.

``auto`` means CUDA when it works, else CPU. ``cuda:N`` and ``tensorrt:N`` pick GPU N
(onnxruntime's ``device_id``); plain ``cuda``/``tensorrt``/``auto`` use GPU 0.

Precision is part of what a session is. The CUDA provider runs float32 convolutions in TF32
by default on Ampere and newer GPUs (10-bit mantissa): on the shipped models that is
1.5-2.9 HU off torch, where float32 holds 0.1 HU. Every CUDA session here is opened with
``use_tf32`` = 0 (onnxruntime's CUDA provider option; its cuDNN convolutions then leave out
tensor-core TF32 engines), so a float32 model runs in true float32 on the GPU, and the
export check (``export/verify.py``), which opens its session through this same function,
verifies exactly the configuration the runtime serves. The fast GPU path is the float16
variant, verified on the GPU itself at export (``session.py`` picks it only then).

TensorRT (``tensorrt``) is experimental: only when asked for. Its list is TensorRT, then
CUDA (same options as above) for the nodes TensorRT does not take, then CPU. It builds one
engine for the input-shape profile given below (batch 1..``max_batch``, slices 8..1024 px a
side: shapes outside it are outside what the engine was built for), which takes minutes the
first time (cached with ``cache``). When TensorRT does not take the whole graph, onnxruntime
also wants profiles for the inner subgraphs' inputs; if the TensorRT session cannot be built,
``tensorrt`` falls back to CUDA and the reason line says why. TensorRT builds float32 layers with
TF32 allowed and onnxruntime offers no option to turn that off, so a float32 model on TensorRT
is not covered by its float32 parity record.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort

from manas_infer.runtime.install import gpu_install_advice

DEVICES = ("auto", "cpu", "cuda", "tensorrt")  # the kinds; cuda and tensorrt take ":N"
GPU_PROVIDERS = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
DEVICE_HELP = "auto, cpu, cuda, cuda:N (GPU N), tensorrt or tensorrt:N (experimental)"
# The CUDA provider's own default is TF32 on; "0" makes float32 convolutions true float32.
CUDA_OPTIONS = {"use_tf32": "0"}
# TensorRT's one shape profile: batch 1..max_batch, square or not, sides 8..1024 px.
TRT_MIN_SIDE, TRT_OPT_SIDE, TRT_MAX_SIDE = 8, 512, 1024


@dataclass(frozen=True)
class ProviderSession:
    """A session and the provider it actually runs on, with the reason for that choice."""

    session: ort.InferenceSession
    provider: str
    why: str
    device_id: int = 0
    options: dict[str, str] = field(default_factory=dict)  # given to ``provider``

    @property
    def on_gpu(self) -> bool:
        return self.provider != "CPUExecutionProvider"


def parse_device(device: str) -> tuple[str, int]:
    """``cuda:1`` -> ("cuda", 1); ``auto`` -> ("auto", 0). ValueError, saying what is
    accepted, for anything else (``cuda:x``, ``cpu:1``, ``gpu``)."""
    text = str(device).strip().lower()
    kind, sep, index = text.partition(":")
    if kind in DEVICES and not sep:
        return kind, 0
    if kind in GPU_PROVIDERS and sep and index.isdigit():
        return kind, int(index)
    raise ValueError(f"unknown device {device!r}: use {DEVICE_HELP}")


def trt_profile(input_name: str, max_batch: int) -> dict[str, str]:
    """onnxruntime's TensorRT shape-profile options for one [N, 1, H, W] input."""

    def shape(n: int, side: int) -> str:
        return f"{input_name}:{n}x1x{side}x{side}"

    return {
        "trt_profile_min_shapes": shape(1, TRT_MIN_SIDE),
        "trt_profile_opt_shapes": shape(max_batch, TRT_OPT_SIDE),
        "trt_profile_max_shapes": shape(max_batch, TRT_MAX_SIDE),
    }


def image_input(source: str | bytes) -> str | None:
    """The name of the model's input when it is the one 4-D image input, else None."""
    import onnx

    try:
        proto = (
            onnx.load_from_string(source)
            if isinstance(source, bytes)
            else onnx.load(source, load_external_data=False)
        )
    except Exception:  # unreadable: onnxruntime will say so when it opens it
        return None
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) == 1 and len(inputs[0].type.tensor_type.shape.dim) == 4:
        return inputs[0].name
    return None


def provider_list(
    kind: str,
    device_id: int = 0,
    cache: Path | None = None,
    input_name: str | None = None,
    max_batch: int = 4,
) -> list[tuple[str, dict[str, str]] | str]:
    """The ``providers`` argument for onnxruntime: ``kind``'s provider(s), then the CPU."""
    cuda = ("CUDAExecutionProvider", {"device_id": str(device_id), **CUDA_OPTIONS})
    if kind == "cuda":
        return [cuda, "CPUExecutionProvider"]
    if kind != "tensorrt":
        raise ValueError(f"no GPU provider list for {kind!r}")
    trt: dict[str, str] = {"device_id": str(device_id)}
    if input_name:
        trt.update(trt_profile(input_name, max_batch))
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        trt.update({"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache)})
    return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]


@contextlib.contextmanager
def captured_output() -> Iterator[list[str]]:
    """Capture what C++ code writes to fd 1 and 2 (Python's redirect cannot see it)."""
    text: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield text
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            text.append(sink.read().decode("utf-8", "replace"))


def failure_reason(log: str) -> str:
    """The one informative line of onnxruntime's provider failure output."""
    for pattern in (
        r"with error: ([^\n]+)",
        r"(Require cuDNN[^\n.]*)",
        r"(Please install TensorRT[^\n,]*)",
        r"(CUDA failure[^\n]*)",
        r"\[ONNXRuntimeError\][^\n]*?: ([^\n]+)",
    ):
        match = re.search(pattern, log)
        if match:
            return re.sub(r"\x1b\[[0-9;]*m", "", match.group(1)).strip()
    return "the provider did not load"


def session_options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = threads or max(1, os.cpu_count() or 1)
    return options


def open_session(
    model: Path | bytes,
    device: str = "auto",
    threads: int | None = None,
    cache: Path | None = None,
    max_batch: int = 4,
) -> ProviderSession:
    """An InferenceSession on the first provider of ``device``'s list that really works.

    Raises ValueError for an unknown device and RuntimeError when ``cuda``/``tensorrt`` was
    asked for explicitly but cannot run (an explicit request never silently runs on the CPU).
    ``max_batch`` is the largest batch TensorRT's shape profile covers.
    """
    kind, device_id = parse_device(device)
    device = str(device).strip().lower()
    source = model if isinstance(model, bytes) else str(model)
    wanted = {"auto": ["cuda"], "cpu": [], "cuda": ["cuda"], "tensorrt": ["tensorrt", "cuda"]}
    reasons: list[str] = []
    for gpu in wanted[kind]:
        name = GPU_PROVIDERS[gpu]
        available = ort.get_available_providers()
        if name not in available:
            advice = gpu_install_advice(available) if gpu == "cuda" else None
            reasons.append(f"{name} unavailable (not in this onnxruntime build"
                           + (f": {advice})" if advice else ")"))  # fmt: skip
            continue
        input_name = image_input(source) if gpu == "tensorrt" else None
        providers = provider_list(gpu, device_id, cache, input_name, max_batch)
        with captured_output() as log:
            try:
                if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN from pip's nvidia-* wheels
                    ort.preload_dlls()
                session = ort.InferenceSession(
                    source, session_options(threads), providers=providers
                )
            except Exception as e:  # onnxruntime raises its own exception types
                session, error = None, f"{type(e).__name__}: {e}"
            else:
                error = ""
        # onnxruntime's Python layer answers a provider that fails to load with a session on
        # its fallback list, built without our options (TF32 on, GPU 0): only a session whose
        # first provider is the one asked for counts; the next try brings its own options.
        if session is not None and session.get_providers()[0] == name:
            # No silent switch at run time either: an EP failure raises instead of rerunning
            # on a fallback list without these options, i.e. on a configuration nobody checked.
            session.disable_fallback()
            how = "float32 without TF32" if gpu == "cuda" else "experimental, TF32 allowed"
            works = f"{device}: {name} works on this machine (GPU {device_id}, {how})"
            return ProviderSession(
                session, name, "; ".join([*reasons, works]), device_id, providers[0][1]
            )
        reasons.append(f"{name} unavailable ({failure_reason(''.join(log) + error)})")
    if kind in GPU_PROVIDERS:
        raise RuntimeError(f"--device {device} was asked for, but " + "; ".join(reasons))
    session = ort.InferenceSession(
        source, session_options(threads), providers=["CPUExecutionProvider"]
    )
    why = "asked for the CPU" if kind == "cpu" else "; ".join(reasons) or "no GPU provider"
    return ProviderSession(session, "CPUExecutionProvider", why)


def tiny_model() -> bytes:
    """A one-node ONNX model (y = x + x, float32 [1, 1, 8, 8]) to probe a provider with."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "probe", [x], [y])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8  # readable by every onnxruntime this project supports
    return proto.SerializeToString()


@functools.cache
def cuda_works(device_id: int = 0) -> bool:
    """Whether onnxruntime itself can open and run a session on CUDA GPU ``device_id``.

    This is the runtime's own answer: torch may see a GPU that onnxruntime cannot use
    (no cuDNN or cuBLAS of its CUDA major version) and the other way round.
    """
    import numpy as np

    try:
        opened = open_session(tiny_model(), f"cuda:{device_id}", threads=1)
        x = np.ones((1, 1, 8, 8), np.float32)
        with captured_output():
            out = opened.session.run(None, {"x": x})[0]
    except Exception:  # RuntimeError when CUDA does not load; anything a broken driver raises
        return False
    return bool(np.array_equal(out, x + x))
