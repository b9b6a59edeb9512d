"""One process per GPU with torchrun: who am I, on which device, and who writes files.

``torchrun --nproc_per_node=N -m manas_infer.cli train ...`` sets RANK, WORLD_SIZE and
LOCAL_RANK; without them training runs in this one process. NCCL on GPUs, gloo on CPUs
(which also lets the multi-process path be tested on a machine without a GPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, pictures and progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed(device: torch.device) -> DistContext:
    """Join the torchrun process group if there is one, else a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(device, rank, world)


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_flag(ctx: DistContext, flag: bool) -> bool:
    """The main process's decision (e.g. stop the search), the same on every process."""
    if not ctx.active:
        return flag
    t = torch.tensor([int(flag)], device=ctx.device)
    dist.broadcast(t, 0)
    return bool(t.item())
