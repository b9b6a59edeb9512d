"""How training computes on each kind of device: every precision and memory trade-off of
the training loop, in one place.

- Autocast: bf16 for the search's super-net on CUDA GPUs (the range of float32, so no loss
  scaling), where it is a matter of memory (the paper preset's plain step: 14.0 GiB peak on
  an H200); plain float32 for the retrained network everywhere, and for everything on a
  CPU. The loss and the VGG features run in float32 inside autocast (train/loss.py,
  train/perceptual.py). Why not the retrained network: on an H200 its bf16 steps were
  slower than float32 (the shipped 5 % net at 16 x 96 px: 0.033 s a step against 0.027 with
  TF32; the paper-size derived net: 0.113 against 0.078) and moved the loss the optimiser
  sees by 1.5-2.7 % (TF32: 0.03-0.3 %): a denoiser's output is judged to a few HU, and bf16
  keeps 8 bits (bench/results/gpu-check.md, retrain section).
- TF32: training sets nothing and runs under torch's defaults (cuDNN convolutions may use
  TF32, float32 matrix products do not). Inference is another matter: its sessions turn
  TF32 off (runtime/providers.py).
- Memory layout: channels-last (NHWC) for the retrained net on a CPU, where its
  convolutions run about 25 % faster; the GPU keeps the default layout.
- Activation checkpointing of the search's super-net: only where a plain search step
  would not fit the GPU's free memory (``decide_checkpointing``).
"""

from __future__ import annotations

import torch

from manas_infer.train.presets import Preset, search_step_bytes

AUTOCAST_DTYPE = torch.bfloat16


def uses_autocast(device: torch.device, stage: str) -> bool:
    """Whether the training steps of ``stage`` ("search" or "retrain") on ``device`` run
    under bf16 autocast: the search's super-net on a GPU only (see the module's note)."""
    if stage not in ("search", "retrain"):
        raise ValueError(f"unknown training stage {stage!r}")
    return stage == "search" and device.type == "cuda"


def autocast(device_type: str, enabled: bool) -> torch.autocast:
    """The training steps' autocast context (a no-op when not ``enabled``)."""
    return torch.autocast(device_type, AUTOCAST_DTYPE, enabled=enabled)


def retrain_layout(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The retrained net in the memory layout that is fastest on ``device``."""
    if device.type == "cpu":
        return model.to(memory_format=torch.channels_last)
    return model


def search_needs_checkpoint(needed_bytes: int, free_bytes: int, headroom: float = 0.85) -> bool:
    """Checkpoint when a plain search step (``needed_bytes``) would use more than
    ``headroom`` of the memory free for it: the rest is left to cuDNN workspaces, the
    allocator's fragmentation and the estimate's error."""
    return needed_bytes > headroom * free_bytes


def decide_checkpointing(
    preset: Preset, device: torch.device, n_parameters: int
) -> tuple[bool, str]:
    """(checkpoint the super-net?, why) for one process: the preset's explicit value, else
    off on anything but a GPU, else on when the estimated plain search step
    (``search_step_bytes``) does not fit the GPU's free memory (``search_needs_checkpoint``).
    Free memory is what the driver reports free plus what this process's allocator holds
    unused: the dataset is already on the GPU when the search starts, so it is counted.

    Checkpointing costs about one more forward per pass, a waste on a GPU with the memory
    for the plain step (a paper search needs ~21 GiB: an 80 GB GPU runs it plainly, a 24 GB
    one cannot). Outputs and gradients are the same either way, so a resumed run may
    decide differently and still resume exactly."""
    if preset.checkpoint is not None:
        return preset.checkpoint, "set by the preset or --checkpoint/--no-checkpoint"
    if device.type != "cuda":
        return False, f"not needed on {device.type}"
    needed = search_step_bytes(preset, n_parameters)
    free = torch.cuda.mem_get_info(device)[0]
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    checkpoint = search_needs_checkpoint(needed, free)
    gib = 2.0**30
    return checkpoint, (
        f"a plain search step needs about {needed / gib:.1f} GiB, {free / gib:.1f} GiB are "
        f"free on {device}"
    )
