"""``Denoiser``: a loaded model on its provider, HU slices in, HU slices out."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from manas_infer.config import cache_root
from manas_infer.runtime.guard import BIAS_GUARD_SIGMA_PX
from manas_infer.runtime.models import ModelChoice, ModelError, read_card, resolve_model
from manas_infer.runtime.providers import GPU_PROVIDERS, ProviderSession, open_session
from manas_infer.runtime.strength import DEFAULT_STRENGTH, apply_strength, check_strength

log = logging.getLogger("manas_infer.runtime")
PRECISIONS = ("auto", "float32", "float16")


def half_variant(path: Path) -> Path:
    """``NAME.onnx`` -> ``NAME.fp16.onnx`` (itself when it already is the variant)."""
    if path.name.endswith(".fp16.onnx"):
        return path
    return path.with_name(path.name.removesuffix(".onnx") + ".fp16.onnx")


def float16_problem(card: dict, provider: str) -> str | None:
    """None when ``card`` holds a float16 parity check that passed on ``provider`` (a GPU
    provider); otherwise why the float16 file may not be chosen automatically there.

    The CPU provider computes a float16 graph's convolutions in float32, so a check there
    misses what half precision costs: true float16 on a GPU measured 1.7 HU from torch at 5 %
    dose and 3.1-3.7 HU at 2.5 %, over the 2 HU gate the CPU check had passed. Only a check
    run on the GPU provider that will run the file counts.
    """
    record = card.get("verification")
    if not isinstance(record, dict) or record.get("precision") != "float16":
        return "its card holds no float16 parity record"
    checked = str(record.get("provider", "an unknown provider"))
    if checked not in GPU_PROVIDERS.values():
        return f"not verified on a GPU (its parity was checked on {checked})"
    if checked != provider:
        return f"verified on {checked}, not on {provider}"
    try:
        passed = record.get("ok") is True and float(record["max_abs_diff_hu"]) <= float(
            record["tolerance_hu"]
        )
    except (KeyError, TypeError, ValueError):
        passed = False
    if not passed:
        return f"its parity record on {checked} did not pass"
    return None


def _float16_choice(choice: ModelChoice, half: Path) -> ModelChoice:
    """``choice`` with its float16 variant ``half`` as the file (same reason, own name)."""
    return ModelChoice(half, half.name.removesuffix(".onnx"), choice.why)


class Denoiser:
    """One model, one onnxruntime session, used for every slice a process denoises.

    ``model`` is a name in models/, a path, or a ``ModelChoice``; ``device`` is auto, cpu,
    cuda or tensorrt. Construction loads the file, picks the provider (one log line saying
    which and why), and warms up, so the first real slice is not the slow one.
    ``precision`` auto runs the model's float16 variant (``NAME.fp16.onnx``) when it lands on
    a GPU, one exists and its card holds a float16 parity check that passed on that same GPU
    provider (``float16_problem``); float32 otherwise, the log line saying why. float16 asks
    for the variant whatever its card says (opt-in), and so does a ``.fp16.onnx`` path;
    float32 runs the file as it is, never a variant. ``device`` may name a GPU: ``cuda:1``.
    """

    def __init__(
        self,
        model: str | Path | ModelChoice | None = None,
        device: str = "auto",
        batch: int = 4,
        threads: int | None = None,
        warm_up: tuple[int, int] | None = (512, 512),
        precision: str = "auto",
    ) -> None:
        if batch < 1:
            raise ValueError(f"--batch must be at least 1, got {batch}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}: use one of {PRECISIONS}")
        choice = (
            model
            if isinstance(model, ModelChoice)
            else resolve_model(None if model is None else str(model))
        )
        half = half_variant(choice.path)
        if precision == "float16":
            if not half.is_file():
                raise ModelError(f"{half}: no float16 variant of {choice.name}")
            choice = _float16_choice(choice, half)
        self._use(choice)
        self.batch = batch
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such model file")
        self.card = read_card(self.path)
        opened = self._open(device, threads)
        opened, warn = self._settle_precision(opened, precision, half, device, threads)
        self._bind(opened)
        reason = "; ".join(r for r in (self.why, self.precision_why) if r)
        (log.warning if warn else log.info)("model %s on %s (%s)", self.name, self.provider, reason)
        self.warm_up_seconds = 0.0
        if warm_up is not None:
            start = time.perf_counter()
            self.run(np.full((1, *warm_up), -1000.0, dtype=np.float32))
            self.warm_up_seconds = time.perf_counter() - start

    def _use(self, choice: ModelChoice) -> None:
        self.choice, self.path, self.name = choice, choice.path, choice.name

    def _settle_precision(
        self,
        opened: ProviderSession,
        precision: str,
        half: Path,
        device: str,
        threads: int | None,
    ) -> tuple[ProviderSession, bool]:
        """The session to keep once precision is decided (the float16 variant's when it may
        run here), and whether the log line is a warning; sets ``precision_why``."""
        self.precision_why = ""
        if opened.on_gpu and (precision == "float16" or self.path == half):
            problem = float16_problem(self.card, opened.provider)
            if problem:  # opt-in: run it, but say what was not checked
                self.precision_why = f"float16 by request; {self.path.name}: {problem}"
                return opened, True
        elif precision == "auto" and opened.on_gpu and half.is_file():
            try:
                problem = float16_problem(read_card(half), opened.provider)
            except ModelError as e:
                problem = f"its card cannot be read ({e})"
            if problem is None:
                # On a GPU the float16 variant, verified there, halves memory traffic.
                self._use(_float16_choice(self.choice, half))
                self.card = read_card(half)
                opened = self._open(device, threads)
                self.precision_why = (
                    f"float16: {half.name} passed its parity check on this provider"
                )
            else:
                self.precision_why = (
                    f"float32: {half.name} is opt-in only ({problem}); to run it anyway, "
                    f"give its path (--model {half}) or precision float16"
                )
        return opened, False

    def _bind(self, opened: ProviderSession) -> None:
        """Keep the session and what callers read about it."""
        self.session, self.provider, self.why = opened.session, opened.provider, opened.why
        self.on_gpu, self.device_id = opened.on_gpu, opened.device_id
        self.provider_options = dict(opened.options)  # what the provider was opened with
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def _open(self, device: str, threads: int | None) -> ProviderSession:
        try:
            return open_session(
                self.path, device, threads, cache=cache_root() / "tensorrt", max_batch=self.batch
            )
        except (ValueError, RuntimeError) as e:
            if isinstance(e, ValueError) or "was asked for" in str(e):
                raise
            raise ModelError(f"{self.path}: onnxruntime cannot load it ({e})") from None
        except Exception as e:  # corrupt protobuf, unsupported opset, ...
            raise ModelError(f"{self.path}: onnxruntime cannot load it ({e})") from None

    def run(self, hu: np.ndarray) -> np.ndarray:
        """Denoise one batch [N, H, W] (or one [H, W] slice) of HU; returns the same shape."""
        single = hu.ndim == 2
        x = np.ascontiguousarray(hu[None] if single else hu, dtype=np.float32)[:, None]
        if self.on_gpu:
            y = self._run_bound(x)
        else:
            y = self.session.run([self.output_name], {self.input_name: x})[0]
        return y[0, 0] if single else y[:, 0]

    def _run_bound(self, x: np.ndarray) -> np.ndarray:
        """GPU path with IO binding: one host->device copy in, one device->host copy out,
        the output allocated on the device by onnxruntime rather than staged through the host."""
        import onnxruntime as ort

        binding = self.session.io_binding()
        x_gpu = ort.OrtValue.ortvalue_from_numpy(x, "cuda", self.device_id)
        binding.bind_ortvalue_input(self.input_name, x_gpu)
        binding.bind_output(self.output_name, "cuda", self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def __call__(self, hu: np.ndarray) -> np.ndarray:
        """Denoise any number of slices [N, H, W], ``batch`` at a time."""
        if hu.ndim == 2:
            return self.run(hu)
        return np.concatenate(
            [self.run(hu[i : i + self.batch]) for i in range(0, len(hu), self.batch)]
        )

    def denoise(
        self,
        hu: np.ndarray,
        strength: float = DEFAULT_STRENGTH,
        guard_sigma_px: float | None = BIAS_GUARD_SIGMA_PX,
    ) -> np.ndarray:
        """What every caller that writes images gets: the network, then the CT-number bias
        guard, then ``strength`` percent of the noise removed (``strength.py``).

        ``run`` and ``__call__`` stay the bare network (the model contract that export
        verifies against torch); 0 % returns a copy of the input without running it.
        """
        strength = check_strength(strength)
        if strength == 0.0:
            return np.array(hu, dtype=np.float32, copy=True)
        return apply_strength(hu, self(hu), strength, guard_sigma_px)

    def stream(self, slices: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Denoise slices as they come (a series read lazily), ``batch`` at a time, in order."""
        pending: list[np.ndarray] = []
        for slice_hu in slices:
            pending.append(slice_hu)
            if len(pending) == self.batch:
                yield from self.run(np.stack(pending))
                pending = []
        if pending:
            yield from self.run(np.stack(pending))
