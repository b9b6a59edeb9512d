"""The model card (SPEC section 3): what a model is, what it was trained on, how good it is."""

from __future__ import annotations

import json
import os
from pathlib import Path

from manas_infer import __version__
from manas_infer.data.series import is_series_uid, portable_series_key, scan

INTENDED_USE = (
    "Research and workflow evaluation of low-dose CT denoising. Not for primary diagnosis: "
    "a denoised series is a derived aid shown next to the original, never instead of it."
)
CITATION_FILES = ("CITATION.txt", "CITATION.md", "CITATION.cff")


def citation_files(root: Path, max_depth: int = 3) -> dict[str, str]:
    """{folder: text} of every citation file under the data root (symlinked folders too).

    Public datasets ship their required citation beside the images; a card must carry it.
    """
    found: dict[str, str] = {}
    root = Path(root)
    if not root.is_dir():
        return found
    for folder, dirs, files in os.walk(root, followlinks=True):
        depth = len(Path(folder).relative_to(root).parts)
        if depth >= max_depth:
            dirs[:] = []
        for name in CITATION_FILES:
            if name in files:
                found[str(Path(folder).relative_to(root)) or "."] = (
                    (Path(folder) / name).read_text(errors="replace").strip()
                )
    return found


def series_table(root: Path, manifest: dict) -> list[dict]:
    """One row per series under the data root: its folder (relative, so the card reads the
    same on any machine), its SeriesInstanceUID, and what the run did with it, counted from
    the dataset manifest: patches trained on ("train", "arch") or scored ("test"), or none.

    The manifest keys slices by series, not by folder; a card must say which *series* (and so
    which citation) a model learnt from, so the folders are read again here (headers only).
    """
    root = Path(root)
    counts: dict[str, dict[str, int]] = {}
    for entry in manifest.get("slices", []):
        split = counts.setdefault(portable_series_key(entry["series_uid"]), {})
        split[entry["split"]] = split.get(entry["split"], 0) + 1
    rows = []
    for series in scan(root).series if root.is_dir() else []:
        used = counts.get(portable_series_key(series.series_uid), {})
        role = "training" if used.keys() & {"train", "arch"} else "test" if used else "unused"
        folder = series.folder.relative_to(root) if series.folder.is_relative_to(root) else None
        rows.append({
            "folder": str(folder or series.folder.name),
            "series_uid": series.series_uid if is_series_uid(series.series_uid) else None,
            "description": series.description,
            "slices": series.n_slices,
            "role": role,
            "patches": used,
        })  # fmt: skip
    return rows


def base_run(config: dict, depth: int = 0) -> dict | None:
    """What a fine-tuned run started from (its ``--init-weights`` run), so the card states the
    whole training budget, not just the fine-tune's: the base run's name, noise gain, epochs
    and seconds, and what that one started from in turn (a recipe chains fine-tunes: base
    net, per-dose tune, lesion tune), or only its path when a run is not on this machine."""
    if not config.get("init_weights") or depth > 8:
        return None
    folder = Path(config["init_weights"])
    folder = folder.parent.parent if folder.suffix == ".pt" else folder
    record: dict = {"init_weights": config["init_weights"], "run": folder.name}
    if (folder / "config.json").is_file() and (folder / "metrics.json").is_file():
        base = json.loads((folder / "config.json").read_text())
        base_metrics = json.loads((folder / "metrics.json").read_text())
        record |= {
            "dose_percent": base["dose"],
            "preset": base["preset"]["name"],
            "retrain_epochs": base["preset"]["retrain_epochs"],
            "augmentation": base.get("augment"),
            "seconds": base_metrics["seconds"],
        }
        earlier = base_run(base, depth + 1)
        if earlier is not None:
            record["fine_tuned_from"] = earlier
    return record


def build_card(run_dir: Path, name: str, precision: str, extra_citations: list[str]) -> dict:
    """Everything the card says except the file's sha256 and the parity check (added after)."""
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    dataset = json.loads((run_dir / "dataset.json").read_text())
    genotype_file = run_dir / "genotype.json"  # MANAS runs only; baselines have none
    genotype = json.loads(genotype_file.read_text()) if genotype_file.is_file() else None
    manifest_file = Path(dataset["folder"]) / "manifest.json"
    manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
    # Keyed by series folder, relative to the data root: the card is read on other machines.
    citations = dict(citation_files(Path(config["data_root"])))
    for i, text in enumerate(extra_citations, 1):
        citations[f"given at export ({i})"] = text
    low, net = metrics["mean_sd"]["low_dose"], metrics["mean_sd"]["network"]
    return {
        "name": name,
        "description": (
            f"{config['arch'].upper()} low-dose CT denoiser for {config['dose']:g} % dose "
            f"(HU in, HU out, any slice size)"
        ),
        "arch": config["arch"],
        "dose_percent": config["dose"],
        "precision": precision,
        "input": "float32 [N, 1, H, W] CT slices in HU (any N, H, W)",
        "output": "float32 [N, 1, H, W] denoised slices in HU",
        "genotype": genotype,
        "parameters": metrics["parameters"],
        "gflops_512": round(metrics["gflops_512"], 2),
        "training": {
            "preset": config["preset"],
            "seed": config["seed"],
            "perceptual_weight": config["perceptual_weight"],
            "augmentation": config.get("augment"),
            "search_skipped": metrics.get("search_skipped", False),
            "simulated_dose": dataset["spec"]["dose"],
            "images": metrics["images"],
            "counts": dataset["counts"],
            "data_root": config["data_root"],
            "test_patients": config["test_patients"],
            "series": series_table(Path(config["data_root"]), manifest),
            "seconds": metrics["seconds"],
            "device": metrics["device"],
            "run": run_dir.name,
            "fine_tuned_from": base_run(config),
        },
        "citations": citations,
        "metrics": {
            "on": (
                f"{metrics['test_slices']} {metrics['images']} of the held-out test patient(s) "
                f"{', '.join(config['test_patients']) or '(chosen by the split)'}, "
                f"simulated {config['dose']:g} % dose"
            ),
            "ranges": metrics["ranges"],
            "low_dose_input": low,
            "denoised": net,
        },
        "software_version": __version__,
        "intended_use": INTENDED_USE,
    }
