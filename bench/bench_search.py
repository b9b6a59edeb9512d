"""Cost of a MANAS search step on this machine, with and without activation checkpointing.

Not a test: run it by hand, ``.venv/bin/python bench/bench_search.py`` (10-15 minutes on a
2-core machine; ``--paper-full`` adds the paper preset at 128 x 128 and one real checkpointed
step at 256 x 256, 5-20 minutes more depending on what else runs). It writes
bench/results/search.json and search.md and prints the tables; ``--report-only`` rewrites
search.md from search.json.

What a "search step" is: ``architect.search_step`` with the weight optimiser
``Adam(model.weights(), lr=1e-4)``, ``Architect(model)`` and ``F.mse_loss``, i.e. a weight
forward/backward/update on one batch and an architecture forward/backward/update on another.

Memory, three ways, because none alone answers "does it fit a GPU":

* peak RSS - RSS before building the model: what this CPU process really used, including the
  CPU allocator's caching and oneDNN scratch buffers; not a GPU figure.
* saved-tensor MiB: bytes autograd keeps for backward (unique storages seen by
  ``torch.autograd.graph.saved_tensors_hooks`` during one forward; with checkpointing the
  hook sees only what is saved outside the checkpointed blocks, so the block outputs the
  checkpoints hold are added). The classic activation-memory estimate; it misses the peak
  while a checkpointed block is recomputed, gradients and temporaries.
* peak tensor MiB: the high-water mark of live tensor bytes over the step (every tensor
  allocation and free, from the profiler's memory events), plus what was live at its start
  (parameters, gradients, Adam state, the batches). This is what
  ``torch.cuda.max_memory_allocated`` would report for the same step on a GPU, give or take
  cuDNN workspaces; add about 0.5 GiB of CUDA context for the whole process.

Each configuration runs in a fresh subprocess so peak RSS belongs to it alone; the step is
timed before the instrumented step so the profiler's bookkeeping stays out of RSS and times.
The paper preset without checkpointing needs more memory than this machine has at
256 x 256, so it runs at 32 and 64 (and 128) pixels and is extrapolated: activation memory is
exactly linear in the pixel count (every tensor is per-pixel), and a line through the
measured points gives 256 x 256.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from manas_infer.train.architect import Architect, search_step
from manas_infer.train.derive import derive_genotype
from manas_infer.train.network import DerivedNetwork
from manas_infer.train.profile import count_flops, count_parameters
from manas_infer.train.supernet import SuperNet, depth_width

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MIB = 2**20
PAPER = {"C": 8, "L": 12, "D": 4}
SMALL = {"C": 8, "L": 4, "D": 3}
PAPER_SIZE, PAPER_BATCH = 256, 2


# --------------------------------------------------------------------------- worker side


def current_rss_mib() -> float:
    """Resident set size now (VmRSS), MiB; ru_maxrss only gives the high-water mark."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def live_bytes(model: SuperNet, optimizers: list[torch.optim.Optimizer], *tensors: Any) -> int:
    """Bytes of parameters, their gradients, optimiser state and the given tensors."""
    total = 0
    for p in model.parameters():
        total += p.nbytes + (p.grad.nbytes if p.grad is not None else 0)
    for opt in optimizers:
        for state in opt.state.values():
            total += sum(v.nbytes for v in state.values() if torch.is_tensor(v))
    for batch in tensors:
        total += sum(t.nbytes for t in batch)
    return total


def block_output_bytes(model: SuperNet, batch: int, size: int) -> int:
    """What the checkpoints hold between forward and backward: every block's output."""
    return sum(
        batch * depth_width(model.C, d) * (size // 2 ** (d - 1)) ** 2 * 4 for _, d in model.grid
    )


class SavedTensors:
    """Bytes autograd saves for backward, per forward pass, parameters excluded.

    Keyed by storage (``_cdata``, the C++ storage's address: unique while alive, and every
    saved tensor is alive until backward; it works on the meta device too), so views of one
    buffer count once. Weights are not activations: their storages are skipped.
    """

    def __init__(self, model: SuperNet) -> None:
        self.params = {p.untyped_storage()._cdata for p in model.parameters()}
        self.passes: list[dict[int, int]] = [{}]
        self.handle = model.register_forward_pre_hook(lambda *_: self.passes.append({}))

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in self.params:
            self.passes[-1][storage._cdata] = storage.nbytes()
        return t

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    def total(self) -> int:
        """The largest pass (a search step has two: weights, then architecture)."""
        self.handle.remove()
        return max(sum(p.values()) for p in self.passes)


def instrumented_step(model: SuperNet, weight_opt, architect, train, arch, size: int) -> dict:
    """One more search step under the profiler's memory tracking and saved-tensor hooks."""
    from torch.profiler import ProfilerActivity, profile

    saved = SavedTensors(model)
    # search_step starts by dropping the gradients; do it before profiling, which records no
    # frees of blocks allocated before it started (the peak would count them twice).
    weight_opt.zero_grad(set_to_none=True)
    architect.optimizer.zero_grad(set_to_none=True)
    start = live_bytes(model, [weight_opt, architect.optimizer], train, arch)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, saved.hooks():
        search_step(model, weight_opt, architect, train, arch, F.mse_loss)
    outside = saved.total()
    held = block_output_bytes(model, train[0].shape[0], size) if model.checkpoint else 0
    out = {"saved_mib": (outside + held) / MIB, "saved_outside_checkpoints_mib": outside / MIB}
    try:  # the profiler's per-allocation records; private API, so optional
        events = prof.profiler.kineto_results.events()
        deltas = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    except AttributeError:
        return out | {"peak_tensor_mib": None}
    level = peak = 0
    for _, nbytes in deltas:
        level += nbytes
        peak = max(peak, level)
    return out | {"peak_tensor_mib": (start + peak) / MIB, "state_mib": start / MIB}


def worker(cfg: dict) -> dict:
    """One configuration, in its own process: timed steps, peak RSS, then instrumentation."""
    rss_before = current_rss_mib()
    torch.manual_seed(0)
    model = SuperNet(cfg["C"], cfg["L"], cfg["D"], checkpoint=cfg["checkpoint"])
    model.train()
    weight_opt = torch.optim.Adam(model.weights(), lr=1e-4)
    architect = Architect(model)
    g = torch.Generator().manual_seed(1)
    shape = (cfg["batch"], 1, cfg["size"], cfg["size"])

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.rand(shape, generator=g), torch.rand(shape, generator=g)

    train, arch = batch(), batch()
    times = []
    for i in range(cfg["warmup"] + cfg["timed"]):
        t0 = time.perf_counter()
        search_step(model, weight_opt, architect, train, arch, F.mse_loss)
        if i >= cfg["warmup"]:
            times.append(time.perf_counter() - t0)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result = {
        **cfg,
        "step_seconds": times,
        "seconds_per_step": statistics.median(times) if times else None,
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak_rss,
        "rss_delta_mib": peak_rss - rss_before,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if cfg["instrument"]:
        result |= instrumented_step(model, weight_opt, architect, train, arch, cfg["size"])
    return result


# --------------------------------------------------------------------------- driver side


def run_config(**cfg: Any) -> dict:
    """Run ``worker(cfg)`` in a fresh interpreter and return its JSON result."""
    cfg = {"warmup": 1, "timed": 2, "instrument": True, "batch": 2, **cfg}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {cfg} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = time.perf_counter() - t0
    tag = "ckpt" if cfg["checkpoint"] else "plain"
    print(
        f"  C={cfg['C']} L={cfg['L']} D={cfg['D']} {cfg['size']}px b{cfg['batch']} {tag}: "
        f"{_fmt(result['seconds_per_step'], 2)} s/step, RSS +{result['rss_delta_mib']:.0f} MiB, "
        f"saved {_fmt(result.get('saved_mib'), 0)} MiB, "
        f"peak tensors {_fmt(result.get('peak_tensor_mib'), 0)} MiB "
        f"({result['wall_seconds']:.0f} s)",
        flush=True,
    )
    return result


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def machine() -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda_available": torch.cuda.is_available(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def meta_saved_mib(C: int, L: int, D: int, size: int, batch: int) -> float:
    """Exact saved-for-backward bytes of the plain super-net, computed on the meta device
    (shapes only, no memory or compute), for a size this machine cannot run."""
    with torch.device("meta"):
        model = SuperNet(C, L, D)
        x = torch.zeros(batch, 1, size, size)
    saved = SavedTensors(model)
    with saved.hooks():
        F.mse_loss(model(x), x)
    return saved.total() / MIB


def linear_fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares y = a + b x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - b * mx, b


def extrapolate(runs: list[dict], key: str, size: int) -> float | None:
    """``key`` at ``size`` pixels from a line in pixel count through the measured runs."""
    pts = [(r["size"] ** 2, r[key]) for r in runs if r.get(key) is not None]
    if len(pts) < 2:
        return None
    a, b = linear_fit(pts)
    return a + b * size**2


def model_costs(seeds: tuple[int, ...], K: int = 5, size: int = 512) -> list[dict]:
    """Parameters and FLOPs at ``size`` of each preset's super-net and of derived nets from
    random alphas and betas (standard-normal logits stand in for a finished search)."""
    rows = []
    for name, arch in (("small", SMALL), ("paper", PAPER)):
        torch.manual_seed(0)
        net = SuperNet(**arch)
        rows.append(
            {
                "preset": name,
                "net": "super-net",
                "params": count_parameters(net),
                "gflops": count_flops(net, size, size) / 1e9,
            }
        )
        for seed in seeds:
            torch.manual_seed(seed)
            with torch.no_grad():
                for p in net.arch_parameters():
                    p.normal_()
            g = derive_genotype(net, K=K)
            derived = DerivedNetwork(g)
            rows.append(
                {
                    "preset": name,
                    "net": f"derived K={K} seed {seed}",
                    "kept_edges": len(g.edges),
                    "blocks": len({b for e in g.edges for b in e}) - 2,
                    "params": count_parameters(derived),
                    "gflops": count_flops(derived, size, size) / 1e9,
                    "cells": {t: list(ops) for t, ops in g.cells.items()},
                }
            )
    return rows


def estimate_256(paper_runs: list[dict], saved_meta_mib: float) -> dict:
    """The paper preset at 256 x 256 from the reduced sizes: memory along a line in the pixel
    count. Time is not extrapolated: on this CPU it is far from linear (see the notes)."""
    estimate: dict[str, dict] = {}
    for ck in (False, True):
        runs = [r for r in paper_runs if r["checkpoint"] == ck]
        estimate["checkpoint" if ck else "plain"] = {
            key: extrapolate(runs, key, PAPER_SIZE)
            for key in ("saved_mib", "peak_tensor_mib", "rss_delta_mib")
        }
    estimate["plain"]["saved_mib_meta_exact"] = saved_meta_mib
    return estimate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument(
        "--paper-full",
        action="store_true",
        help="also run the paper preset at 128 x 128 (both modes) and one checkpointed step "
        "at 256 x 256 (about 20 more minutes)",
    )
    ap.add_argument("--report-only", action="store_true", help="rewrite search.md from search.json")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.report_only:
        results = json.loads((args.out / "search.json").read_text())
        meta = results["paper_256_estimate"]["plain"]["saved_mib_meta_exact"]
        results["paper_256_estimate"] = estimate_256(results["paper_reduced"], meta)
        write_results(results, args.out)
        return

    started = time.perf_counter()
    info = machine()
    print(f"machine: {info}", flush=True)
    results: dict[str, Any] = {
        "machine": info,
        "gpu": "none available in this session",
        "paper_full": args.paper_full,
    }

    print("small preset (C=8, L=4, D=3, 64x64, batch 4): 1 warm-up + 3 timed steps", flush=True)
    results["small"] = [
        run_config(**SMALL, size=64, batch=4, checkpoint=ck, timed=3) for ck in (False, True)
    ]

    print("growth with L (D=3) and D (L=8), 64x64, batch 2: 1 warm-up + 2 timed", flush=True)
    grid_configs = [(4, 3), (8, 3), (12, 3), (8, 2), (8, 4)]
    results["sweep"] = [
        run_config(C=8, L=L, D=D, size=64, checkpoint=ck)
        for L, D in grid_configs
        for ck in (False, True)
    ]

    print("paper preset (C=8, L=12, D=4, batch 2) at reduced sizes", flush=True)
    paper_runs = []
    for ck in (False, True):
        paper_runs.append(run_config(**PAPER, size=32, checkpoint=ck, timed=0))
        paper_runs.append(run_config(**PAPER, size=64, checkpoint=ck))
        if args.paper_full:
            paper_runs.append(run_config(**PAPER, size=128, checkpoint=ck, timed=1))
    results["paper_reduced"] = paper_runs

    results["paper_256"] = None
    if args.paper_full:
        print("paper preset at 256x256, batch 2, checkpointed: one step", flush=True)
        results["paper_256"] = run_config(
            **PAPER, size=PAPER_SIZE, checkpoint=True, warmup=0, timed=1, instrument=False
        )
    meta = meta_saved_mib(**PAPER, size=PAPER_SIZE, batch=PAPER_BATCH)
    results["paper_256_estimate"] = estimate_256(paper_runs, meta)

    print("parameters and FLOPs at 512x512", flush=True)
    results["costs"] = model_costs(seeds=(0, 1, 2))
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results["total_seconds"] = time.perf_counter() - started
    write_results(results, args.out)


def write_results(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "search.json").write_text(json.dumps(results, indent=2) + "\n")
    report = markdown(results)
    (out / "search.md").write_text(report)
    print(report)


# --------------------------------------------------------------------------- report


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _mem_table(runs: list[dict], label: Callable[[dict], str]) -> list[str]:
    lines = [
        _row(["config", "ckpt", "s / step", "peak RSS - before (MiB)", "saved (MiB)",
              "peak tensors (MiB)"]),
        _row(["---"] * 6),
    ]  # fmt: skip
    for r in runs:
        lines.append(
            _row(
                [
                    label(r),
                    "yes" if r["checkpoint"] else "no",
                    _fmt(r["seconds_per_step"], 2),
                    f"{r['rss_delta_mib']:.0f}",
                    _fmt(r.get("saved_mib"), 0),
                    _fmt(r.get("peak_tensor_mib"), 0),
                ]
            )
        )
    return lines


def _pair(runs: list[dict], **match: Any) -> tuple[dict, dict] | None:
    """The (plain, checkpointed) runs of one configuration."""
    found = [r for r in runs if all(r[k] == v for k, v in match.items())]
    plain = [r for r in found if not r["checkpoint"]]
    ckpt = [r for r in found if r["checkpoint"]]
    return (plain[0], ckpt[0]) if plain and ckpt else None


def markdown(res: dict) -> str:
    m = res["machine"]
    est = res["paper_256_estimate"]
    full = res.get("paper_256")
    plain_peak = est["plain"]["peak_tensor_mib"]
    ckpt_peak = est["checkpoint"]["peak_tensor_mib"]
    out = [
        "# Search-step benchmark (CPU)",
        "",
        "Written by `bench/bench_search.py`"
        + (" --paper-full" if res.get("paper_full") else "")
        + f" in {res['total_seconds'] / 60:.1f} min. Machine: {m['cpu']} ({m['cpus']} CPUs, "
        f"{m['torch_threads']} torch threads), torch {m['torch']}, Python {m['python']}; load "
        f"average {m['load_average_start']} at start, {m['load_average_end']} at the end. The "
        "machine is shared with other jobs: times are noisy (up to ~10x between runs of the "
        "same step, see the notes at the end).",
        "",
        "**No GPU was available in this session**, so there are no GPU measurements: every GPU "
        "number below is an estimate from CPU runs (the saved-tensor sum and the peak of live "
        "tensor bytes).",
        "",
        "A search step = `search_step(model, Adam(model.weights(), lr=1e-4), Architect(model), "
        "train_batch, arch_batch, F.mse_loss)`: a weight forward/backward/update and an "
        "architecture forward/backward/update. ckpt = `SuperNet(..., checkpoint=True)` "
        "(every block under `torch.utils.checkpoint`, non-reentrant).",
        "",
        "Memory columns:",
        "",
        "- *peak RSS - before*: the subprocess's peak resident memory (`ru_maxrss`) minus its "
        "RSS before the model was built. Real CPU memory, including allocator caching and "
        "oneDNN scratch; not a GPU figure.",
        "- *saved*: bytes autograd keeps for backward in one forward, parameters excluded "
        "(unique storages seen by `saved_tensors_hooks`; with checkpointing, what is saved "
        "outside the blocks plus the block outputs the checkpoints hold). The usual "
        "activation estimate; it omits gradients, temporaries and, with checkpointing, the "
        "peak while a block is recomputed, which is why it is tiny there.",
        "- *peak tensors*: the high-water mark of live tensor bytes during the step (profiler "
        "memory events) plus what was live at its start (parameters, gradients, Adam state, "
        "batches): what `torch.cuda.max_memory_allocated()` would show for this step on a GPU, "
        "give or take cuDNN workspaces. **The GPU estimate**; add ~0.5 GiB of CUDA context.",
        "",
        "## Summary: the paper preset at 256x256, batch 2",
        "",
    ]
    if plain_peak and ckpt_peak:
        fits = ckpt_peak / 1024 + 0.5 < 20
        out += [
            f"- GPU estimate of one search step: **{plain_peak / 1024:.1f} GiB without "
            f"checkpointing, {ckpt_peak / 1024:.1f} GiB with it** ({plain_peak / ckpt_peak:.0f}x "
            f"less). With ~0.5 GiB of CUDA context the checkpointed step "
            f"{'fits' if fits else 'does NOT fit'} the 20 GB target (and a 24 GB GPU); without "
            "checkpointing it does not fit 20 GB.",
            f"- Exact saved-for-backward bytes of the plain super-net (meta device, shapes "
            f"only): {est['plain']['saved_mib_meta_exact'] / 1024:.2f} GiB; the extrapolation "
            f"from the reduced sizes gives {est['plain']['saved_mib'] / 1024:.2f} GiB.",
        ]
    if full is not None:
        out.append(
            f"- Measured on this CPU, checkpointed: {full['seconds_per_step']:.0f} s for one "
            f"step, peak RSS {full['rss_delta_mib'] / 1024:.1f} GiB above the baseline. Without "
            "checkpointing it cannot run here (the RSS extrapolates to "
            f"~{est['plain']['rss_delta_mib'] / 1024:.0f} GiB; the machine has 24)."
        )
    out += ["", "## Small preset (C=8, L=4, D=3, 64x64, batch 4)", ""]
    out += _mem_table(res["small"], lambda r: "small")
    out += ["", "Median of 3 timed steps after 1 warm-up.", ""]

    out += ["## Paper preset (C=8, L=12, D=4, batch 2)", ""]
    out += _mem_table(res["paper_reduced"], lambda r: f"{r['size']}x{r['size']}")
    out += [
        "",
        "32x32: memory only (1 warm-up, then the instrumented step); 64x64: median of 2 steps "
        "after 1 warm-up; 128x128 (with `--paper-full`): 1 step after 1 warm-up. 256x256 is "
        "extrapolated along a least-squares line in the pixel count through these points: "
        "activations are exactly per-pixel and the intercept is the weights, gradients and "
        "Adam state (the saved column scales by 4.0 per doubling of the side, as it must). "
        "RSS is extrapolated the same way, roughly.",
        "",
        _row(["256x256, batch 2", "s / step", "peak RSS - before (MiB)", "saved (MiB)",
              "peak tensors (MiB)"]),
        _row(["---"] * 5),
    ]  # fmt: skip
    for mode in ("plain", "checkpoint"):
        e = est[mode]
        out.append(
            _row(
                [
                    f"{mode} (extrapolated)",
                    "-",
                    _fmt(e["rss_delta_mib"], 0),
                    _fmt(e["saved_mib"], 0),
                    _fmt(e["peak_tensor_mib"], 0),
                ]
            )
        )
    if full is not None:
        out.append(
            _row(
                [
                    "checkpoint (measured, 1 step, no warm-up)",
                    _fmt(full["seconds_per_step"], 0),
                    f"{full['rss_delta_mib']:.0f}",
                    "-",
                    "-",
                ]
            )
        )

    out += ["", "## Growth with L and D (C=8, 64x64, batch 2)", ""]
    out += _mem_table(res["sweep"], lambda r: f"L={r['L']} D={r['D']}")
    out += ["", "Median of 2 timed steps after 1 warm-up.", ""]
    growth = []
    for name, a, b in (("L 4 -> 12 at D=3", (4, 3), (12, 3)), ("D 2 -> 4 at L=8", (8, 2), (8, 4))):
        pa = _pair(res["sweep"], L=a[0], D=a[1])
        pb = _pair(res["sweep"], L=b[0], D=b[1])
        if pa and pb and all(r.get("peak_tensor_mib") for r in (*pa, *pb)):
            mem = [b["peak_tensor_mib"] / a["peak_tensor_mib"] for a, b in zip(pa, pb, strict=True)]
            sec = [
                b["seconds_per_step"] / a["seconds_per_step"] for a, b in zip(pa, pb, strict=True)
            ]
            growth.append(
                f"- {name}: peak tensors x{mem[0]:.1f} without checkpointing, x{mem[1]:.1f} with; "
                f"time x{sec[0]:.1f} without, x{sec[1]:.1f} with."
            )
    out += [
        *growth,
        "- Without checkpointing the activations grow with the number of cells (linear in L; "
        "each added depth adds cells at a quarter of the pixels and twice the channels, so "
        "about half the bytes per cell). With checkpointing only the block outputs (small) "
        "grow with L; the peak is set by the largest block's recomputation plus the weights, "
        "gradients and Adam state, which grow ~4x per added depth (channels double).",
        "",
    ]

    out += [
        "## Parameters and FLOPs at 512x512",
        "",
        "FLOPs = 2 x conv multiply-accumulates for one 512x512 image (`manas_infer.train."
        "profile`; halve for MACs). Derived nets: `derive_genotype(SuperNet(...), K=5)` after "
        "filling alphas and betas with standard-normal logits (a stand-in for a search; real "
        "searches choose differently). Parameters of the super-nets include alphas and betas.",
        "",
        _row(["preset", "net", "kept edges", "blocks", "params (M)", "GFLOPs"]),
        _row(["---"] * 6),
    ]
    for r in res["costs"]:
        out.append(
            _row(
                [
                    r["preset"],
                    r["net"],
                    r.get("kept_edges", "-"),
                    r.get("blocks", "-"),
                    f"{r['params'] / 1e6:.2f}",
                    f"{r['gflops']:.1f}",
                ]
            )
        )
    out += ["", "## Notes on CPU time", ""]
    for size in sorted({r["size"] for r in res["paper_reduced"]}):
        pair = _pair(res["paper_reduced"], size=size)
        if pair and pair[0]["seconds_per_step"] and pair[1]["seconds_per_step"]:
            ratio = pair[1]["seconds_per_step"] / pair[0]["seconds_per_step"]
            out.append(f"- Paper preset at {size}x{size}: checkpointed / plain time = {ratio:.2f}.")
    pair = _pair(res["small"])
    if pair:
        ratio = pair[1]["seconds_per_step"] / pair[0]["seconds_per_step"]
        out.append(f"- Small preset: checkpointed / plain time = {ratio:.2f}.")
    recheck = res.get("quiet_recheck")
    if recheck:
        out.append(f"- Quiet recheck ({recheck['what']}):")
        for r in recheck["runs"]:
            tag = "checkpointed" if r["checkpoint"] else "plain"
            out.append(f"  - {r['size']}x{r['size']} {tag}: {r['seconds']:.1f} s / step")
    out += [
        "- Checkpointing recomputes every block's forward during backward: about one more "
        "forward per pass, ~1.33x the compute of a plain step, which is what to expect on a "
        "GPU. On this CPU the ratio also carries Python and allocation overhead per block.",
        "- The 2 cores are shared with other jobs, and torch's 2 OpenMP threads stall whenever "
        "another process takes one core, so a step can run several times slower than it "
        "would on a quiet machine (each run records the load average in search.json; the "
        "quiet recheck, where present, shows the same steps undisturbed). Do not read CPU "
        "times as GPU times.",
        "",
    ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
