"""One process per GPU with torchrun: who am I, on which device, and who writes files.

``torchrun --nproc_per_node=N -m manas_infer train ...`` sets RANK, WORLD_SIZE and
LOCAL_RANK; without them training runs in this one process. NCCL on GPUs, gloo on CPUs
(which also lets the multi-process path be tested on a machine without a GPU). Each process
uses the GPU of its LOCAL_RANK; to train on some GPUs of a machine, pick them with
CUDA_VISIBLE_DEVICES (torchrun) or, with one process, ``--device cuda:N``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from manas_infer.device import check_cuda_index

# How long a collective may wait for the slowest process before the group aborts.
#
# The longest expected wait is the first: the main process prepares the dataset (reads and
# decodes every DICOM slice, simulates the low dose of each: minutes on a GPU, an hour or
# more for a large set on CPUs) while the others wait in a barrier, then they read the cache
# it wrote while it waits in DistributedDataParallel's first broadcast; the main process
# alone also evaluates the test split at the end. Under NCCL's default of 10 minutes such
# a wait aborts the run. So the group is created with a timeout that fits these waits
# rather than preparing the data before the group exists (every process polling a
# ready-marker in the cache): that would need a second, file-system channel to carry the
# main process's refusals (bad input, a full disk) to the waiting ones, and it would still
# leave the end-of-run evaluation under the short timeout. The cost of a long timeout is
# only how long a truly hung group (a deadlock, not a crash) holds its GPUs before it fails:
# a process that dies makes torchrun stop the others at once, whatever the timeout.
DEFAULT_TIMEOUT = timedelta(hours=2)


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


def init_distributed(device: torch.device, timeout: timedelta = DEFAULT_TIMEOUT) -> DistContext:
    """Join the torchrun process group if there is one (every collective may wait up to
    ``timeout``, see DEFAULT_TIMEOUT), else a single-process context.

    On GPUs each torchrun process takes the GPU of its LOCAL_RANK: a bare ``cuda`` device is
    given that index; an explicit ``cuda:N`` is refused there (N processes cannot share one
    index: choose GPUs with CUDA_VISIBLE_DEVICES). A single process keeps the index it was
    given and makes it the current device, so work that allocates on "the" GPU lands there.
    ValueError for a GPU that does not exist.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        return DistContext(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index is not None:
            raise ValueError(
                f"--device {device} with torchrun ({world} processes): each process uses the "
                "GPU of its LOCAL_RANK; give --device cuda (or auto) and choose the GPUs with "
                "CUDA_VISIBLE_DEVICES"
            )
        device = torch.device(
            "cuda", check_cuda_index(local, f"torchrun process LOCAL_RANK={local}")
        )
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
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
    shared = torch.tensor([int(flag)], device=ctx.device)
    dist.broadcast(shared, 0)
    return bool(shared.item())


def any_flag(ctx: DistContext, flag: bool) -> bool:
    """True on every process if it is true on any (e.g. one GPU is short of memory, one
    process saw a non-finite loss): a decision all processes must take together."""
    if not ctx.active:
        return flag
    highest = torch.tensor([int(flag)], device=ctx.device)
    dist.all_reduce(highest, op=dist.ReduceOp.MAX)
    return bool(highest.item())


def share_from_main(ctx: DistContext, obj: object) -> object:
    """The main process's ``obj`` on every process (picklable; e.g. the run directory it
    created). A single process gets ``obj``. Collective: every process must call it."""
    if not ctx.active:
        return obj
    shared = [obj]
    dist.broadcast_object_list(shared, 0)
    return shared[0]


def gather_to_main(ctx: DistContext, obj: object) -> list | None:
    """Every process's ``obj`` in rank order on the main process; None on the others.
    A single process gets ``[obj]``. Collective: every process must call it."""
    if not ctx.active:
        return [obj]
    found: list | None = [None] * ctx.world if ctx.is_main else None
    dist.gather_object(obj, found, dst=0)
    return found


def data_parallel(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``model`` in DistributedDataParallel under torchrun, so that its backward averages
    the gradients of every process; the model itself in a single process."""
    if not ctx.active:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
