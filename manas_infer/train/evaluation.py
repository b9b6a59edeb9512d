"""The run's last stage: the best retrained network and the low-dose input measured once
on the held-out test patients, written as metrics.json (its schema is ``run_metrics``), and
the training curves drawn."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from manas_infer.metrics import mean_sd, quality
from manas_infer.train.batches import Batches
from manas_infer.train.distributed import barrier
from manas_infer.train.profile import count_flops, count_parameters
from manas_infer.train.run import load_trained

if TYPE_CHECKING:
    from manas_infer.train.trainer import Trainer

# Slices measured per forward pass.
QUALITY_BATCH = 8


@torch.no_grad()
def split_quality(
    batches: Batches, model: torch.nn.Module | None, split: str
) -> dict[str, list[float]]:
    """Per-slice quality on a split; ``model`` None measures the low-dose input itself.
    The values stay on the device until the split is done: one read, not one a batch."""
    if model is not None:
        model.eval()
    count, device = batches.count(split), batches.device
    parts: dict[str, list[Tensor]] = {}
    for start in range(0, count, QUALITY_BATCH):
        stop = min(start + QUALITY_BATCH, count)
        idx, at = torch.arange(start, stop), torch.arange(start, stop, device=device)
        low, normal = batches.pairs(split, idx, on_device=at, fresh_noise=False, augment=False)
        prediction = low if model is None else model(low).float()
        for name, values in quality(prediction.clamp(0, 1), normal).items():
            parts.setdefault(name, []).append(values)
    return {name: torch.cat(values).tolist() for name, values in parts.items()}


def run_metrics(
    trainer: Trainer, report: dict[str, dict[str, list[float]]], model: torch.nn.Module, best: dict
) -> dict:
    """metrics.json: per-slice and mean (sd) quality of each row of ``report``, the
    network's size and cost, and what the run was (data, loss, time, device)."""
    preset, config, state = trainer.preset, trainer.config, trainer.state
    summary = {
        name: {metric: mean_sd(values) for metric, values in rows.items()}
        for name, rows in report.items()
    }
    return {
        "dose_percent": config.dose,
        "preset": preset.name,
        "arch": config.arch,
        "test_slices": trainer.batches.count("test"),
        "images": (
            f"{preset.size}x{preset.size} native-resolution patches"
            if preset.patch
            else f"whole slices resized to {preset.size}x{preset.size}"
        ),
        "ranges": {
            "psnr, ssim": "full range [-1024, 3072] HU",
            "psnr_window, ssim_window": "soft-tissue window [-160, 240] HU",
        },
        "mean_sd": summary,
        "per_slice": report,
        "parameters": count_parameters(model),
        "gflops_512": count_flops(model, 512, 512) / 1e9,
        "best_epoch": best["epoch"],
        "val_psnr_best": best["val_psnr"],
        "seconds": {
            "search": round(state.get("seconds_search", 0.0), 1),
            "retrain": round(state.get("seconds_retrain", 0.0), 1),
        },
        "search_stopped_early": state.get("search_stopped_early"),
        "search_skipped": state.get("search_skipped", False),
        "augmentation": config.augment,
        "perceptual_weight": config.perceptual_weight,
        "ssim_weight": config.ssim_weight,
        "edge_weight": config.edge_weight,
        "device": trainer.device.type,
    }


def evaluate(trainer: Trainer) -> None:
    """The main process measures the test split, writes metrics.json and curves.png and
    marks the run done; the others wait for it."""
    if trainer.ctx.is_main:
        model, best = load_trained(trainer.folder)
        model = model.to(trainer.device)
        report = {
            "low_dose": split_quality(trainer.batches, None, "test"),
            "network": split_quality(trainer.batches, model, "test"),
        }
        metrics = run_metrics(trainer, report, model, best)
        (trainer.folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
        from manas_infer.train.plot import plot_curves

        plot_curves(trainer.state["history"], trainer.folder / "curves.png")
        trainer.state["stage"] = "done"
    trainer._save_state()
    barrier(trainer.ctx)
