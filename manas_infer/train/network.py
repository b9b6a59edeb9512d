"""The derived network: plain torch modules for exactly what a genotype keeps.

No architecture parameters and no beta weighting: a block reached by several kept edges
is the plain sum of those cells' outputs. The paper does not say how kept inputs are
combined after decoding; a plain sum is the standard discrete choice (the betas chose the
edges, they are not part of the derived net) and retraining from scratch learns any scale
it needs in the cells' own convolutions. The module structure and the forward order are
fixed at construction, so tracing for ONNX records the same graph for every input size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from manas_infer.train.cells import DerivedCell
from manas_infer.train.genotype import Genotype
from manas_infer.train.init import initialise
from manas_infer.train.supernet import (
    STEM,
    Block,
    block_key,
    cell_type_between,
    check_input,
    depth_width,
)


class DerivedNetwork(nn.Module):
    """Stem -> the kept blocks, layer by layer -> head, plus the global residual."""

    def __init__(self, genotype: Genotype) -> None:
        super().__init__()
        self.genotype = genotype
        self.D = genotype.D
        self.size_multiple = 2 ** (genotype.D - 1)
        self.stem = nn.Conv2d(1, genotype.C, 3, padding=1)
        self.cells = nn.ModuleDict()
        inputs: dict[Block, list[tuple[str, Block]]] = {}
        for src, dst in genotype.edges:
            if dst == genotype.head:
                continue
            cell_type = cell_type_between(src, dst)
            key = f"{block_key(dst)}_{cell_type}"
            width = depth_width(genotype.C, dst[1])
            self.cells[key] = DerivedCell(cell_type, width, genotype.cells[cell_type])
            inputs.setdefault(dst, []).append((key, src))
        # (block, [(cell key, source block)]) in layer order: a fixed, tensor-free schedule.
        self._plan: list[tuple[Block, list[tuple[str, Block]]]] = sorted(inputs.items())
        self._last: Block = (genotype.L, 1)
        self.head = nn.Conv2d(genotype.C, 1, 3, padding=1)
        initialise(self, self.head)  # He init, small head: see train/init.py

    def forward(self, x: Tensor) -> Tensor:
        return x + self.residual(x)

    def load_grown(self, state_dict: dict[str, Tensor]) -> list[str]:
        """Start from the weights of a net whose genotype this one grows (``grows``): the
        cells both have take their trained weights; a new cell that feeds a block the old net
        had starts with a zero output projection, so the grown net first computes exactly
        what the old one did and training opens the new path from there. The new cells'
        keys, sorted."""
        missing, unexpected = self.load_state_dict(state_dict, strict=False)
        if unexpected or any(not key.startswith("cells.") for key in missing):
            raise ValueError(
                "these weights are not of a genotype this one grows: "
                f"unexpected {sorted(unexpected)}, missing {sorted(missing)}"
            )
        new = sorted({key.split(".")[1] for key in missing})
        for _, inputs in self._plan:
            if any(key not in new for key, _ in inputs):  # a block the old net had
                for key, _ in inputs:
                    if key in new:
                        with torch.no_grad():
                            self.cells[key].project.weight.zero_()
                            self.cells[key].project.bias.zero_()
        return new

    def residual(self, x: Tensor) -> Tensor:
        """The head's output alone: what the net adds to its input (minus the noise).

        Separate so that a float16 export can run the body in half precision and still add
        the residual to the float32 input (see export/graph.py).
        """
        check_input(x, self.D)
        feats: dict[Block, Tensor] = {STEM: self.stem(x)}
        for block, inputs in self._plan:
            z = None
            for key, src in inputs:
                y = self.cells[key](feats[src])
                z = y if z is None else z + y
            feats[block] = z
        return self.head(feats[self._last])
