"""The derived architecture as a small, versioned, human-readable JSON "genotype".

It holds everything needed to rebuild the derived network and nothing else: the super-net
size (C, L, D, P), one op per edge for each of the three cells, and the kept grid edges.
Grid nodes are (layer, depth); the stem is (0, 1) and the head (L + 1, 1), written "stem"
and "head" in the JSON. A genotype is validated whenever it is built, so a loaded one that
names an unknown op, has another version or does not connect the stem to the head fails
with one clear ValueError instead of a shape error deep inside torch.

Example (P = 3; cell edges are listed node j -> node i, N_0 being the preprocessed input)::

    {
      "format": "manas-genotype",
      "version": 1,
      "C": 16, "L": 12, "D": 4, "P": 3,
      "cells": {
        "expand": [
          {"from": 0, "to": 1, "op": "conv_3x3"},
          ...
        ],
        "transfer": [...],
        "compress": [...]
      },
      "edges": [
        {"from": "stem", "to": [1, 1]},
        {"from": [1, 1], "to": [2, 2]},
        ...
        {"from": [12, 1], "to": "head"}
      ]
    }
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manas_infer.train.cells import CELL_TYPES, cell_edges
from manas_infer.train.operations import PRIMITIVES
from manas_infer.train.supernet import STEM, Block, grid, head_node

GENOTYPE_VERSION = 1
FORMAT = "manas-genotype"
_FIELDS = {"format", "version", "C", "L", "D", "P", "cells", "edges"}


@dataclass(frozen=True, kw_only=True)
class Genotype:
    """A derived MANAS architecture.

    ``cells[t][k]`` is the op on edge ``cell_edges(P)[k]`` of cell type t. ``edges`` are the
    kept grid edges (src, dst), sorted, from the stem (0, 1) to the head (L + 1, 1).
    """

    version: int = GENOTYPE_VERSION
    C: int
    L: int
    D: int
    P: int
    cells: Mapping[str, tuple[str, ...]]
    edges: tuple[tuple[Block, Block], ...]

    def __post_init__(self) -> None:
        # Normalise containers so equality and hashing of the parts do not depend on input types.
        object.__setattr__(self, "cells", {name: tuple(ops) for name, ops in self.cells.items()})
        edges = tuple(sorted({(tuple(source), tuple(target)) for source, target in self.edges}))
        if len(edges) != len(self.edges):
            raise ValueError("genotype lists a grid edge twice")
        object.__setattr__(self, "edges", edges)
        _validate(self)

    @property
    def head(self) -> Block:
        return head_node(self.L)

    def to_json(self) -> str:
        """Indented JSON with one line per cell edge and per grid edge."""

        def node(block: Block) -> Any:
            return "stem" if block == STEM else "head" if block == self.head else list(block)

        cells = ",\n".join(
            f'    "{cell_type}": [\n'
            + ",\n".join(
                "      " + json.dumps({"from": j, "to": i, "op": op})
                for (j, i), op in zip(cell_edges(self.P), self.cells[cell_type], strict=True)
            )
            + "\n    ]"
            for cell_type in CELL_TYPES
        )
        edges = ",\n".join(
            "    " + json.dumps({"from": node(source), "to": node(target)})
            for source, target in self.edges
        )
        return (
            "{\n"
            f'  "format": "{FORMAT}",\n'
            f'  "version": {self.version},\n'
            f'  "C": {self.C}, "L": {self.L}, "D": {self.D}, "P": {self.P},\n'
            f'  "cells": {{\n{cells}\n  }},\n'
            f'  "edges": [\n{edges}\n  ]\n'
            "}\n"
        )

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        """Parse and validate; every problem is a ValueError naming what is wrong."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"genotype is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise ValueError("genotype JSON must be an object")
        if data.get("format", FORMAT) != FORMAT:
            raise ValueError(f"not a MANAS genotype: format is {data.get('format')!r}")
        if data.get("version") != GENOTYPE_VERSION:
            raise ValueError(
                f"unsupported genotype version {data.get('version')!r}; "
                f"this build reads version {GENOTYPE_VERSION}"
            )
        missing = sorted(_FIELDS - {"format"} - set(data))
        if missing:
            raise ValueError(f"genotype JSON is missing {missing}")
        unknown = sorted(set(data) - _FIELDS)
        if unknown:
            raise ValueError(f"genotype JSON has unknown field(s) {unknown}")
        for name in ("C", "L", "D", "P"):
            if not isinstance(data[name], int) or isinstance(data[name], bool):
                raise ValueError(f"genotype {name} must be an integer, got {data[name]!r}")
        L, P = data["L"], data["P"]
        try:
            cells = {
                cell_type: _parse_cell(cell_type, entries, P)
                for cell_type, entries in data["cells"].items()
            }
            edges = tuple(
                (_parse_node(edge["from"], L), _parse_node(edge["to"], L)) for edge in data["edges"]
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"malformed genotype JSON: {error!r}") from error
        return cls(
            version=data["version"], C=data["C"], L=L, D=data["D"], P=P, cells=cells, edges=edges
        )

    def grows(self, other: Genotype) -> bool:
        """True when this genotype is ``other`` with more kept grid edges (same size and
        cells): a net of it can start from a trained net of ``other``
        (``DerivedNetwork.load_grown``)."""
        same = (self.C, self.L, self.D, self.P, self.cells) == (
            other.C, other.L, other.D, other.P, other.cells
        )  # fmt: skip
        return same and set(other.edges) < set(self.edges)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error


def _parse_node(value: Any, L: int) -> Block:
    if value == "stem":
        return STEM
    if value == "head":
        return head_node(L)
    if isinstance(value, list) and len(value) == 2 and all(type(part) is int for part in value):
        return (value[0], value[1])
    raise ValueError(f"a grid node is 'stem', 'head' or [layer, depth], got {value!r}")


def _parse_cell(cell_type: str, entries: Sequence[Mapping[str, Any]], P: int) -> tuple[str, ...]:
    """Ops in ``cell_edges(P)`` order; entries may come in any order, each edge once."""
    by_edge = {(entry["from"], entry["to"]): entry["op"] for entry in entries}
    expected = cell_edges(P)
    if len(entries) != len(expected) or set(by_edge) != set(expected):
        raise ValueError(
            f"cell {cell_type!r} must list each edge of a {P}-node cell once: {expected}"
        )
    return tuple(by_edge[edge] for edge in expected)


def _validate(genotype: Genotype) -> None:
    if genotype.version != GENOTYPE_VERSION:
        raise ValueError(
            f"unsupported genotype version {genotype.version!r}; "
            f"this build reads {GENOTYPE_VERSION}"
        )
    for name in ("C", "P"):
        if getattr(genotype, name) < 1:
            raise ValueError(f"genotype {name} must be >= 1, got {getattr(genotype, name)}")
    table = grid(genotype.L, genotype.D)  # also checks L and D
    if set(genotype.cells) != set(CELL_TYPES):
        raise ValueError(
            f"genotype cells must be exactly {CELL_TYPES}, got {sorted(genotype.cells)}"
        )
    for cell_type, ops in genotype.cells.items():
        if len(ops) != len(cell_edges(genotype.P)):
            raise ValueError(
                f"cell {cell_type!r} has {len(ops)} ops; a P={genotype.P} cell has "
                f"{len(cell_edges(genotype.P))} edges"
            )
        unknown = [op for op in ops if op not in PRIMITIVES]
        if unknown:
            raise ValueError(f"cell {cell_type!r}: unknown op(s) {unknown}; known: {PRIMITIVES}")
    _check_network(genotype.edges, table, genotype.head)


def _check_network(
    edges: Sequence[tuple[Block, Block]], table: Mapping[Block, Mapping[str, Block]], head: Block
) -> None:
    """Every edge is a grid edge and lies on some stem -> head path of kept edges."""
    if not edges:
        raise ValueError("genotype keeps no grid edges")
    last = (head[0] - 1, 1)
    for source, target in edges:
        on_grid = target in table and source in table[target].values()
        if not ((target == head and source == last) or on_grid):
            raise ValueError(f"{source} -> {target} is not an edge of the grid")
    # Edges go one layer forward, so one sweep each way in layer order finds reachability.
    from_stem, to_head = {STEM}, {head}
    for source, target in edges:
        if source in from_stem:
            from_stem.add(target)
    for source, target in reversed(edges):
        if target in to_head:
            to_head.add(source)
    if head not in from_stem:
        raise ValueError("genotype edges do not connect the stem to the head")
    dangling = sorted({block for edge in edges for block in edge} - (from_stem & to_head))
    if dangling:
        raise ValueError(f"grid nodes {dangling} are not on a stem -> head path of kept edges")
