"""One prepared GPU check: everything this project does on a GPU, measured in one run.

Run it once on a machine with one NVIDIA GPU (written for an H100/H200), from the
repository root:

    python bench/gpu_check.py

It needs a CUDA build of PyTorch (any torch >= 2.2), numpy and networkx (torch brings it),
and the working tree; nothing has to be installed from the project. Optional, each named
in the results when absent: pydicom (real slices from ../shared/data/ct, else the synthetic
phantom), onnx (the export section) and onnxruntime-gpu (the export check through the
runtime and the runtime's speed; without it the export gate is applied to torch on the GPU).
No downloads. It finishes in under 8 minutes: a global budget (``--budget-s``, 420 s by
default) is shared between the sections, and what does not fit is skipped and says so.
Results: bench/results/gpu-check.md (tables) and gpu-check.json (every number).

Sections, each timed and guarded (one that fails records its error line and the rest run):

* search: the paper preset's super-net (C=8, L=12, D=4, P=3, 256 x 256, batch 2) on the GPU,
  ``search_step`` (weight + architecture step) under bf16 autocast: seconds per step and
  ``torch.cuda.max_memory_allocated`` with activation checkpointing on and off.
* retrain: the network derived from that super-net (K=5), and the shipped 5 % network at its
  own batch and patch size, training steps in bf16 autocast, float32 with TF32 and float32:
  seconds per step, images per second, peak memory and the loss's distance from float32's.
* nccl: ``torchrun --nproc_per_node=1 --standalone`` of this script's ``--nccl-worker``: NCCL
  init, an all_reduce and DDP steps of a small derived network; exit code and a JSON line.
* inference: the derived networks on 512 x 512 slices (the trained network kept in
  models/training, and the paper-size derived network with fresh weights) in float32 with
  TF32 off and on, bf16 autocast and float16 (``.half()``), batch 1 and 4: median time per
  slice (CUDA events) and the largest difference in HU from the CPU float32 output.
* export: the trained network through the project's export (``to_onnx`` of ``HUModel``,
  float32 and float16) and its parity gate (``export/verify.py``, ``TOLERANCE_HU``): through
  onnxruntime's CUDA provider when onnxruntime-gpu is present, and always torch on the GPU
  against torch on the CPU on the gate's own batches.
* runtime: with onnxruntime-gpu, the shipped models/manas-5pct.onnx and its .fp16.onnx
  through ``Denoiser`` on CUDA: time per 512 x 512 slice and the difference from the CPU.

``--cpu-smoke`` runs every section on the CPU in a tiny configuration (the ``tiny`` preset,
64 x 64 slices, 1-2 steps, gloo instead of NCCL) in about a minute, writing
gpu-check-cpu-smoke.md/json into ``--out``: what tests/test_gpu_check.py runs.
``--no-onnxruntime`` hides onnxruntime from this process, as on a machine without it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MANAS_SHARED_DATA", REPO.parent / "shared" / "data"))
SERIES = SHARED / "ct" / "lung-pet-ct-dx-a0002"
WORKER_TAG = "GPU_CHECK_WORKER_RESULT "
NOISE_HU = 40.0  # Gaussian noise added to the slices: a stand-in low-dose input
GIB, MIB = 2**30, 2**20
SECTIONS = ("search", "retrain", "nccl", "inference", "export", "runtime")
# Share of the budget each section may use, and the least time it needs to start at all
# (GPU run; the smoke run needs a tenth). Unused time passes on to the sections after it.
SHARES = {
    "search": 0.28,
    "retrain": 0.10,
    "nccl": 0.17,
    "inference": 0.25,
    "export": 0.12,
    "runtime": 0.08,
}
MIN_S = {"search": 30, "retrain": 10, "nccl": 20, "inference": 20, "export": 10, "runtime": 8}


@dataclass(frozen=True)
class Config:
    """Sizes and repetitions: the GPU check's, or the CPU smoke run's tiny ones."""

    preset: str  # PRESETS name for the super-net, the search and retrain steps
    batch: int | None  # None: the preset's
    size: int | None  # training image side; None: the preset's
    warm_steps: int
    timed_steps: int
    slice_size: int  # inference/export/runtime slices (512 on the GPU)
    n_slices: int
    infer_batches: tuple[int, ...]
    infer_warm: int
    infer_reps: int
    runtime_reps: int
    worker_steps: int
    worker_size: int  # image side of the DDP steps (a multiple of 4: the card's D is 3)
    parity_bound_hu: float  # only the smoke test asserts it; the GPU run reports
    min_scale: float


GPU = Config(
    preset="paper", batch=None, size=None, warm_steps=3, timed_steps=5, slice_size=512,
    n_slices=4, infer_batches=(1, 4), infer_warm=5, infer_reps=20, runtime_reps=10,
    worker_steps=3, worker_size=64, parity_bound_hu=float("inf"), min_scale=1.0,
)  # fmt: skip
SMOKE = Config(
    preset="tiny", batch=2, size=16, warm_steps=1, timed_steps=2, slice_size=32,
    n_slices=4, infer_batches=(1, 4), infer_warm=1, infer_reps=3, runtime_reps=2,
    worker_steps=2, worker_size=32, parity_bound_hu=5.0, min_scale=0.05,
)  # fmt: skip


# --------------------------------------------------------------------------- small helpers


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:400]


def ensure_project_importable() -> None:
    """The working tree's manas_infer, with export/ as manas_infer.export even when the
    project is not installed (pyproject maps it there; a bare copied tree does not)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import importlib.util

    import manas_infer

    if importlib.util.find_spec("manas_infer.export") is None:
        manas_infer.__path__.append(str(REPO))


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def time_steps(
    step: Callable[[], Any], cfg: Any, deadline: float, device, s: Any, label: str = ""
) -> tuple[list[float], list[Any]]:
    """``cfg.warm_steps`` untimed calls of ``step``, then up to ``cfg.timed_steps`` timed ones
    while ``deadline`` allows: (seconds per step, each step's losses as floats). The peak
    memory counter starts after the warm-up; losses are read after the timing."""
    for _ in range(cfg.warm_steps):
        step()
    sync(device)
    reset_peak(device)
    times, losses = [], []
    for _ in range(cfg.timed_steps):
        if times and time.perf_counter() > deadline:
            s.partial(f"{label}{len(times)} of {cfg.timed_steps} steps timed (time share used up)")
            break
        t = time.perf_counter()
        losses.append(step())
        sync(device)
        times.append(time.perf_counter() - t)

    def as_float(value: Any) -> float | None:  # a device tensor, a float or None
        return None if value is None else float(value)

    return times, [
        tuple(map(as_float, out)) if isinstance(out, tuple) else as_float(out) for out in losses
    ]


def step_times(times: list[float], cfg: Any) -> dict[str, float | int]:
    """The timing columns of a training-step row."""
    return {
        "s_per_step": round(statistics.median(times), 4),
        "s_per_step_mean": round(statistics.fmean(times), 4),
        "steps_timed": len(times),
        "warm_steps": cfg.warm_steps,
    }


def peak_mib(device) -> dict[str, float | None]:
    """Peak allocated and reserved MiB since the last reset; None on a CPU (no counter)."""
    import torch

    if device.type != "cuda":
        return {"peak_allocated_mib": None, "peak_reserved_mib": None}
    return {
        "peak_allocated_mib": round(torch.cuda.max_memory_allocated(device) / MIB, 1),
        "peak_reserved_mib": round(torch.cuda.max_memory_reserved(device) / MIB, 1),
    }


def free_memory(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def tf32_state() -> str:
    """How float32 convolutions and matmuls run now (new API when torch has it)."""
    import torch

    conv = getattr(torch.backends.cudnn, "conv", None)
    try:
        if conv is not None and hasattr(conv, "fp32_precision"):
            return (
                f"cudnn.conv.fp32_precision={conv.fp32_precision}, "
                f"cuda.matmul.fp32_precision={torch.backends.cuda.matmul.fp32_precision}"
            )
        return (
            f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
            f"cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}"
        )
    except RuntimeError as e:  # torch refuses to read flags set through both APIs
        return f"unreadable ({one_line(e)})"


@contextlib.contextmanager
def tf32(device, enabled: bool) -> Iterator[None]:
    """TF32 for float32 convolutions and matmuls on (``enabled``) or off, restored after.

    torch >= 2.9 has per-backend ``fp32_precision`` and refuses flags set through both it
    and the legacy ``allow_tf32``: only the new API is touched where it exists. On a CPU
    TF32 does not apply and nothing changes.
    """
    import torch

    if device.type != "cuda":
        yield
        return
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        matmul = torch.backends.cuda.matmul
        saved = (conv.fp32_precision, matmul.fp32_precision)
        value = "tf32" if enabled else "ieee"
        conv.fp32_precision, matmul.fp32_precision = value, value
        try:
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = saved
    else:
        saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def median_ms(seconds: list[float]) -> float | None:
    return round(statistics.median(seconds) * 1e3, 3) if seconds else None


def timed(fn: Callable[[], Any], device, warm: int, reps: int, deadline: float) -> list[float]:
    """Seconds of each of up to ``reps`` calls after ``warm`` untimed ones: CUDA events on a
    GPU, perf_counter on a CPU. Stops early (at least one timed call) past ``deadline``."""
    import torch

    for _ in range(warm):
        fn()
    sync(device)
    out: list[float] = []
    for _ in range(reps):
        if out and time.perf_counter() > deadline:
            break
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return out


# --------------------------------------------------------------------------- environment


def onnxruntime_state() -> dict[str, Any]:
    """Whether onnxruntime imports, its version and providers, and which builds are
    installed: never raises, since the GPU machine may have none."""
    from importlib import metadata

    state: dict[str, Any] = {"importable": False, "cuda": False}
    builds = {}
    for name in ("onnxruntime", "onnxruntime-gpu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            builds[name] = metadata.version(name)
    state["installed_builds"] = builds
    try:
        import onnxruntime as ort
    except Exception as e:  # ImportError, or a broken install's own error
        state["why"] = f"onnxruntime is not importable ({one_line(e)})"
        return state
    state.update(importable=True, version=ort.__version__)
    state["providers"] = list(ort.get_available_providers())
    state["cuda"] = "CUDAExecutionProvider" in state["providers"]
    if not state["cuda"]:
        state["why"] = "onnxruntime has no CUDAExecutionProvider (the CPU build)"
    return state


def environment(device, ort: dict[str, Any]) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "device": str(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "tf32_default": tf32_state(),
        "onnxruntime": ort,
    }
    try:
        import onnx

        env["onnx"] = onnx.__version__
    except Exception as e:
        env["onnx"] = None
        env["onnx_why"] = f"onnx is not importable ({one_line(e)})"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["device_name"] = props.name
        env["compute_capability"] = f"{props.major}.{props.minor}"
        env["memory_gib"] = round(props.total_memory / GIB, 1)
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
        with contextlib.suppress(Exception):
            version = torch.cuda.nccl.version()  # a tuple; an int in older torch
            env["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else version
    else:
        env["device_name"] = f"CPU ({platform.processor() or platform.machine()})"
    return env


# --------------------------------------------------------------------------- data and nets


def load_slices(n: int) -> tuple[Any, str, bool]:
    """``n`` 512 x 512 HU slices [n, H, W] float32 from the middle of lung-pet-ct-dx-a0002
    through the project's series reader; the synthetic phantom when that is not there."""
    import numpy as np

    why = f"{SERIES} is absent"
    if SERIES.is_dir():
        try:
            from manas_infer.data.series import scan

            report = scan(SERIES)
            if report.series:
                series = report.series[0]
                start = max(0, series.n_slices // 2 - n // 2)
                idx = [min(series.n_slices - 1, start + i) for i in range(n)]
                hu = np.stack([series.read_slice_hu(i) for i in idx]).astype(np.float32)
                return hu, f"{SERIES.name}, slices {idx[0]}..{idx[-1]} (real)", True
            why = f"{SERIES}: no readable series ({report.problems[:1]})"
        except Exception as e:  # no pydicom, unreadable files: the phantom still works
            why = f"{SERIES} could not be read ({one_line(e)})"
    from manas_infer.data.phantom import phantom_volume

    hu = phantom_volume(n, 512, z_start=0.2, z_stop=0.5).astype(np.float32)
    return hu, f"synthetic phantom, {n} slices ({why})", False


def resized(hu, size: int):
    """HU slices [n, H, W] -> torch [n, 1, size, size] (area averaging), float32 on the CPU."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(hu)[:, None].float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return x


def noisy(hu_tensor, seed: int = 0):
    """The slices plus ``NOISE_HU`` Gaussian noise (fixed seed)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return hu_tensor + NOISE_HU * torch.randn(hu_tensor.shape, generator=g)


def shipped_card() -> dict:
    """The shipped manas-5pct model's card."""
    return json.loads((REPO / "models" / "manas-5pct.card.json").read_text())


def card_genotype():
    """The genotype of the shipped manas-5pct model (its card)."""
    from manas_infer.train.genotype import Genotype

    return Genotype.from_json(json.dumps(shipped_card()["genotype"]))


def trained_network() -> tuple[Any, str]:
    """The shipped manas-5pct's network as kept in models/training (the run its card names),
    else the newest kept MANAS run, in eval mode on the CPU; the card's genotype with fresh
    weights when none loads. The shipped run first: a newer kept run may be a candidate that
    was not shipped, and its float16 need not pass the export gate."""
    import torch

    from manas_infer.train.genotype import Genotype
    from manas_infer.train.network import DerivedNetwork

    shipped = shipped_card().get("training", {}).get("run", "")
    found = sorted(
        REPO.glob("models/training/**/checkpoints/best.pt"),  # kept runs nest (tuned-v8/fine)
        key=lambda p: (p.parent.parent.name == shipped, p.parent.parent.name),
    )
    problems = []
    for path in reversed(found):
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            if ckpt.get("arch", "manas") != "manas":
                continue
            net = DerivedNetwork(Genotype.from_json(ckpt["genotype"]))
            net.load_state_dict(ckpt["state_dict"])
            return net.eval(), f"{path.relative_to(REPO)} (trained weights)"
        except Exception as e:
            problems.append(f"{path.name}: {one_line(e)}")
    torch.manual_seed(0)
    why = "; ".join(problems) or "no checkpoint in models/training"
    return DerivedNetwork(
        card_genotype()
    ).eval(), f"manas-5pct card genotype, fresh weights ({why})"


def paper_genotype(ctx: dict[str, Any], cfg: Config):
    """The genotype derived by the search section, else derived from a fresh super-net of
    the same preset (random alphas and betas, seed 0) on the CPU."""
    if "genotype" in ctx:
        return ctx["genotype"], ctx["genotype_from"]
    import torch

    from manas_infer.train.derive import derive_genotype
    from manas_infer.train.presets import PRESETS
    from manas_infer.train.supernet import SuperNet

    p = PRESETS[cfg.preset]
    torch.manual_seed(0)
    g = derive_genotype(SuperNet(p.C, p.L, p.D, p.P), p.K)
    ctx["genotype"], ctx["genotype_from"] = g, "derived from a fresh super-net (seed 0)"
    return ctx["genotype"], ctx["genotype_from"]


def baseline_network(arch: str) -> tuple[Any, str]:
    """RED-CNN or DnCNN with the 5 % weights kept in models/training/shipped-v3 (the
    networks compare-v8 scores), else fresh weights: timed beside MANAS, as the issue's
    "5x faster than RED-CNN" is measured on the CPU in bench/results/runtime.md."""
    import torch

    from manas_infer.train.baselines import build_baseline

    torch.manual_seed(3)
    net = build_baseline(arch)
    kept = REPO / "models" / "training" / "shipped-v3"
    for path in sorted(kept.glob(f"*-{arch}-5pct-*/checkpoints/best.pt")):
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(ckpt["state_dict"])
            return net.eval(), f"{path.relative_to(REPO)} (trained weights)"
        except Exception as e:
            return net.eval(), f"{arch}, fresh weights ({path.name}: {one_line(e)})"
    return net.eval(), f"{arch}, fresh weights (no kept 5 % run)"


def loss_function():
    """The project's training loss without the perceptual term (no VGG weights offline):
    MSE in float32, as ``DenoiseLoss(perceptual_weight=0)`` computes it."""
    try:
        from manas_infer.train.loss import DenoiseLoss

        return DenoiseLoss(perceptual_weight=0.0), "DenoiseLoss(perceptual_weight=0)"
    except Exception as e:
        import torch.nn.functional as F

        return (lambda a, b: F.mse_loss(a.float(), b.float())), f"F.mse_loss ({one_line(e)})"


# --------------------------------------------------------------------------- sections


@dataclass
class Section:
    name: str
    status: str = "ok"  # ok | partial | skipped | error
    reason: str | None = None
    seconds: float = 0.0
    cpu_s: float = 0.0  # this process's CPU time (the torchrun worker's not included)
    allotted_s: float = 0.0
    results: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def partial(self, why: str) -> None:
        if self.status == "ok":
            self.status = "partial"
        self.notes.append(why)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "name"}


class Check:
    """The run: device, configuration, budget, shared state and results."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.args = args
        self.smoke = bool(args.cpu_smoke)
        if self.smoke:  # one thread: a shared CPU's other jobs stall multi-threaded kernels
            torch.set_num_threads(1)
        self.cfg = SMOKE if self.smoke else GPU
        self.device = torch.device("cpu" if self.smoke else args.device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise SystemExit(
                    f"--device {args.device}: torch {torch.__version__} sees no CUDA GPU "
                    "(a CPU-only build, or no driver); --cpu-smoke runs the check on the CPU"
                )
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(self.device)
        self.ort_device = "cpu" if self.device.type == "cpu" else f"cuda:{self.device.index or 0}"
        self.started = time.perf_counter()
        self.budget = float(args.budget_s)
        self.ctx: dict[str, Any] = {}
        self.sections: dict[str, Section] = {}
        self.ort = onnxruntime_state()
        self.env = environment(self.device, self.ort)
        self.selected = set(args.sections.split(",")) if args.sections else set(SECTIONS)
        unknown = self.selected - set(SECTIONS)
        if unknown:
            raise SystemExit(f"--sections: unknown {sorted(unknown)}; known: {SECTIONS}")
        self.out = Path(args.out)
        stem = "gpu-check-cpu-smoke" if self.smoke else "gpu-check"
        self.json_path, self.md_path = self.out / f"{stem}.json", self.out / f"{stem}.md"
        hu, source, real = load_slices(self.cfg.n_slices)
        self.hu, self.data_source, self.real_data = hu, source, real

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.started)

    def run(self) -> int:
        print(f"gpu_check: {self.env['device_name']} ({self.device}); data: {self.data_source}")
        for i, name in enumerate(SECTIONS):
            section = Section(name)
            self.sections[name] = section
            if name not in self.selected:
                section.status, section.reason = "skipped", "not selected (--sections)"
                continue
            rest = sum(SHARES[n] for n in SECTIONS[i:] if n in self.selected)
            allotted = max(0.0, self.left()) * SHARES[name] / rest
            section.allotted_s = round(allotted, 1)
            needed = MIN_S[name] * self.cfg.min_scale
            if allotted < needed:
                section.status = "skipped"
                section.reason = (
                    f"budget: {allotted:.0f} s of {self.left():.0f} s left for it, needs about "
                    f"{needed:.0f} s (raise --budget-s)"
                )
                print(f"[{name}] skipped: {section.reason}")
                continue
            print(f"[{name}] up to {allotted:.0f} s ...", flush=True)
            start, cpu = time.perf_counter(), time.process_time()
            try:
                getattr(self, f"section_{name}")(section, start + allotted)
            except Exception as e:
                section.status, section.reason = "error", one_line(e)
                section.results["traceback_tail"] = traceback.format_exc().splitlines()[-4:]
            finally:
                section.seconds = round(time.perf_counter() - start, 2)
                section.cpu_s = round(time.process_time() - cpu, 2)
                free_memory(self.device)
            print(
                f"[{name}] {section.status} in {section.seconds:.1f} s"
                + (f": {section.reason}" if section.reason else ""),
                flush=True,
            )
            self.write()
        self.write()
        print(f"wrote {self.md_path} and {self.json_path}")
        return 1 if any(s.status == "error" for s in self.sections.values()) else 0

    # ------------------------------------------------------------------ search

    def section_search(self, s: Section, deadline: float) -> None:
        import torch

        from manas_infer.train.architect import Architect, search_step
        from manas_infer.train.derive import derive_genotype
        from manas_infer.train.presets import PRESETS
        from manas_infer.train.profile import count_parameters
        from manas_infer.train.supernet import SuperNet

        p, cfg, dev = PRESETS[self.cfg.preset], self.cfg, self.device
        batch, size = cfg.batch or p.batch, cfg.size or p.size
        loss_fn, loss_name = loss_function()
        hu = resized(self.hu, size)
        low, normal = normalize(noisy(hu)).to(dev), normalize(hu).to(dev)
        if len(hu) < 2 * batch:
            raise ValueError(f"need {2 * batch} slices for a train and an arch batch")
        train = (low[:batch], normal[:batch])
        arch = (low[batch : 2 * batch], normal[batch : 2 * batch])
        torch.manual_seed(0)
        model = SuperNet(p.C, p.L, p.D, p.P, checkpoint=True).to(dev)
        weights_opt = torch.optim.Adam(model.weights(), lr=p.lr)
        architect = Architect(model, lr=p.arch_lr)
        s.results.update(
            preset=p.name,
            C=p.C,
            L=p.L,
            D=p.D,
            P=p.P,
            K=p.K,
            size=size,
            batch=batch,
            parameters=count_parameters(model),
            loss=loss_name,
            autocast="bfloat16",
            step="architect.search_step: a weight step and an architecture step",
        )
        for ckpt in (True, False):
            row: dict[str, Any] = {"checkpointing": ckpt}
            s.rows.append(row)
            if time.perf_counter() > deadline:
                row["skipped"] = "section time share used up"
                s.partial(f"checkpointing={ckpt}: skipped, section time share used up")
                continue
            model.checkpoint = ckpt
            try:

                def step() -> tuple[Any, Any]:
                    return search_step(
                        model, weights_opt, architect, train, arch, loss_fn, autocast=True
                    )

                times, losses = time_steps(step, cfg, deadline, dev, s, f"checkpointing={ckpt}: ")
                row.update(
                    **step_times(times, cfg),
                    last_loss=losses[-1][0],
                    last_arch_loss=losses[-1][1],
                    losses_finite=all(math.isfinite(v) for pair in losses for v in pair),
                    **peak_mib(dev),
                )
            except Exception as e:  # out of memory among others: the other setting still runs
                row["error"] = one_line(e)
                s.partial(f"checkpointing={ckpt}: {one_line(e)}")
            free_memory(dev)
        peaks = [r.get("peak_allocated_mib") for r in s.rows]
        if all(peaks):
            s.results["peak_without_over_with_checkpointing"] = round(peaks[1] / peaks[0], 2)
        with contextlib.suppress(Exception):  # the presets' own estimate, where it has one
            from manas_infer.train import presets

            estimate = presets.search_activation_bytes(p.with_overrides(size=size, batch=batch))
            s.results["activations_estimate_mib (presets.search_activation_bytes)"] = round(
                estimate / MIB, 1
            )
        genotype = derive_genotype(model, p.K)
        self.ctx["genotype"] = genotype
        self.ctx["genotype_from"] = f"derived (K={p.K}) from the super-net after these steps"
        s.results["derived_edges"] = len(genotype.edges)
        if dev.type == "cuda":
            s.notes.append(
                "CPU estimate for comparison (bench/results/search.md): 21.4 GiB without "
                "checkpointing, 1.6 GiB with it, plus ~0.5 GiB of CUDA context"
            )
        else:
            s.notes.append("CPU: no peak-memory counter (reported on CUDA only)")

    # ------------------------------------------------------------------ retrain

    def section_retrain(self, s: Section, deadline: float) -> None:
        """Training steps of a derived network in each precision training could use: bf16
        autocast (what ``train/device_policy.py`` does on a GPU), float32 with TF32, plain
        float32. Two networks: the paper-size net derived by the search section at the
        preset's batch and size, and the shipped 5 % network at the batch and patch size it
        was trained with (``cpu-long``). Each row also says how far the step's loss, before
        the step, is from float32's on the same batch and weights: the price of the
        precision in what the optimiser sees."""
        import torch

        from manas_infer.train import device_policy
        from manas_infer.train.network import DerivedNetwork
        from manas_infer.train.presets import PRESETS
        from manas_infer.train.profile import count_flops, count_parameters

        p, cfg, dev = PRESETS[self.cfg.preset], self.cfg, self.device
        genotype, origin = paper_genotype(self.ctx, self.cfg)
        loss_fn, loss_name = loss_function()
        torch.manual_seed(1)
        shipped, shipped_from = trained_network()
        long = PRESETS["cpu-long"]
        nets = [
            ("paper-derived", DerivedNetwork(genotype), origin, cfg.batch or p.batch,
             cfg.size or p.size, p.lr),
            ("trained", shipped, shipped_from, cfg.batch or long.batch, cfg.size or long.size,
             long.lr),
        ]  # fmt: skip
        s.results.update(genotype=origin, loss=loss_name, networks=[])
        for label, net, source, batch, size, lr in nets:
            hu = resized(self.hu, size)
            reps = -(-batch // len(hu))  # the few real slices repeated up to the batch
            low = normalize(noisy(hu.repeat(reps, 1, 1, 1)))[:batch].to(dev)
            normal = normalize(hu.repeat(reps, 1, 1, 1))[:batch].to(dev)
            s.results["networks"].append({
                "network": label, "from": source, "parameters": count_parameters(net),
                "gflops_per_image": round(count_flops(net, size, size) / 1e9, 3),
                "batch": batch, "size": size,
            })  # fmt: skip
            for precision in ("bfloat16-autocast", "float32+tf32", "float32"):
                row: dict[str, Any] = {"network": label, "precision": precision,
                                       "batch": batch, "size": size}  # fmt: skip
                s.rows.append(row)
                if time.perf_counter() > deadline:
                    row["skipped"] = "section time share used up"
                    s.partial(f"{label} {precision}: skipped (time share used up)")
                    continue
                model = copy.deepcopy(net).to(dev).train()
                optimizer = torch.optim.Adam(model.parameters(), lr=lr)

                def flags(precision: str) -> contextlib.AbstractContextManager:
                    """TF32 on or off for the forward and the backward pass; bf16 autocast
                    keeps torch's defaults, as training does."""
                    if precision == "bfloat16-autocast":
                        return contextlib.nullcontext()
                    return tf32(dev, precision == "float32+tf32")

                def loss_in(precision: str, model=model, low=low, normal=normal) -> Any:
                    # The training loop's own autocast context (train/device_policy.py).
                    with device_policy.autocast(dev.type, precision == "bfloat16-autocast"):
                        return loss_fn(model(low), normal)

                def step(precision=precision, model=model, optimizer=optimizer) -> float:
                    optimizer.zero_grad(set_to_none=True)
                    with flags(precision):
                        loss = loss_in(precision, model)
                        loss.backward()
                    optimizer.step()
                    return float(loss.detach())

                try:
                    with torch.no_grad():
                        with flags(precision):
                            first = float(loss_in(precision))
                        with flags("float32"):
                            exact = float(loss_in("float32"))
                    times, losses = time_steps(step, cfg, deadline, dev, s, f"{label} ")
                    row.update(
                        **step_times(times, cfg),
                        images_per_s=round(batch / statistics.median(times), 1),
                        loss_vs_float32=round(abs(first - exact) / exact, 5) if exact else None,
                        last_loss=losses[-1],
                        losses_finite=all(math.isfinite(v) for v in losses),
                        **peak_mib(dev),
                    )
                except Exception as e:
                    row["error"] = one_line(e)
                    s.partial(f"{label} {precision}: {one_line(e)}")
                del model, optimizer
                free_memory(dev)
        s.notes.append(
            "loss vs float32: |loss - float32 loss| / float32 loss on the same batch and "
            "weights before any step; images / s counts the training images of one step"
        )

    # ------------------------------------------------------------------ nccl

    def section_nccl(self, s: Section, deadline: float) -> None:
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        # 120 s on a GPU machine; the smoke run may take its whole share (a busy CPU can
        # spend minutes importing torch twice, for torchrun and for the worker).
        left = deadline - time.perf_counter()
        timeout = max(10.0, left if self.smoke else min(120.0, left))
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=1",
            "--standalone",
            str(Path(__file__).resolve().relative_to(REPO)),  # run from REPO
            "--nccl-worker",
            "--device",
            self.device.type,
            "--worker-steps",
            str(self.cfg.worker_steps),
            "--worker-size",
            str(self.cfg.worker_size),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        if self.device.type == "cuda" and self.device.index is not None:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            ids = visible.split(",") if visible else [str(i) for i in range(self.device.index + 1)]
            env["CUDA_VISIBLE_DEVICES"] = ids[self.device.index]
        s.results.update(backend=backend, command=" ".join(cmd[1:]), timeout_s=round(timeout))
        if backend == "gloo":
            s.notes.append("CPU smoke: gloo instead of NCCL (same worker, same steps)")
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
            )
        except subprocess.TimeoutExpired:
            s.status, s.reason = "error", f"torchrun timed out after {timeout:.0f} s"
            return
        s.results["exit_code"] = proc.returncode
        s.results["wall_s"] = round(time.perf_counter() - start, 2)
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith(WORKER_TAG)]
        if found:
            s.results["worker"] = json.loads(found[-1][len(WORKER_TAG) :])
        worker = s.results.get("worker", {})
        if proc.returncode != 0 or not worker.get("ok"):
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            errors = [ln for ln in lines if "Error" in ln or "error" in ln]
            s.status = "error"
            s.reason = worker.get("error") or (errors or lines or ["no output"])[-1][:400]
            s.reason = f"exit {proc.returncode}: {s.reason}"

    # ------------------------------------------------------------------ inference

    def section_inference(self, s: Section, deadline: float) -> None:
        import torch

        from manas_infer.hu import denormalize
        from manas_infer.train.network import DerivedNetwork
        from manas_infer.train.profile import count_flops, count_parameters

        cfg, dev = self.cfg, self.device
        hu = noisy(resized(self.hu, cfg.slice_size))
        x_cpu = normalize(hu)
        trained, trained_from = trained_network()
        genotype, origin = paper_genotype(self.ctx, self.cfg)
        torch.manual_seed(2)
        paper = DerivedNetwork(genotype).eval()
        nets = [
            ("trained", trained, trained_from),
            (
                "paper-derived",
                paper,
                f"{origin}; fresh weights: speed, and parity of an untrained net",
            ),
            ("RED-CNN", *baseline_network("redcnn")),
            ("DnCNN", *baseline_network("dncnn")),
        ]
        s.results.update(
            slices=f"{len(hu)} slices {cfg.slice_size}x{cfg.slice_size}, + {NOISE_HU:g} HU noise",
            timing=f"median of up to {cfg.infer_reps} calls after {cfg.infer_warm} warm-up "
            + ("(CUDA events), input already on the GPU" if dev.type == "cuda" else "(CPU)"),
            reference="the same network in float32 on the CPU, same slices",
        )
        precisions = ("float32", "float32+tf32", "bfloat16-autocast", "float16")
        for label, net, source in nets:
            info = {
                "network": label,
                "from": source,
                "parameters": count_parameters(net),
                "gflops_per_slice": round(
                    count_flops(net, cfg.slice_size, cfg.slice_size) / 1e9, 3
                ),
            }
            s.results.setdefault("networks", []).append(info)
            with torch.inference_mode():
                t = time.perf_counter()
                reference = denormalize(net.float()(x_cpu))
                info["cpu_float32_s_per_slice"] = round((time.perf_counter() - t) / len(hu), 4)
            net_dev = copy.deepcopy(net).to(dev).eval()
            half = copy.deepcopy(net).half().to(dev).eval()
            x_dev = x_cpu.to(dev)
            for precision in precisions:
                run = make_runner(net_dev, half, dev, precision)
                for b in cfg.infer_batches:
                    row: dict[str, Any] = {"network": label, "precision": precision, "batch": b}
                    s.rows.append(row)
                    if time.perf_counter() > deadline:
                        row["skipped"] = "section time share used up"
                        s.partial(f"{label} {precision} batch {b}: skipped (time share used up)")
                        continue
                    try:
                        with torch.inference_mode():
                            got = torch.cat(
                                [run(x_dev[i : i + b]).float().cpu() for i in range(0, len(hu), b)]
                            )
                            diff = (denormalize(got) - reference).abs()
                            sync(dev)
                            reset_peak(dev)
                            xb = x_dev[:b]
                            times = timed(
                                lambda xb=xb, run=run: run(xb),
                                dev,
                                cfg.infer_warm,
                                cfg.infer_reps,
                                deadline,
                            )
                        ms = median_ms(times)
                        row.update(
                            ms_per_slice=round(ms / b, 3),
                            ms_per_batch=ms,
                            slices_per_s=round(1e3 * b / ms, 1),
                            calls_timed=len(times),
                            max_abs_diff_hu=round(float(diff.max()), 4),
                            mean_abs_diff_hu=round(float(diff.mean()), 5),
                            finite=bool(torch.isfinite(got).all()),
                            **peak_mib(dev),
                        )
                    except Exception as e:
                        row["error"] = one_line(e)
                        s.partial(f"{label} {precision} batch {b}: {one_line(e)}")
            del net_dev, half, x_dev
            free_memory(dev)
        if dev.type != "cuda":
            s.notes.append("CPU smoke: TF32 does not apply on a CPU (float32+tf32 = float32)")
        s.notes.append(
            "float16 is model.half() with the residual added to the float32 input, as the "
            "exported float16 variant computes it (export/graph.py); bfloat16 is torch.autocast"
        )

    # ------------------------------------------------------------------ export

    def section_export(self, s: Section, deadline: float) -> None:
        import torch

        try:
            import onnx  # noqa: F401
        except Exception as e:
            s.status = "skipped"
            s.reason = f"onnx is not importable ({one_line(e)}): no ONNX export to check"
            return
        from manas_infer.export.graph import HUModel
        from manas_infer.export.onnx_file import set_metadata, to_onnx
        from manas_infer.export.verify import TOLERANCE_HU, check_batches

        dev = self.device
        net, source = trained_network()
        m = net.size_multiple
        hu = noisy(resized(self.hu, self.cfg.slice_size))[:3, 0].numpy()
        checked_on = f"{len(hu)} slices of {self.data_source} + {NOISE_HU:g} HU noise"
        reference = HUModel(copy.deepcopy(net), m).float().eval()
        s.results.update(network=source, checked_on=checked_on, tolerance_hu=TOLERANCE_HU)
        bodies = {"float32": torch.float32, "float16": torch.float16}
        use_ort = self.ort["importable"] and (dev.type == "cpu" or self.ort["cuda"])
        if not use_ort:
            s.notes.append(
                f"{self.ort.get('why', 'onnxruntime unavailable')}: the ONNX files were "
                "exported and checked (onnx.checker) but not run; the gate's arithmetic was "
                "applied to torch on the device instead"
            )
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            for precision, body in bodies.items():
                if time.perf_counter() > deadline:
                    s.partial(f"{precision}: skipped (section time share used up)")
                    continue
                path = Path(tmp) / f"check{'.fp16' if precision == 'float16' else ''}.onnx"
                row: dict[str, Any] = {"engine": "export", "precision": precision}
                s.rows.append(row)
                try:
                    t = time.perf_counter()
                    proto = to_onnx(HUModel(copy.deepcopy(net), m, body))
                    set_metadata(proto, {"name": path.stem, "precision": precision})
                    path.write_bytes(proto.SerializeToString())
                    row.update(
                        export_s=round(time.perf_counter() - t, 2),
                        bytes=path.stat().st_size,
                        onnx_checker="passed",
                    )
                except Exception as e:
                    row["error"] = one_line(e)
                    s.partial(f"{precision} export: {one_line(e)}")
                    continue
                if use_ort:
                    s.rows.append(self._ort_gate(reference, path, hu, precision, checked_on))
                s.rows.append(
                    self._torch_gate(reference, net, m, hu, precision, TOLERANCE_HU, check_batches)
                )
        for row in s.rows:
            if row.get("error") and row["engine"] != "export":  # export's own said so
                s.partial(f"{row['engine']} {row['precision']}: {row['error']}")
            elif row.get("ok") is False and dev.type == "cuda":
                s.notes.append(
                    f"{row['engine']} {row['precision']}: {row['max_abs_diff_hu']} HU is over "
                    f"the {row['tolerance_hu']} HU gate: export would refuse this file"
                )

    def _ort_gate(self, reference, path: Path, hu, precision: str, checked_on: str) -> dict:
        """The project's own check (export/verify.py ``compare``) through the runtime."""
        row: dict[str, Any] = {
            "engine": "onnxruntime (export/verify.compare)",
            "precision": precision,
            "device": self.ort_device,
        }
        try:
            from manas_infer.export.verify import compare

            t = time.perf_counter()
            parity = compare(reference, path, hu, precision, checked_on, self.ort_device)
            row.update(
                seconds=round(time.perf_counter() - t, 2),
                provider=parity.provider,
                on_gpu=getattr(parity, "on_gpu", None),
                max_abs_diff_hu=round(parity.max_abs_diff_hu, 4),
                mean_abs_diff_hu=round(parity.mean_abs_diff_hu, 5),
                tolerance_hu=parity.tolerance_hu,
                ok=parity.ok,
            )
        except Exception as e:
            row["error"] = one_line(e)
        return row

    def _torch_gate(self, reference, net, m, hu, precision, tolerance, check_batches) -> dict:
        """The gate's arithmetic with torch on the device instead of onnxruntime: the same
        batches (``check_batches``: whole slices in a pair and an odd-sized crop), float32
        with TF32 off (what the runtime's CUDA sessions run), against float32 on the CPU."""
        import torch

        from manas_infer.export.graph import HUModel

        dev = self.device
        row: dict[str, Any] = {
            "engine": f"torch on {dev.type} (gate arithmetic)",
            "precision": precision,
            "device": str(dev),
        }
        try:
            body = torch.float16 if precision == "float16" else torch.float32
            model = HUModel(copy.deepcopy(net), m, body).to(dev).eval()
            worst, total, count = 0.0, 0.0, 0
            for batch in check_batches(hu.astype("float32")):
                x = torch.from_numpy(batch)[:, None]
                with torch.inference_mode(), tf32(dev, False):
                    expected = reference(x)[:, 0]
                    got = model(x.to(dev))[:, 0].float().cpu()
                diff = (got.double() - expected.double()).abs()
                worst = max(worst, float(diff.max()))
                total += float(diff.sum())
                count += diff.numel()
            row.update(
                max_abs_diff_hu=round(worst, 4),
                mean_abs_diff_hu=round(total / count, 5),
                tolerance_hu=tolerance[precision],
                ok=worst <= tolerance[precision],
            )
        except Exception as e:
            row["error"] = one_line(e)
        return row

    # ------------------------------------------------------------------ runtime

    def section_runtime(self, s: Section, deadline: float) -> None:
        import numpy as np

        if not self.ort["importable"]:
            s.status, s.reason = "skipped", self.ort["why"]
            return
        if self.device.type == "cuda" and not self.ort["cuda"]:
            s.status, s.reason = "skipped", f"{self.ort['why']}: no GPU runtime to time"
            return
        from manas_infer.runtime import Denoiser

        cfg = self.cfg
        hu = noisy(resized(self.hu, cfg.slice_size))[:, 0].numpy().astype(np.float32)
        files = [
            ("float32", REPO / "models" / "manas-5pct.onnx"),
            ("float16", REPO / "models" / "manas-5pct.fp16.onnx"),
        ]
        warm = None if self.smoke else (cfg.slice_size, cfg.slice_size)
        s.results.update(
            slices=f"{len(hu)} slices {cfg.slice_size}x{cfg.slice_size}, + {NOISE_HU:g} HU noise",
            timing=f"median of up to {cfg.runtime_reps} Denoiser.run calls after one warm-up, "
            "host arrays in and out (the product's path, IO binding on a GPU)",
            reference="models/manas-5pct.onnx on the CPU provider, same slices",
        )
        cpu = Denoiser(files[0][1], device="cpu", warm_up=None, precision="float32")
        reference = cpu.run(hu).astype(np.float64)
        for precision, path in files:
            if not path.is_file():
                s.partial(f"{path.name}: not in models/")
                continue
            try:
                den = Denoiser(
                    path,
                    device=self.ort_device,
                    batch=max(cfg.infer_batches),
                    warm_up=warm,
                    precision=precision,
                )
            except Exception as e:
                s.rows.append({"file": path.name, "precision": precision, "error": one_line(e)})
                s.partial(f"{path.name}: {one_line(e)}")
                continue
            got = den.run(hu).astype(np.float64)
            diff = np.abs(got - reference)
            for b in cfg.infer_batches:
                row: dict[str, Any] = {
                    "file": path.name,
                    "precision": precision,
                    "batch": b,
                    "provider": den.provider,
                    "on_gpu": den.on_gpu,
                    "max_abs_diff_hu": round(float(diff.max()), 4),
                    "mean_abs_diff_hu": round(float(diff.mean()), 5),
                }
                s.rows.append(row)
                if time.perf_counter() > deadline:
                    row["skipped"] = "section time share used up"
                    s.partial(f"{path.name} batch {b}: skipped (time share used up)")
                    continue
                batch = hu[:b]
                den.run(batch)
                times = []
                for _ in range(cfg.runtime_reps):
                    if times and time.perf_counter() > deadline:
                        break
                    t = time.perf_counter()
                    den.run(batch)
                    times.append(time.perf_counter() - t)
                ms = median_ms(times)
                row.update(
                    ms_per_slice=round(ms / b, 3),
                    ms_per_batch=ms,
                    slices_per_s=round(1e3 * b / ms, 1),
                    calls_timed=len(times),
                )
            s.results.setdefault("why", {})[path.name] = "; ".join(
                r for r in (den.why, getattr(den, "precision_why", "")) if r
            )

    # ------------------------------------------------------------------ output

    def to_dict(self) -> dict[str, Any]:
        return {
            "script": "bench/gpu_check.py",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "mode": "cpu-smoke" if self.smoke else "gpu",
            "written": datetime.now().astimezone().isoformat(timespec="seconds"),
            "budget_s": self.budget,
            "elapsed_s": round(time.perf_counter() - self.started, 1),
            "data": {"source": self.data_source, "real": self.real_data, "noise_hu": NOISE_HU},
            "config": self.cfg.__dict__,
            "environment": self.env,
            "sections": {n: sec.to_dict() for n, sec in self.sections.items()},
        }

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        self.json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
        self.md_path.write_text(render_markdown(data))


def make_runner(net, half, device, precision: str) -> Callable:
    """Normalised input -> the network's output in ``precision``: float32 (TF32 off),
    float32+tf32, bfloat16-autocast, or float16 (``half`` = the network after ``.half()``,
    its residual added to the float32 input, as the exported float16 variant does)."""
    import torch

    def run(x):
        if precision == "float16":
            if hasattr(half, "residual"):
                return x + half.residual(x.half()).float()
            return half(x.half()).float()
        if precision == "bfloat16-autocast":
            with torch.autocast(device.type, torch.bfloat16):
                return net(x).float()
        with tf32(device, precision == "float32+tf32"):
            return net(x)

    return run


def normalize(hu_tensor):
    from manas_infer.hu import normalize as to_unit

    return to_unit(hu_tensor).float()


# --------------------------------------------------------------------------- markdown


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> list[str]:
    if not rows:
        return []
    out = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = [_cell(r.get(k)) for k, _ in columns]
        problem = r.get("error") or r.get("skipped")
        if problem:
            cells[-1] = f"{'error' if r.get('error') else 'skipped'}: {problem}"
        out.append("| " + " | ".join(cells) + " |")
    return out


_TRAINING_COLUMNS = [  # the search and the retraining report the same step figures
    ("checkpointing", "checkpointing"),
    ("s_per_step", "s / step (median)"),
    ("steps_timed", "steps"),
    ("peak_allocated_mib", "peak allocated MiB"),
    ("peak_reserved_mib", "peak reserved MiB"),
    ("last_loss", "loss"),
    ("losses_finite", "finite"),
]
COLUMNS = {
    "search": _TRAINING_COLUMNS,
    "retrain": [
        ("network", "network"),
        ("precision", "precision"),
        ("batch", "batch"),
        ("size", "size"),
        ("s_per_step", "s / step (median)"),
        ("images_per_s", "images / s"),
        ("loss_vs_float32", "loss vs float32"),
        ("peak_allocated_mib", "peak allocated MiB"),
        ("last_loss", "loss"),
        ("losses_finite", "finite"),
    ],
    "inference": [
        ("network", "network"),
        ("precision", "precision"),
        ("batch", "batch"),
        ("ms_per_slice", "ms / slice"),
        ("slices_per_s", "slices / s"),
        ("max_abs_diff_hu", "max abs diff HU vs CPU fp32"),
        ("mean_abs_diff_hu", "mean abs diff HU"),
        ("peak_allocated_mib", "peak MiB"),
        ("finite", "finite"),
    ],
    "export": [
        ("engine", "engine"),
        ("precision", "precision"),
        ("provider", "provider"),
        ("export_s", "export s"),
        ("bytes", "bytes"),
        ("max_abs_diff_hu", "max abs diff HU"),
        ("mean_abs_diff_hu", "mean abs diff HU"),
        ("tolerance_hu", "gate HU"),
        ("ok", "ok"),
    ],
    "runtime": [
        ("file", "file"),
        ("provider", "provider"),
        ("batch", "batch"),
        ("ms_per_slice", "ms / slice"),
        ("slices_per_s", "slices / s"),
        ("max_abs_diff_hu", "max abs diff HU vs CPU fp32"),
        ("mean_abs_diff_hu", "mean abs diff HU"),
    ],
}


def render_markdown(d: dict[str, Any]) -> str:
    env, ort = d["environment"], d["environment"]["onnxruntime"]
    smoke = d["mode"] == "cpu-smoke"
    title = "GPU check" + (" (CPU smoke run: not GPU numbers)" if smoke else "")
    ort_line = (
        f"onnxruntime {ort.get('version')} (providers: {', '.join(ort.get('providers', []))})"
        if ort.get("importable")
        else f"onnxruntime: absent ({ort.get('why')})"
    )
    lines = [
        f"# {title}",
        "",
        f"Written by `bench/gpu_check.py` on {d['written']} in {d['elapsed_s']} s "
        f"(budget {d['budget_s']:g} s). Command: `{d['command']}`.",
        "",
        f"- Device: **{env.get('device_name')}** ({env['device']}"
        + (
            f", {env.get('memory_gib')} GiB, compute {env.get('compute_capability')}"
            if env.get("memory_gib")
            else ""
        )
        + f"); host {env['host']}",
        f"- torch {env['torch']}, CUDA {env.get('cuda_runtime')}, cuDNN {env.get('cudnn')}"
        + (f", NCCL {env['nccl']}" if env.get("nccl") else "")
        + f", Python {env['python']}; TF32 by default: {env['tf32_default']}",
        f"- onnx {env.get('onnx') or 'absent'}; {ort_line}",
        f"- Data: {d['data']['source']}; inputs carry {d['data']['noise_hu']:g} HU Gaussian "
        "noise (a stand-in low-dose input: outputs are compared and timed, not scored)",
        "",
        "| section | status | seconds | CPU s | allotted s | note |",
        "|---|---|---|---|---|---|",
    ]
    for name, sec in d["sections"].items():
        note = sec.get("reason") or "; ".join(sec.get("notes", [])[:1]) or ""
        lines.append(
            f"| {name} | {sec['status']} | {sec['seconds']} | {sec['cpu_s']} | "
            f"{sec['allotted_s']} | {note} |"
        )
    for name, sec in d["sections"].items():
        lines += ["", f"## {name}: {sec['status']}", ""]
        if sec.get("reason"):
            lines += [f"{sec['status'].capitalize()}: {sec['reason']}", ""]
        results = {
            k: v
            for k, v in sec.get("results", {}).items()
            if k not in ("networks", "worker", "why", "traceback_tail")
        }
        if results:
            lines += [f"- {k}: {_cell(v)}" for k, v in results.items()] + [""]
        for net in sec.get("results", {}).get("networks", []):
            if "gflops_per_slice" in net:  # inference: one 512 x 512 slice
                cost = (
                    f"{net['gflops_per_slice']} GFLOPs per slice, CPU float32 "
                    f"{net['cpu_float32_s_per_slice']} s per slice"
                )
            else:  # retrain: one training image
                cost = (
                    f"{net['gflops_per_image']} GFLOPs per {net['size']} px image, "
                    f"batch {net['batch']}"
                )
            lines.append(
                f"- network **{net['network']}**: {net['from']}; {net['parameters']:,} "
                f"parameters, {cost}"
            )
        worker = sec.get("results", {}).get("worker")
        if worker:
            lines += [f"- worker: `{json.dumps(worker)}`"]
        for file, why in sec.get("results", {}).get("why", {}).items():
            lines.append(f"- {file}: {why}")
        if lines[-1] != "":
            lines.append("")
        if name in COLUMNS:
            lines += _table(sec.get("rows", []), COLUMNS[name])
        if sec.get("notes"):
            lines += ([""] if lines[-1] else []) + [f"- {n}" for n in sec["notes"]]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- worker


def nccl_worker(device_kind: str, steps: int, size: int) -> int:
    """One torchrun process: init the process group (NCCL on CUDA, gloo on a CPU), an
    all_reduce, a few DDP steps of a small derived network under bf16 autocast; prints one
    JSON line tagged ``WORKER_TAG``."""
    result: dict[str, Any] = {"ok": False}
    try:
        import torch
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        world = int(os.environ["WORLD_SIZE"])
        device = torch.device("cpu")
        if device_kind == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        t = time.perf_counter()
        dist.init_process_group(backend)
        result.update(
            rank=rank,
            world=world,
            backend=dist.get_backend(),
            init_s=round(time.perf_counter() - t, 3),
        )
        t = time.perf_counter()
        value = torch.full((1 << 20,), float(rank + 1), device=device)
        dist.all_reduce(value)
        expected = world * (world + 1) / 2
        result.update(
            all_reduce_ok=bool(torch.all(value == expected)),
            all_reduce_s=round(time.perf_counter() - t, 3),
        )
        from manas_infer.train.network import DerivedNetwork

        torch.manual_seed(0)
        model = DerivedNetwork(card_genotype()).to(device)
        ddp = DistributedDataParallel(model, device_ids=[local] if device.type == "cuda" else None)
        optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-3)
        x = torch.rand(2, 1, size, size, device=device)
        before = [p.detach().clone() for p in model.parameters()]
        times, losses = [], []
        for _ in range(steps):
            t = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, torch.bfloat16):
                loss = torch.nn.functional.mse_loss(ddp(x + 0.05).float(), x)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            times.append(time.perf_counter() - t)
        moved = any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
        result.update(
            ddp_steps=steps,
            ddp_first_step_s=round(times[0], 3),
            ddp_step_s=round(statistics.median(times[1:] or times), 4),
            ddp_losses_finite=all(math.isfinite(v) for v in losses),
            ddp_weights_moved=moved,
        )
        dist.barrier()
        dist.destroy_process_group()
        result["ok"] = bool(result["all_reduce_ok"] and result["ddp_losses_finite"] and moved)
    except Exception as e:
        result["error"] = one_line(e)
    print(WORKER_TAG + json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="time for all sections together (default 420)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results",
        help="folder for gpu-check.md/json (default bench/results)",
    )
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N (default cuda)")
    parser.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="every section on the CPU, tiny sizes: a test of the script",
    )
    parser.add_argument(
        "--sections",
        default="",
        help=f"comma-separated subset of {','.join(SECTIONS)} (default all)",
    )
    parser.add_argument(
        "--no-onnxruntime",
        action="store_true",
        help="hide onnxruntime from this process, as on a machine without it",
    )
    parser.add_argument("--nccl-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-steps", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--worker-size", type=int, default=64, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.no_onnxruntime:
        sys.modules["onnxruntime"] = None  # type: ignore[assignment]  # import now fails
    try:
        import numpy  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        print(f"gpu_check needs torch and numpy: {e}", file=sys.stderr)
        return 2
    ensure_project_importable()
    if args.nccl_worker:
        return nccl_worker(args.device, args.worker_steps, args.worker_size)
    return Check(args).run()


if __name__ == "__main__":
    sys.exit(main())
