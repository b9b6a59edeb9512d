"""Decoding a searched super-net into a genotype (paper Sec. 3.2.3).

Cell level: on every edge keep the op with the largest alpha. There is no ``none`` op to
exclude, so this is a plain argmax. Network level: the grid becomes a DAG whose edge
src -> block weighs -log softmax(beta of block)[src], so a path's weight is minus the log of
the product of the betas along it; the K shortest stem -> head paths (networkx's
``shortest_simple_paths``, Yen's generalisation of Dijkstra to the top K) are kept and the
derived network is the union of their edges.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import islice, pairwise

import networkx as nx
import torch

from manas_infer.train.cells import CELL_TYPES
from manas_infer.train.genotype import Genotype
from manas_infer.train.operations import PRIMITIVES
from manas_infer.train.supernet import STEM, Block, SuperNet, grid, head_node

# The search's rule against collapse into skips (paper Sec. 4.2): stop once a derived cell
# would hold more than this many.
MAX_SKIP_CONNECTIONS = 2

Path = tuple[Block, ...]


def derive_cells(alphas: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, ...]]:
    """{cell type: op per edge}, the op with the largest alpha on each edge."""
    return {
        cell_type: tuple(
            PRIMITIVES[op] for op in alphas[cell_type].detach().argmax(dim=-1).tolist()
        )
        for cell_type in CELL_TYPES
    }


def count_skip_connections(cell_ops: Sequence[str]) -> int:
    """How many edges of a derived cell are ``skip_connect``."""
    return sum(op == "skip_connect" for op in cell_ops)


def _neg_log_softmax(logits: Mapping[str, float]) -> dict[str, float]:
    largest = max(logits.values())
    log_sum = largest + math.log(sum(math.exp(logit - largest) for logit in logits.values()))
    return {name: log_sum - logit for name, logit in logits.items()}


def grid_graph(betas_by_block: Mapping[Block, Mapping[str, float]], L: int, D: int) -> nx.DiGraph:
    """The grid as a weighted DAG: nodes STEM, every block, ``head_node(L)``.

    ``betas_by_block[block]`` holds the raw beta logits {cell type: logit} of that block's
    sources, exactly the types ``grid(L, D)`` lists. The head edge weighs 0.
    """
    graph = nx.DiGraph()
    for block, sources in grid(L, D).items():
        logits = betas_by_block.get(block)
        if logits is None or set(logits) != set(sources):
            raise ValueError(
                f"betas for block {block} must cover its sources {sorted(sources)}, "
                f"got {None if logits is None else sorted(logits)}"
            )
        cost = _neg_log_softmax({cell_type: float(logits[cell_type]) for cell_type in sources})
        for cell_type, source in sources.items():
            graph.add_edge(source, block, weight=cost[cell_type], cell=cell_type)
    graph.add_edge((L, 1), head_node(L), weight=0.0, cell=None)
    return graph


def k_shortest_paths(
    betas_by_block: Mapping[Block, Mapping[str, float]], L: int, D: int, K: int
) -> list[Path]:
    """The K lightest stem -> head paths, lightest first (fewer if the grid has fewer)."""
    if K < 1:
        raise ValueError(f"K must be >= 1, got {K}")
    graph = grid_graph(betas_by_block, L, D)
    paths = nx.shortest_simple_paths(graph, STEM, head_node(L), weight="weight")
    return [tuple(path) for path in islice(paths, K)]


def derive_genotype(supernet: SuperNet, K: int = 5) -> Genotype:
    """The derived architecture: argmax cells plus the union of the K shortest paths."""
    paths = k_shortest_paths(supernet.betas_by_block(), supernet.L, supernet.D, K)
    edges = {edge for path in paths for edge in pairwise(path)}
    return Genotype(
        C=supernet.C,
        L=supernet.L,
        D=supernet.D,
        P=supernet.P,
        cells=derive_cells(supernet.alphas),
        edges=tuple(sorted(edges)),
    )
