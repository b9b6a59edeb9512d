"""Inference speed of the shipped default model: onnxruntime (the product's runtime) vs the
same network in torch eager, and how close either gets to the machine's convolution ceiling.

Not a test: run it by hand, ``.venv/bin/python bench/bench_runtime.py [--model NAME]``. It
denoises real 512 x 512 chest slices (../shared/data; the phantom when absent) at batch 1
and 4 on the CPU, and on CUDA with the float16 variant when a GPU is present. The ceiling
is a plain stack of eight 64-channel 3x3 convolutions at 512 x 512, timed the same way in
both frameworks: the GFLOP/s a conv net of this machine can reach. Torch eager runs the
card's genotype with fresh weights: speed does not depend on weight values. The paper's
baselines, RED-CNN and DnCNN (``train/baselines.py``, fresh weights, wrapped in the same HU
graph as an export), run in onnxruntime on the CPU too, on fewer slices (RED-CNN takes
seconds a slice), so the speed-up that issue 12 asks for (at least 5x over RED-CNN in the
runtime) is measured, not inferred from FLOPs. Writes bench/results/runtime.json and
runtime.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from manas_infer.data.series import scan
from manas_infer.export.graph import HUModel
from manas_infer.runtime import Denoiser, resolve_model
from manas_infer.runtime.providers import open_session
from manas_infer.train.baselines import build_baseline
from manas_infer.train.genotype import Genotype
from manas_infer.train.network import DerivedNetwork
from manas_infer.train.profile import count_flops, count_parameters

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MANAS_SHARED_DATA", REPO.parent / "shared" / "data"))
CHEST = SHARED / "ct" / "lung-pet-ct-dx-a0001"


def slices(count: int) -> tuple[np.ndarray, str]:
    """``count`` real 512 x 512 slices from the middle of the chest series (phantom if absent)."""
    report = scan(CHEST) if CHEST.is_dir() else None
    if report and report.series:
        series = report.series[0]
        start = max(0, series.n_slices // 2 - count // 2)
        picked = np.stack([series.read_slice_hu(i) for i in range(start, start + count)])
        return picked.astype(np.float32), f"{CHEST.name}, slices {start}..{start + count - 1}"
    from manas_infer.data.phantom import phantom_volume

    return phantom_volume(count, 512).astype(np.float32), "synthetic phantom"


def timed(fn, batches: list[np.ndarray], repeats: int) -> float:
    """Seconds per slice: one untimed pass, then the best of ``repeats`` timed passes."""
    fn(batches[0])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for b in batches:
            fn(b)
        best = min(best, time.perf_counter() - start)
    return best / sum(len(b) for b in batches)


def conv_stack(layers: int = 8, width: int = 64) -> nn.Module:
    """The ceiling probe: 1 -> 64 -> ... -> 64 -> 1 channels, 3x3, ReLU between."""
    mods: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1)]
    for _ in range(layers - 2):
        mods += [nn.ReLU(), nn.Conv2d(width, width, 3, padding=1)]
    mods += [nn.ReLU(), nn.Conv2d(width, 1, 3, padding=1)]
    return nn.Sequential(*mods).eval()


def conv_flops(model: nn.Module, side: int = 512) -> float:
    return sum(
        2 * side * side * m.in_channels * m.out_channels * 9
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    )


def onnx_bytes(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    axes = {0: "n", 2: "h", 3: "w"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(1, 1, 64, 64),), buf, dynamo=False, opset_version=17,
            input_names=["x"], output_names=["y"], dynamic_axes={"x": axes, "y": axes},
        )  # fmt: skip
    return buf.getvalue()


def baseline_rows(hu: np.ndarray, repeats: int) -> list[dict]:
    """RED-CNN and DnCNN in onnxruntime on the CPU, batch 1, in the exported HU graph."""
    rows = []
    one = [hu[i : i + 1] for i in range(len(hu))]
    for arch, label in (("redcnn", "RED-CNN (Chen 2017)"), ("dncnn", "DnCNN (Zhang 2017)")):
        net = build_baseline(arch).eval()
        session = open_session(onnx_bytes(HUModel(net, net.size_multiple).eval()), "cpu").session
        seconds = timed(lambda b, s=session: s.run(None, {"x": b[:, None]}), one, repeats)
        gflops = count_flops(net, 512, 512) / 1e9
        rows.append({
            "model": label, "parameters": count_parameters(net), "gflops_512": round(gflops, 1),
            "ms_per_slice": round(seconds * 1e3, 1), "gflop_per_s": round(gflops / seconds, 1),
        })  # fmt: skip
    return rows


def torch_runner(model: nn.Module, device: str, dtype: torch.dtype = torch.float32):
    model = model.to(device)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(batch)[:, None].to(device)
            y = model(x.to(dtype) if dtype != torch.float32 else x)
            if device == "cuda":
                torch.cuda.synchronize()
            return y.float().cpu().numpy()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="name or path (default: the default)")
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--baseline-slices", type=int, default=2,
        help="slices for RED-CNN and DnCNN (0: skip them); timed once after a warm-up",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    hu, source = slices(args.slices)
    choice = resolve_model(args.model)
    cpu = Denoiser(choice, device="cpu")
    gflops = float(cpu.card["gflops_512"])
    genotype = Genotype.from_json(json.dumps(cpu.card["genotype"]))
    net = DerivedNetwork(genotype).eval()
    ensemble = len(cpu.card.get("ensemble", ["identity"]))  # the same passes as the file
    eager = HUModel(net, net.size_multiple, ensemble=ensemble).eval()
    probe = conv_stack()
    probe_gflops = conv_flops(probe) / 1e9
    rows: list[dict] = []

    def add(engine: str, device: str, precision: str, batch: int, seconds: float, flops: float):
        rows.append({
            "engine": engine, "device": device, "precision": precision, "batch": batch,
            "ms_per_slice": round(seconds * 1e3, 2), "slices_per_s": round(1 / seconds, 2),
            "gflop_per_s": round(flops / seconds, 1),
        })  # fmt: skip

    for batch in (1, 4):
        batches = [hu[i : i + batch] for i in range(0, len(hu), batch)]
        add("onnxruntime", "cpu", "float32", batch, timed(cpu.run, batches, args.repeats), gflops)
        add("torch eager", "cpu", "float32", batch,
            timed(torch_runner(eager, "cpu"), batches, args.repeats), gflops)  # fmt: skip
    ceiling_session = open_session(onnx_bytes(probe), "cpu").session
    one = [hu[i : i + 1] for i in range(len(hu))]
    ceiling = {
        "onnxruntime cpu": probe_gflops
        / timed(lambda b: ceiling_session.run(None, {"x": b[:, None]}), one, args.repeats),
        "torch eager cpu": probe_gflops / timed(torch_runner(probe, "cpu"), one, args.repeats),
    }
    gpu_note = "no GPU on this machine: CPU only"
    if torch.cuda.is_available():
        gpu = Denoiser(choice, device="cuda")
        fp16_path = choice.path.with_name(choice.path.stem + ".fp16.onnx")
        for batch in (1, 4, 16):
            batches = [hu[i : i + batch] for i in range(0, len(hu), batch)] * 4
            add("onnxruntime", gpu.provider, "float32", batch,
                timed(gpu.run, batches, args.repeats), gflops)  # fmt: skip
            if fp16_path.is_file():
                half = Denoiser(fp16_path, device="cuda")
                add("onnxruntime", half.provider, "float16", batch,
                    timed(half.run, batches, args.repeats), gflops)  # fmt: skip
            add("torch eager", "cuda", "float32", batch,
                timed(torch_runner(eager, "cuda"), batches, args.repeats), gflops)  # fmt: skip
        gpu_session = open_session(onnx_bytes(probe), "cuda").session
        ceiling["onnxruntime cuda"] = probe_gflops / timed(
            lambda b: gpu_session.run(None, {"x": b[:, None]}), one * 4, args.repeats
        )
        gpu_note = torch.cuda.get_device_name(0)

    baselines = baseline_rows(hu[: args.baseline_slices], 1) if args.baseline_slices else []
    ours = rows[0]  # onnxruntime, CPU, batch 1: the same setting as the baselines
    for row in baselines:
        row["manas_faster_x"] = round(row["ms_per_slice"] / ours["ms_per_slice"], 1)
    for row in rows:
        key = f"{row['engine']} {'cuda' if row['device'] != 'cpu' else 'cpu'}"
        if key in ceiling:
            row["fraction_of_ceiling"] = round(row["gflop_per_s"] / ceiling[key], 3)
    result = {
        "model": choice.name,
        "model_file": str(choice.path.relative_to(REPO))
        if choice.path.is_relative_to(REPO)
        else str(choice.path),
        "gflops_per_slice_512": gflops,
        "ensemble": ensemble,
        "parameters": cpu.card.get("parameters"),
        "slices": source,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "gpu": gpu_note,
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "ceiling_gflop_per_s": {k: round(v, 1) for k, v in ceiling.items()},
        "ceiling_probe": f"8 x 3x3 conv, 64 channels, 512x512: {probe_gflops:.1f} GFLOPs/slice",
        "rows": rows,
        "baselines_onnxruntime_cpu_batch1": baselines,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runtime.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Runtime speed: {choice.name} ({gflops:.1f} GFLOPs per 512x512 slice"
        + (f": {ensemble} passes of the network, self-ensemble)" if ensemble > 1 else ")"),
        "",
        f"Slices: {source}. Machine: {result['machine']}; GPU: {gpu_note}. "
        f"torch {torch.__version__}, onnxruntime {result['onnxruntime']}. Best of "
        f"{args.repeats} passes after one warm-up pass. Command: "
        "`.venv/bin/python bench/bench_runtime.py`.",
        "",
        "| engine | device | precision | batch | ms / slice | slices / s | GFLOP/s | of ceiling |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['engine']} | {r['device']} | {r['precision']} | {r['batch']} | "
            f"{r['ms_per_slice']} | {r['slices_per_s']} | {r['gflop_per_s']} | "
            f"{r.get('fraction_of_ceiling', '')} |"
        )
    ceilings = ", ".join(f"{k} {v}" for k, v in result["ceiling_gflop_per_s"].items())
    lines += ["", f"Ceiling ({result['ceiling_probe']}), GFLOP/s: {ceilings}"]
    if baselines:
        lines += [
            "",
            f"## Against the paper's baselines (onnxruntime, CPU, batch 1, "
            f"{args.baseline_slices} slices)",
            "",
            "Fresh weights in the same HU graph as an exported model; speed does not depend "
            "on weight values.",
            "",
            "| model | parameters | GFLOPs 512² | ms / slice | GFLOP/s | MANAS faster |",
            "|---|---|---|---|---|---|",
            f"| {choice.name} | {cpu.card.get('parameters')} | {gflops:.1f} "
            f"| {ours['ms_per_slice']} | {ours['gflop_per_s']} | 1 |",
        ]
        lines += [
            f"| {b['model']} | {b['parameters']} | {b['gflops_512']} | {b['ms_per_slice']} "
            f"| {b['gflop_per_s']} | x{b['manas_faster_x']} |"
            for b in baselines
        ]
    (args.out / "runtime.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
