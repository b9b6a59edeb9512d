"""The MANAS cell (paper Sec. 3.2.1): P nodes over a preprocessed input, in three types.

N_0 is the cell input brought to the cell's own resolution and width by a preprocessing layer
that depends on the cell type; node i sums one edge from every earlier node; the output is a
1x1 conv over Concat(N_1..N_P) back to the cell width. The search cell puts a ``MixedOp`` on
every edge and takes its alphas from the super-net (one set per cell type, shared by every
block); the derived cell puts one op per edge. Both wire their nodes with ``compute_nodes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manas_infer.train.operations import OPS, PRIMITIVES

# Where the input of each cell type comes from, relative to the block it feeds (depth d):
# expand from d-1 (twice the resolution, half the channels), transfer from d, compress from d+1.
CELL_TYPES: tuple[str, ...] = ("expand", "transfer", "compress")


def cell_edges(P: int) -> list[tuple[int, int]]:
    """The edges (j, i), j < i, of a P-node cell, in the order of alpha rows and genotype ops.

    For P = 3: (0,1), (0,2), (1,2), (0,3), (1,3), (2,3).
    """
    return [(j, i) for i in range(1, P + 1) for j in range(i)]


def n_edges(P: int) -> int:
    """P (P + 1) / 2: every node takes one edge from each earlier node, N_0 included."""
    return P * (P + 1) // 2


def nodes_for(n: int) -> int:
    """The P whose cell has ``n`` edges; ValueError when ``n`` is not such a count."""
    P = 1
    while n_edges(P) < n:
        P += 1
    if n_edges(P) != n:
        raise ValueError(f"{n} edges is not a cell: a P-node cell has P (P + 1) / 2 edges")
    return P


def compute_nodes(n0: Tensor, P: int, edge: Callable[[int, Tensor], Tensor]) -> list[Tensor]:
    """[N_1 .. N_P] with N_i = sum_{j<i} edge(k, N_j), k indexing ``cell_edges(P)``."""
    nodes = [n0]
    sums: dict[int, Tensor] = {}
    for k, (j, i) in enumerate(cell_edges(P)):
        y = edge(k, nodes[j])
        sums[i] = y if i not in sums else sums[i] + y
        if j == i - 1:  # the last edge into node i: N_i is complete
            nodes.append(sums.pop(i))
    return nodes[1:]


def preprocess(cell_type: str, C: int) -> nn.Module:
    """The layer that brings a cell's input to the cell's resolution and width ``C``.

    Compress does its 1x1 conv at the low resolution and then upsamples: the two commute,
    and that order costs a quarter of the FLOPs. Nearest upsampling, not bilinear: it exports
    to ONNX as a plain Resize whose result every runtime computes identically (bilinear
    depends on coordinate-transform conventions that runtimes have disagreed on).
    """
    if cell_type == "expand":
        if C % 2:
            raise ValueError(f"an expand cell needs an even width, got {C}")
        return nn.Sequential(nn.ReLU(), nn.Conv2d(C // 2, C, 3, stride=2, padding=1))
    if cell_type == "transfer":
        return nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 1))
    if cell_type == "compress":
        return nn.Sequential(
            nn.ReLU(), nn.Conv2d(2 * C, C, 1), nn.Upsample(scale_factor=2, mode="nearest")
        )
    raise ValueError(f"unknown cell type {cell_type!r}; expected one of {CELL_TYPES}")


class MixedOp(nn.Module):
    """Every candidate op on one edge, summed with softmaxed weights (the continuous relaxation)."""

    def __init__(self, C: int) -> None:
        super().__init__()
        self.ops = nn.ModuleList(OPS[name](C) for name in PRIMITIVES)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        out = weights[0] * self.ops[0](x)
        for w, op in zip(weights[1:], self.ops[1:], strict=True):
            out = out + w * op(x)
        return out


class _Cell(nn.Module):
    """What search and derived cells share: preprocessing, node wiring, output projection."""

    def __init__(self, cell_type: str, C: int, P: int) -> None:
        super().__init__()
        self.cell_type, self.C, self.P = cell_type, C, P
        self.preprocess = preprocess(cell_type, C)
        self.project = nn.Conv2d(P * C, C, 1)

    def _run(self, x: Tensor, edge: Callable[[int, Tensor], Tensor]) -> Tensor:
        nodes = compute_nodes(self.preprocess(x), self.P, edge)
        return self.project(torch.cat(nodes, dim=1))


class SearchCell(_Cell):
    """A super-cell: a ``MixedOp`` on every edge, weighted by alphas the super-net passes in."""

    def __init__(self, cell_type: str, C: int, P: int = 3) -> None:
        super().__init__(cell_type, C, P)
        self.edges = nn.ModuleList(MixedOp(C) for _ in cell_edges(P))

    def forward(self, x: Tensor, alphas: Tensor) -> Tensor:
        """``alphas``: [n_edges, n_ops] logits of this cell type, softmaxed per edge here."""
        weights = F.softmax(alphas, dim=-1)
        return self._run(x, lambda k, h: self.edges[k](h, weights[k]))


class DerivedCell(_Cell):
    """A discrete cell: one op per edge, ``ops[k]`` on edge ``cell_edges(P)[k]``."""

    def __init__(self, cell_type: str, C: int, ops: Sequence[str]) -> None:
        unknown = [name for name in ops if name not in OPS]
        if unknown:
            raise ValueError(f"unknown op(s) {unknown}; expected names from {PRIMITIVES}")
        super().__init__(cell_type, C, nodes_for(len(ops)))
        self.ops = tuple(ops)
        self.edges = nn.ModuleList(OPS[name](C) for name in ops)

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x, lambda k, h: self.edges[k](h))
