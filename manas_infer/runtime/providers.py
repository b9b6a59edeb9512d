"""Choosing the onnxruntime execution provider that really works, quietly.

onnxruntime-gpu lists CUDA and TensorRT as available even where their libraries are missing,
and asking for them prints a wall of C++ errors before falling back to the CPU
(../shared/reference/FIELD-NOTES.md). Here each GPU provider is tried on its own while the
process's stdout and stderr file descriptors are captured (the errors come from C++ and
from onnxruntime's own Python prints); the session's ``get_providers()`` says whether it
really took. The caller gets the provider and one line of why.

``auto`` means CUDA when it works, else CPU. TensorRT only when asked for (``tensorrt``):
it builds an engine for every new input shape, which takes minutes the first time.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
GPU_PROVIDERS = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


@dataclass(frozen=True)
class Opened:
    """A session and the provider it actually runs on, with the reason for that choice."""

    session: ort.InferenceSession
    provider: str
    why: str

    @property
    def on_gpu(self) -> bool:
        return self.provider != "CPUExecutionProvider"


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
    model: Path | bytes, device: str = "auto", threads: int | None = None, cache: Path | None = None
) -> Opened:
    """An InferenceSession on the first provider of ``device``'s list that really works.

    Raises ValueError for an unknown device and RuntimeError when ``cuda``/``tensorrt`` was
    asked for explicitly but cannot run (an explicit request never silently runs on the CPU).
    """
    device = device.lower()
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
    source = model if isinstance(model, bytes) else str(model)
    wanted = {"auto": ["cuda"], "cpu": [], "cuda": ["cuda"], "tensorrt": ["tensorrt", "cuda"]}
    reasons: list[str] = []
    for gpu in wanted[device]:
        name = GPU_PROVIDERS[gpu]
        if name not in ort.get_available_providers():
            reasons.append(f"{name} is not in this onnxruntime build")
            continue
        options: dict[str, str] = {}
        if gpu == "tensorrt" and cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            options = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache)}
        with captured_output() as log:
            try:
                if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN from pip's nvidia-* wheels
                    ort.preload_dlls()
                session = ort.InferenceSession(
                    source,
                    session_options(threads),
                    providers=[(name, options), "CPUExecutionProvider"],
                )
            except Exception as e:  # onnxruntime raises its own exception types
                session, error = None, f"{type(e).__name__}: {e}"
            else:
                error = ""
        if session is not None and session.get_providers()[0] == name:
            return Opened(session, name, f"{device}: {name} works on this machine")
        reasons.append(f"{name} unavailable ({failure_reason(''.join(log) + error)})")
    if device in GPU_PROVIDERS:
        raise RuntimeError(f"--device {device} was asked for, but " + "; ".join(reasons))
    session = ort.InferenceSession(
        source, session_options(threads), providers=["CPUExecutionProvider"]
    )
    why = "asked for the CPU" if device == "cpu" else "; ".join(reasons) or "no GPU provider"
    return Opened(session, "CPUExecutionProvider", why)
