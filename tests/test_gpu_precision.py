"""GPU paths, checked on the CPU: what the runtime asks onnxruntime for (TF32 off, the GPU
index, TensorRT's fallback and shape profile), and when a float16 variant may be chosen
automatically (only with a float16 parity check that passed on the GPU provider itself).

onnxruntime's ``InferenceSession`` is replaced by a recorder where a GPU is needed, so these
run on any machine; the export test at the end is real (CPU provider, trained tiny net).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest

from manas_infer.export.pipeline import ExportError, export_run
from manas_infer.runtime import Denoiser, models_dir
from manas_infer.runtime.providers import (
    cuda_works,
    open_session,
    parse_device,
    provider_list,
    tiny_model,
)
from manas_infer.runtime.session import float16_problem

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


class FakeSessions:
    """Stands in for ``ort.InferenceSession``: records each ``providers`` argument and takes
    the first provider asked for, unless it is in ``refuse`` (then, as onnxruntime's Python
    fallback does, a session on ``fallback_to``: bare CUDA, then CPU)."""

    def __init__(self, refuse: tuple[str, ...] = ()) -> None:
        self.calls: list[list] = []
        self.refuse = refuse
        self.fallback_to = [CUDA, CPU]
        self.sessions: list[SimpleNamespace] = []

    def __call__(self, source, options=None, providers=None, **kwargs):
        self.calls.append(providers)
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        taken = list(self.fallback_to) if names[0] in self.refuse else names
        session = SimpleNamespace(
            providers=taken,
            fallback=True,
            get_providers=lambda: list(taken),
            get_inputs=lambda: [SimpleNamespace(name="x")],
            get_outputs=lambda: [SimpleNamespace(name="y")],
            run=lambda outputs, feed: [feed["x"] + feed["x"]],
        )
        session.disable_fallback = lambda: setattr(session, "fallback", False)
        self.sessions.append(session)
        return session


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> FakeSessions:
    fake = FakeSessions()
    monkeypatch.setattr(ort, "InferenceSession", fake)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT, CUDA, CPU])
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: None, raising=False)
    return fake


@pytest.fixture
def model_pair(tmp_path: Path) -> tuple[Path, Path]:
    """m.onnx and its float16 variant m.fp16.onnx (the same tiny graph: only cards matter)."""
    full, half = tmp_path / "m.onnx", tmp_path / "m.fp16.onnx"
    full.write_bytes(tiny_model())
    half.write_bytes(tiny_model())
    write_card(full, {"precision": "float32", "verification": record("float32", CPU)})
    return full, half


def record(precision: str, provider: str, worst: float = 0.5, ok: bool = True) -> dict:
    return {
        "precision": precision,
        "max_abs_diff_hu": worst,
        "mean_abs_diff_hu": worst / 20,
        "tolerance_hu": 2.0 if precision == "float16" else 0.1,
        "provider": provider,
        "checked_on": "3 real slices",
        "on_gpu": provider != CPU,
        "ok": ok,
    }


def write_card(model: Path, card: dict) -> None:
    model.with_name(model.name.removesuffix(".onnx") + ".card.json").write_text(json.dumps(card))


# What onnxruntime is asked for.


def test_cuda_is_opened_with_tf32_off_by_open_session_and_the_runtime(
    fake_gpu: FakeSessions, model_pair
) -> None:
    opened = open_session(tiny_model(), "cuda")
    assert fake_gpu.calls[-1] == [(CUDA, {"device_id": "0", "use_tf32": "0"}), CPU]
    assert opened.provider == CUDA and opened.options["use_tf32"] == "0"
    assert "without TF32" in opened.why
    assert fake_gpu.sessions[-1].fallback is False  # no silent rerun on bare CUDA or the CPU
    # The runtime (and so export's check, which runs through it) opens CUDA the same way.
    denoiser = Denoiser(model_pair[0], device="auto", warm_up=None, precision="float32")
    assert denoiser.provider == CUDA and denoiser.on_gpu
    assert fake_gpu.calls[-1][0] == (CUDA, {"device_id": "0", "use_tf32": "0"})
    assert denoiser.provider_options == {"device_id": "0", "use_tf32": "0"}


def test_tensorrt_falls_back_to_cuda_in_its_list_and_has_a_shape_profile(
    fake_gpu: FakeSessions, tmp_path: Path
) -> None:
    opened = open_session(tiny_model(), "tensorrt:1", cache=tmp_path / "trt", max_batch=8)
    providers = fake_gpu.calls[-1]
    assert [p[0] if isinstance(p, tuple) else p for p in providers] == [TRT, CUDA, CPU]
    trt = providers[0][1]
    assert trt["device_id"] == "1"
    assert trt["trt_profile_min_shapes"] == "x:1x1x8x8"
    assert trt["trt_profile_opt_shapes"] == "x:8x1x512x512"
    assert trt["trt_profile_max_shapes"] == "x:8x1x1024x1024"
    assert trt["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert providers[1] == (CUDA, {"device_id": "1", "use_tf32": "0"})
    assert opened.provider == TRT and opened.device_id == 1


def test_tensorrt_that_does_not_load_is_not_replaced_by_cuda_without_options(
    monkeypatch: pytest.MonkeyPatch, fake_gpu: FakeSessions
) -> None:
    """onnxruntime's own fallback for a failing TensorRT is bare CUDA (TF32 on, GPU 0): the
    runtime drops that session and opens CUDA itself, with its options."""
    fake_gpu.refuse = (TRT,)
    opened = open_session(tiny_model(), "tensorrt:1")
    assert len(fake_gpu.calls) == 2
    assert fake_gpu.calls[-1] == [(CUDA, {"device_id": "1", "use_tf32": "0"}), CPU]
    assert opened.provider == CUDA and opened.options["use_tf32"] == "0"
    assert f"{TRT} unavailable" in opened.why


def test_device_index_is_parsed_and_passed_as_device_id(fake_gpu: FakeSessions, model_pair) -> None:
    assert parse_device("cuda:1") == ("cuda", 1)
    assert parse_device("TensorRT:2") == ("tensorrt", 2)
    assert parse_device("auto") == ("auto", 0) and parse_device("cuda") == ("cuda", 0)
    assert provider_list("cuda", 1)[0] == (CUDA, {"device_id": "1", "use_tf32": "0"})
    opened = open_session(tiny_model(), "cuda:1")
    assert fake_gpu.calls[-1][0][1]["device_id"] == "1" and opened.device_id == 1
    for wrong in ("cuda:x", "cuda:", "cpu:1", "auto:0", "gpu", "cuda:-1"):
        with pytest.raises(ValueError, match=r"unknown device .*use auto, cpu, cuda, cuda:N"):
            parse_device(wrong)
    with pytest.raises(ValueError, match="unknown device 'cuda:x'"):
        Denoiser(model_pair[0], device="cuda:x", warm_up=None)
    with pytest.raises(ExportError, match=r"--device 'cuda:x': use auto, cpu, cuda, cuda:N"):
        export_run(Path("no-such-run"), device="cuda:x")


# When the float16 variant is chosen automatically.


def test_float16_record_must_be_a_passed_check_on_the_gpu_provider_itself() -> None:
    assert float16_problem({"verification": record("float16", CUDA)}, CUDA) is None
    assert "not verified on a GPU" in float16_problem(
        {"verification": record("float16", CPU)}, CUDA
    )
    assert "no float16 parity record" in float16_problem({}, CUDA)
    assert "no float16 parity record" in float16_problem(
        {"verification": record("float32", CUDA)}, CUDA
    )
    assert f"not on {TRT}" in float16_problem({"verification": record("float16", CUDA)}, TRT)
    failed = record("float16", CUDA, worst=3.4, ok=False)
    assert "did not pass" in float16_problem({"verification": failed}, CUDA)
    forged = record("float16", CUDA, worst=3.4, ok=True)  # ok, yet over its own tolerance
    assert "did not pass" in float16_problem({"verification": forged}, CUDA)


def test_float16_is_not_chosen_without_a_gpu_parity_record(
    fake_gpu: FakeSessions, model_pair, caplog: pytest.LogCaptureFixture
) -> None:
    full, half = model_pair
    write_card(half, {"precision": "float16", "verification": record("float16", CPU)})
    with caplog.at_level(logging.INFO, logger="manas_infer.runtime"):
        denoiser = Denoiser(full, device="cuda", warm_up=None)
    assert denoiser.provider == CUDA and denoiser.path == full
    assert "opt-in only" in denoiser.precision_why
    assert f"checked on {CPU}" in denoiser.precision_why
    lines = [r.getMessage() for r in caplog.records if r.name == "manas_infer.runtime"]
    assert len(lines) == 1 and "float32: m.fp16.onnx is opt-in only" in lines[0]
    # Opt-in still works, and says what was not checked.
    with caplog.at_level(logging.INFO, logger="manas_infer.runtime"):
        chosen = Denoiser(full, device="cuda", warm_up=None, precision="float16")
    assert chosen.path == half and "float16 by request" in chosen.precision_why
    assert caplog.records[-1].levelno == logging.WARNING


def test_float16_is_chosen_with_a_passed_gpu_parity_record(
    fake_gpu: FakeSessions, model_pair
) -> None:
    full, half = model_pair
    write_card(half, {"precision": "float16", "verification": record("float16", CUDA)})
    denoiser = Denoiser(full, device="cuda", warm_up=None)
    assert denoiser.path == half and denoiser.name == "m.fp16"
    assert denoiser.precision_why.startswith("float16: m.fp16.onnx passed")
    # Not on the CPU, and not on another GPU provider than the one it was checked on.
    assert Denoiser(full, device="cpu", warm_up=None).path == full
    write_card(half, {"precision": "float16", "verification": record("float16", TRT)})
    assert Denoiser(full, device="cuda", warm_up=None).path == full


def test_shipped_float16_variants_are_not_chosen_automatically(fake_gpu: FakeSessions) -> None:
    """The shipped models/*.fp16 cards hold a CPU check only: float32 on a GPU, by design."""
    shipped = sorted(models_dir().glob("manas-*pct.onnx"))
    assert shipped
    assert any(path.with_suffix(".fp16.onnx").is_file() for path in shipped)
    for path in shipped:
        denoiser = Denoiser(path, device="cuda", warm_up=None)
        assert denoiser.path == path, path
        if path.with_suffix(".fp16.onnx").is_file():
            assert "not verified on a GPU" in denoiser.precision_why


# The runtime's own view of CUDA (tests decide on it, not on torch's).


def test_cuda_works_asks_onnxruntime(fake_gpu: FakeSessions) -> None:
    assert cuda_works.__wrapped__(1) is True
    assert fake_gpu.calls[-1][0] == (CUDA, {"device_id": "1", "use_tf32": "0"})
    fake_gpu.refuse = (CUDA,)  # onnxruntime's fallback session does not count as CUDA
    fake_gpu.fallback_to = [CPU]
    assert cuda_works.__wrapped__(1) is False


def test_cuda_works_is_false_where_onnxruntime_cannot_use_cuda(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    assert cuda_works.__wrapped__(0) is False


# Export on the CPU.


def test_export_on_the_cpu_marks_the_float16_variant_opt_in(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "cpu" / "manas-5pct.onnx"
    done = export_run(trained_run, out, float16=True, device="cpu")
    full, half = (item.path for item in done)
    card = json.loads(half.with_name("manas-5pct.fp16.card.json").read_text())
    assert card["selection"].startswith("opt-in only: not verified on a GPU")
    assert card["verification"]["provider"] == CPU and card["verification"]["on_gpu"] is False
    assert card["verification"]["ok"] and card["verification"]["precision"] == "float16"
    assert done[1].selection == card["selection"]
    assert "selection" not in json.loads(full.with_name("manas-5pct.card.json").read_text())
    # And the runtime on a GPU keeps the float32 model for it, saying why.
    fake = FakeSessions()
    monkeypatch.setattr(ort, "InferenceSession", fake)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    denoiser = Denoiser(full, device="cuda", warm_up=None)
    assert denoiser.path == full and "not verified on a GPU" in denoiser.precision_why
    assert np.isfinite(card["verification"]["max_abs_diff_hu"])
