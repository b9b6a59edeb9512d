"""The multi-level super-net (paper Sec. 3.2.2-3.2.3) and the grid both it and decoding use.

Layers l = 1..L, depths d = 1..D; depth d runs at H / 2^(d-1) with C 2^(d-1) channels. Block
(l, d) = b_e f_e(Z_{d-1}^{l-1}) + b_t f_t(Z_d^{l-1}) + b_c f_c(Z_{d+1}^{l-1}), the betas
softmaxed over the sources that exist. The stem output is Z_1^0, so the stem is "block" (0, 1)
and the head reads Z_1^L; decoding names the head (L + 1, 1) so every grid node is a tuple.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as run_checkpointed

from manas_infer.train.cells import CELL_TYPES, SearchCell, n_edges
from manas_infer.train.init import initialise
from manas_infer.train.operations import PRIMITIVES

Block = tuple[int, int]  # (layer, depth)

STEM: Block = (0, 1)

# Stem width for the paper preset (L = 12, D = 4); the paper's value is lost with its Table 1.
# At 8, a derived net lands near the paper's reported 1.7-3.0 M parameters (a few MB in
# float32) and the super-net's training step (batch 2, 256 x 256) stays around 25 GiB of
# activations; 16 would give 10-15 M-parameter derived nets and about 60 GiB.
DEFAULT_C = 8

# Source depth of each cell type relative to the block it feeds (the order of the betas).
SOURCE_OFFSET: dict[str, int] = {"expand": -1, "transfer": 0, "compress": 1}
assert tuple(SOURCE_OFFSET) == CELL_TYPES


def head_node(L: int) -> Block:
    """The head as a grid node: after layer L, at depth 1."""
    return (L + 1, 1)


def depth_width(C: int, d: int) -> int:
    """Channels at depth d: doubled at every step down."""
    return C * 2 ** (d - 1)


def check_grid(L: int, D: int) -> None:
    """ValueError unless depth D is reachable: down D - 1 and back up takes 2 (D - 1) layers."""
    if L < 1 or D < 1:
        raise ValueError(f"need L >= 1 and D >= 1, got L={L}, D={D}")
    if D - 1 > L // 2:
        raise ValueError(
            f"depth D={D} is unreachable with L={L} layers: going down and back up to depth 1 "
            f"needs L >= 2 (D - 1) = {2 * (D - 1)}"
        )


def block_exists(block: Block, L: int, D: int) -> bool:
    """Reachable from the stem (d - 1 <= l) and can still return to depth 1 by layer L."""
    layer, d = block
    return 0 <= layer <= L and 1 <= d <= D and d - 1 <= layer and d - 1 <= L - layer


def grid(L: int, D: int) -> dict[Block, dict[str, Block]]:
    """Every block of the grid, layer by layer, with its sources {cell type: source block}.

    The one source of truth for which blocks and edges exist: the super-net builds its cells
    and betas from it, decoding its graph, the derived network and the genotype check theirs.
    """
    check_grid(L, D)
    table: dict[Block, dict[str, Block]] = {}
    for layer in range(1, L + 1):
        for d in range(1, D + 1):
            if block_exists((layer, d), L, D):
                sources = {
                    cell_type: (layer - 1, d + offset)
                    for cell_type, offset in SOURCE_OFFSET.items()
                }
                table[(layer, d)] = {
                    cell_type: source
                    for cell_type, source in sources.items()
                    if block_exists(source, L, D)
                }
    return table


def cell_type_between(src: Block, dst: Block) -> str:
    """The cell type of the grid edge src -> dst (dst one layer later, at most one depth off)."""
    for cell_type, offset in SOURCE_OFFSET.items():
        if src == (dst[0] - 1, dst[1] + offset):
            return cell_type
    raise ValueError(f"{src} -> {dst} is not a grid edge")


def block_key(block: Block) -> str:
    """A module/parameter name for a block: ModuleDict keys cannot be tuples."""
    return f"L{block[0]}_D{block[1]}"


def check_input(x: Tensor, D: int) -> None:
    """ValueError unless x is [N, 1, H, W] with H and W multiples of 2^(D-1).

    Skipped while tracing or exporting: the check is on Python ints and must not be baked into
    a graph with dynamic H and W (padding is the export's and the runtime's job).
    """
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return
    compiling = getattr(torch.compiler, "is_compiling", None)
    if compiling is not None and compiling():
        return
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected a [N, 1, H, W] image batch, got shape {list(x.shape)}")
    multiple = 2 ** (D - 1)
    H, W = x.shape[-2:]
    if H % multiple or W % multiple:
        raise ValueError(
            f"input {H}x{W} does not fit a D={D} network: height and width must be multiples "
            f"of 2^(D-1) = {multiple} (the grid halves the resolution D-1 times); pad the image"
        )


class SuperNet(nn.Module):
    """Every cell of the L x D grid, mixed by alphas (per cell type) and betas (per block).

    The head predicts the noise: output = input + head(Z_1^L) (global residual).

    ``checkpoint=True`` runs every block under activation checkpointing while training with
    gradients: only the block outputs are kept between forward and backward, and each block's
    inside (every mixed op of up to three cells) is recomputed during backward, one block at a
    time. That costs about one extra forward per pass and cuts the paper preset's search step
    from an estimated ~21 GiB of tensors to ~1.6 GiB (bench/results/search.md): the difference
    between needing a 48 GB GPU and fitting a 24 GB one. Outputs and gradients are the same
    either way; evaluation, no-grad passes and export never checkpoint.
    """

    def __init__(self, C: int, L: int, D: int, P: int = 3, checkpoint: bool = False) -> None:
        super().__init__()
        self.C, self.L, self.D, self.P = C, L, D, P
        self.checkpoint = checkpoint
        self.size_multiple = 2 ** (D - 1)
        self.grid = grid(L, D)
        self.stem = nn.Conv2d(1, C, 3, padding=1)
        self.cells = nn.ModuleDict(
            {
                f"{block_key(block)}_{cell_type}": SearchCell(
                    cell_type, depth_width(C, block[1]), P
                )
                for block, sources in self.grid.items()
                for cell_type in sources
            }
        )
        self.head = nn.Conv2d(C, 1, 3, padding=1)
        initialise(self, self.head)  # He init, small head: see train/init.py
        self.alphas = nn.ParameterDict(
            {
                cell_type: nn.Parameter(1e-3 * torch.randn(n_edges(P), len(PRIMITIVES)))
                for cell_type in CELL_TYPES
            }
        )
        # One beta per existing source; a single-source block's beta is kept for uniformity
        # (softmax makes it 1, so it gets a zero gradient and never moves).
        self.betas = nn.ParameterDict(
            {
                block_key(block): nn.Parameter(1e-3 * torch.randn(len(sources)))
                for block, sources in self.grid.items()
            }
        )

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.D)
        checkpointed = self.checkpoint and self.training and torch.is_grad_enabled()
        feats: dict[Block, Tensor] = {STEM: self.stem(x)}
        for block, sources in self.grid.items():
            inputs = [feats[src] for src in sources.values()]
            if checkpointed:
                # Non-reentrant: parameters used inside (cell weights, alphas, betas) get their
                # gradients without being passed in, and it composes with autocast and DDP.
                feats[block] = run_checkpointed(self._block, block, *inputs, use_reentrant=False)
            else:
                feats[block] = self._block(block, *inputs)
        return x + self.head(feats[(self.L, 1)])

    def _block(self, block: Block, *inputs: Tensor) -> Tensor:
        """Z of one block from its source features, given in ``self.grid[block]`` order."""
        key = block_key(block)
        betas = F.softmax(self.betas[key], dim=0)
        z = None
        for beta, cell_type, features in zip(betas, self.grid[block], inputs, strict=True):
            y = beta * self.cells[f"{key}_{cell_type}"](features, self.alphas[cell_type])
            z = y if z is None else z + y
        assert z is not None  # every block in the grid has at least one source
        return z

    def weights(self) -> list[nn.Parameter]:
        """The network weights (first optimiser); disjoint from ``arch_parameters``."""
        arch = {id(parameter) for parameter in self.arch_parameters()}
        return [parameter for parameter in self.parameters() if id(parameter) not in arch]

    def arch_parameters(self) -> list[nn.Parameter]:
        """Alphas (expand, transfer, compress) then every block's betas (second optimiser)."""
        return [*self.alphas.values(), *self.betas.values()]

    def betas_by_block(self) -> dict[Block, dict[str, float]]:
        """Raw beta logits as {block: {cell type: logit}}, the form decoding takes."""
        return {
            block: dict(zip(sources, self.betas[block_key(block)].tolist(), strict=True))
            for block, sources in self.grid.items()
        }
