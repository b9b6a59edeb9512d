"""End-to-end ``denoise`` throughput on a whole real series vs the runtime alone.

Not a test: run it by hand, ``.venv/bin/python bench/bench_denoise.py [--model NAME]``. It
denoises the 134-slice pancreas series of ../shared/data end to end (read and decode,
denoise, write the derived series with fsync) with the same code as ``manas-infer denoise``,
then times each part on its own: reading, the runtime on the slices already in memory,
writing. The I/O overhead is the difference. Writes bench/results/denoise.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from manas_infer.data.derived import write_derived_series
from manas_infer.data.series import scan
from manas_infer.jobs.denoise import denoise_derivation, denoise_series
from manas_infer.runtime import Denoiser, resolve_model

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MANAS_SHARED_DATA", REPO.parent / "shared" / "data"))
SERIES = SHARED / "ct" / "pancreas-ct-cb-001"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--series", type=Path, default=SERIES)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    (series,) = scan(args.series).series
    denoiser = Denoiser(resolve_model(args.model), device=args.device, batch=args.batch)
    n = series.n_slices
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        done = denoise_series(series, denoiser, Path(tmp) / "end-to-end")
        end_to_end = time.perf_counter() - start

        start = time.perf_counter()
        hu = series.read_hu()
        read = time.perf_counter() - start

        start = time.perf_counter()
        out = denoiser(hu)
        runtime = time.perf_counter() - start

        start = time.perf_counter()
        write_derived_series(series, out, denoise_derivation(denoiser), Path(tmp) / "write")
        write = time.perf_counter() - start
    assert done.written.n_slices == n
    rows = {
        "end to end (read, denoise, write)": end_to_end,
        "read and decode only": read,
        "runtime only (slices in memory)": runtime,
        "write only (derived series, fsync)": write,
    }
    result = {
        "series": f"{args.series.name}: {n} slices {series.shape[0]}x{series.shape[1]}",
        "model": denoiser.name,
        "provider": denoiser.provider,
        "batch": args.batch,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "seconds": {k: round(v, 2) for k, v in rows.items()},
        "slices_per_s": {k: round(n / v, 2) for k, v in rows.items()},
        "io_overhead_fraction": round(1 - runtime / end_to_end, 3),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "denoise.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# denoise end to end: {result['series']}",
        "",
        f"Model {denoiser.name} on {denoiser.provider}, batch {args.batch}; "
        f"{result['machine']}. Command: `.venv/bin/python bench/bench_denoise.py`.",
        "",
        "| part | seconds | slices / s |",
        "|---|---|---|",
        *(f"| {k} | {v:.2f} | {n / v:.2f} |" for k, v in rows.items()),
        "",
        f"I/O overhead (end to end minus the runtime alone): "
        f"{100 * result['io_overhead_fraction']:.1f} % of the end-to-end time.",
    ]
    (args.out / "denoise.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
