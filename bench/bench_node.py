"""The DICOM node under load: concurrent senders, each a whole series, all delivered.

Not a test: run it by hand, ``.venv/bin/python bench/bench_node.py [--senders 8]
[--slices N]``. It times the runtime alone on the very slices the senders will send (the
"pure model time"), then starts ``manas-infer serve`` and DCMTK's storescp on loopback,
lets ``--senders`` storescu processes send one series each at the same moment, and waits
until every derived slice has arrived at storescp. The node's overhead is the wall time
minus the pure model time (it includes the stable age, which the node must wait once per
series by design). Writes bench/results/node.json and node.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from manas_infer.data.series import scan
from manas_infer.runtime import Denoiser, resolve_model

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MANAS_SHARED_DATA", REPO.parent / "shared" / "data"))
SERIES = SHARED / "ct" / "lung-pet-ct-dx-a0001"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_series(source: Path, target: Path, count: int) -> str:
    """``count`` consecutive middle slices of ``source`` as a new series (new UIDs)."""
    files = sorted(p for p in source.iterdir() if p.suffix == ".dcm")
    start = max(0, (len(files) - count) // 2)
    target.mkdir(parents=True)
    uid = generate_uid()
    for f in files[start : start + count]:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(target / f.name)
    return uid


def delivered(folder: Path) -> dict[str, set[str]]:
    """Derived SOP instance UIDs received, by the source series they come from."""
    found: dict[str, set[str]] = {}
    for f in folder.iterdir():
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            source = str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
        except Exception:
            continue
        found.setdefault(source, set()).add(str(ds.SOPInstanceUID))
    return found


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port} after {timeout:g} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--slices", type=int, default=64, help="Slices per series (64: all).")
    parser.add_argument("--series", type=Path, default=SERIES)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--stable-age", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    for program in ("storescu", "storescp"):
        if shutil.which(program) is None:
            raise SystemExit(f"{program} (DCMTK) is not installed")

    with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp_name:
        tmp = Path(tmp_name)
        sources = [
            make_series(args.series, tmp / "in" / f"s{i}", args.slices) for i in range(args.senders)
        ]
        total = args.senders * args.slices

        # The pure model time: the runtime on the same slices, already decoded, no I/O.
        denoiser = Denoiser(resolve_model(), device=args.device, batch=args.batch)
        volumes = [scan(tmp / "in" / f"s{i}").series[0].read_hu() for i in range(args.senders)]
        started = time.perf_counter()
        for hu in volumes:
            denoiser(hu)
        pure_model = time.perf_counter() - started
        provider, model = denoiser.provider, denoiser.name
        del denoiser, volumes

        dest_port, node_port = free_port(), free_port()
        out = tmp / "received"
        out.mkdir()
        config = tmp / "node.toml"
        config.write_text(
            f"""
[node]
ae_title = "MANAS"
host = "127.0.0.1"
port = {node_port}
max_associations = {args.senders + 4}
[spool]
path = "{tmp / "spool"}"
stable_age = {args.stable_age}
[processing]
device = "{args.device}"
batch = {args.batch}
[[destinations]]
name = "scp"
ae_title = "STORESCP"
host = "127.0.0.1"
port = {dest_port}
[[security.allowed]]
ae_title = "STORESCU"
host = "127.0.0.1"
"""
        )
        receiver = subprocess.Popen(
            ["storescp", "+uf", "-aet", "STORESCP", "-od", str(out), str(dest_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        log_path = tmp / "node-stderr.log"
        with open(log_path, "wb") as log:
            node = subprocess.Popen(
                [sys.executable, "-m", "manas_infer", "serve", "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            wait_port(dest_port, 30)
            wait_port(node_port, 180)
            t0 = time.perf_counter()
            senders = []
            for i in range(args.senders):
                command = ["storescu", "-aet", "STORESCU", "-aec", "MANAS", "+sd", "+r",
                           "127.0.0.1", str(node_port), str(tmp / "in" / f"s{i}")]  # fmt: skip
                senders.append(
                    subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                )
            codes = [s.wait(600) for s in senders]
            received = time.perf_counter() - t0
            if any(codes):
                raise SystemExit(f"storescu exit codes {codes}; see {log_path}")
            deadline = time.monotonic() + 3600
            while True:
                got = delivered(out)
                if sum(len(got.get(uid, ())) for uid in sources) == total:
                    break
                if time.monotonic() > deadline or node.poll() is not None:
                    raise SystemExit(f"not all delivered; node log:\n{log_path.read_text()}")
                time.sleep(0.5)
            wall = time.perf_counter() - t0
            time.sleep(1)
            got = delivered(out)
            files = sum(1 for _ in out.iterdir())
        finally:
            stop(node)
            stop(receiver)
        text = log_path.read_text()

    processing = [float(s) for s in re.findall(r"denoised: \d+ slices in ([\d.]+) s", text)]
    sending = [float(s) for s in re.findall(r"instances accepted \(\d+ now, ([\d.]+) s\)", text)]
    ok = all(len(got.get(uid, ())) == args.slices for uid in sources) and files == total
    result = {
        "senders": args.senders,
        "slices_per_series": args.slices,
        "slice_matrix": "512x512",
        "series_source": args.series.name,
        "model": model,
        "provider": provider,
        "batch": args.batch,
        "stable_age_s": args.stable_age,
        "all_delivered_once": ok,
        "derived_files_received": files,
        "wall_s": round(wall, 2),
        "all_received_by_node_s": round(received, 2),
        "pure_model_s": round(pure_model, 2),
        "node_overhead_s": round(wall - pure_model, 2),
        "node_overhead_percent_of_model": round(100 * (wall - pure_model) / pure_model, 1),
        "worker_processing_s_total": round(sum(processing), 2),
        "worker_io_overhead_s": round(sum(processing) - pure_model, 2),
        "sending_s_total": round(sum(sending), 2),
        "series_per_minute": round(60 * args.senders / wall, 2),
        "slices_per_s": round(total / wall, 2),
        "model_slices_per_s": round(total / pure_model, 2),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "command": " ".join(["python", "bench/bench_node.py", *sys.argv[1:]]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "node.json").write_text(json.dumps(result, indent=2) + "\n")
    r = result
    rows = [
        ("wall time, first send to last derived slice delivered", f"{r['wall_s']:.1f} s"),
        ("all instances received and acknowledged by the node",
         f"{r['all_received_by_node_s']:.1f} s"),
        ("pure model time (runtime on the same decoded slices, no I/O)",
         f"{r['pure_model_s']:.1f} s"),
        ("node overhead over pure model time (wall - model)",
         f"{r['node_overhead_s']:.1f} s ({r['node_overhead_percent_of_model']:.0f} %)"),
        ("worker time per series, summed (read, decode, denoise, write with fsync)",
         f"{r['worker_processing_s_total']:.1f} s"),
        ("of which not the model (read, decode, write)", f"{r['worker_io_overhead_s']:.1f} s"),
        ("sending time, summed (C-STORE to storescp)", f"{r['sending_s_total']:.1f} s"),
        ("series throughput", f"{r['series_per_minute']:.2f} series/min"),
        ("slice throughput, end to end / model alone",
         f"{r['slices_per_s']:.2f} / {r['model_slices_per_s']:.2f} slices/s"),
    ]  # fmt: skip
    table = "\n".join(["| measure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])
    (args.out / "node.md").write_text(
        f"""# DICOM node under load

`{r["command"]}` on {r["machine"]}, model {r["model"]} on {r["provider"]} (batch {r["batch"]}).

{r["senders"]} DCMTK storescu processes each send one series of {r["slices_per_series"]} real
{r["slice_matrix"]} chest CT slices ({r["series_source"]}, each copy a new series) to
`manas-infer serve` at the same moment; DCMTK storescp receives the derived series.
Stable age {r["stable_age_s"]:g} s. Every derived slice delivered exactly once:
**{r["all_delivered_once"]}** ({r["derived_files_received"]} files for
{r["senders"] * r["slices_per_series"]} slices).

{table}

The overhead includes the stable age (the node waits for a series to stop growing once)
and the receiving phase before the first series is complete; the worker denoises one
series at a time, so on this CPU the model dominates and receiving, writing and sending
of other series overlap with it.
"""
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
