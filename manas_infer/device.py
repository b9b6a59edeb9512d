"""Choosing where torch work runs: one rule for every command."""

from __future__ import annotations

import re

import torch

_CUDA = re.compile(r"cuda(?::(\d+))?")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when a usable GPU is present, else CPU; ``cuda`` or ``cuda:N`` (one
    GPU among several) without one, or with an index torch does not see, fails with a clear
    message rather than a deep CUDA error later. A bare ``cuda`` keeps no index: the current
    GPU, or under torchrun the process's own (LOCAL_RANK, see train/distributed.py)."""
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = _CUDA.fullmatch(name)
    if match is None:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N (N: GPU index)")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for, but torch sees no CUDA GPU here")
    if match.group(1) is None:
        return torch.device("cuda")
    return torch.device("cuda", check_cuda_index(int(match.group(1)), f"--device {name}"))


def check_cuda_index(index: int, who: str) -> int:
    """``index`` if torch sees that many GPUs; else a ValueError naming ``who`` and the
    GPUs there are (CUDA_VISIBLE_DEVICES renumbers them from 0)."""
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        seen = f"cuda:0 to cuda:{count - 1}" if count > 1 else "cuda:0 only"
        raise ValueError(
            f"{who}: there is no GPU {index}; torch sees {count} GPU{'s' * (count != 1)} "
            f"({seen}; CUDA_VISIBLE_DEVICES renumbers the visible GPUs from 0)"
        )
    return index
