"""Pictures of a run: the derived architecture and the training curves.

Drawn on a bare ``matplotlib.figure.Figure`` (Agg canvas), never through pyplot: no global
figure state, no GUI backend, nothing to close, so a training loop on a headless server can
call these every epoch without leaking figures or touching the display.

The genotype picture follows the paper's figures: layers left to right, depth 1 (full
resolution) at the top, the whole grid drawn faintly so the kept path reads against the
space it was chosen from, kept edges coloured by the cell type that computes them; below,
the three derived cells as small DAGs with each edge labelled by its op.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch
from matplotlib.text import Annotation
from matplotlib.ticker import MaxNLocator

from manas_infer.train.cells import CELL_TYPES, cell_edges
from manas_infer.train.genotype import Genotype
from manas_infer.train.supernet import STEM, Block, cell_type_between, depth_width, grid

# One colour per cell type (colour-blind-safe Okabe-Ito hues), one for the head edge.
CELL_COLOURS: dict[str, str] = {"expand": "#0072B2", "transfer": "#009E73", "compress": "#D55E00"}
HEAD_COLOUR = "#444444"
FAINT = "#c8c8c8"
DPI = 120


@dataclass
class GenotypeArtists:
    """What ``draw_genotype`` drew, so tests (and callers) can check the picture's content.

    ``kept_edges`` holds one arrow per kept grid edge, ``cell_edges[t]`` one arrow per edge
    of derived cell t, keyed like ``Genotype.edges`` and ``cell_edges(P)``.
    """

    kept_edges: dict[tuple[Block, Block], Annotation] = field(default_factory=dict)
    cell_edges: dict[str, dict[tuple[int, int], FancyArrowPatch]] = field(default_factory=dict)
    edge_labels: dict[str, list[str]] = field(default_factory=dict)


def draw_genotype(genotype: Genotype) -> tuple[Figure, GenotypeArtists]:
    """The genotype figure and its artists, unsaved (``plot_genotype`` writes it)."""
    width = max(13.0, 1.0 + 0.75 * (genotype.L + 2))
    fig = Figure(
        figsize=(width, 3.6 + 0.55 * genotype.D + 0.25 * genotype.P), dpi=DPI, layout="constrained"
    )
    panels = fig.subfigures(2, 1, height_ratios=[1.1 + 0.55 * genotype.D, 1.2 + 0.4 * genotype.P])
    drawn = GenotypeArtists()
    _draw_grid(panels[0].add_subplot(), genotype, drawn)
    cell_axes = panels[1].subplots(1, len(CELL_TYPES))
    for ax, cell_type in zip(cell_axes, CELL_TYPES, strict=True):
        _draw_cell(ax, genotype, cell_type, drawn)
    panels[1].supxlabel(
        "cell level: N0 = the cell input at the block's resolution and width (expand: stride-2 "
        "3x3 conv from depth d-1; transfer: 1x1 conv; compress: 1x1 conv + 2x upsampling from "
        f"d+1);\neach node sums its incoming edges; output = 1x1 conv over "
        f"concat(N1..N{genotype.P}); dashed = skip_connect",
        fontsize=9,
        color="#444444",
    )
    fig.suptitle(
        f"MANAS genotype  C={genotype.C}  L={genotype.L}  D={genotype.D}  P={genotype.P}  "
        f"({len(genotype.edges)} kept grid edges)",
        fontsize=12,
    )
    return fig, drawn


def plot_genotype(genotype: Genotype, path: str | Path) -> Path:
    """Write the genotype figure (grid + the three cells) as a PNG; returns the path."""
    fig, _ = draw_genotype(genotype)
    return _save(fig, path)


def _grid_xy(node: Block) -> tuple[float, float]:
    layer, depth = node
    return float(layer), float(depth)


def _draw_grid(ax: Axes, genotype: Genotype, drawn: GenotypeArtists) -> None:
    """The network level: the search space faintly, the kept edges over it, the axes."""
    _draw_search_space(ax, genotype)
    _draw_kept_edges(ax, genotype, drawn)
    _label_grid(ax, genotype)


def _draw_search_space(ax: Axes, genotype: Genotype) -> None:
    """Every block and every edge the super-net had, faint."""
    table = grid(genotype.L, genotype.D)
    for block, sources in table.items():
        for source in sources.values():
            (x0, y0), (x1, y1) = _grid_xy(source), _grid_xy(block)
            ax.plot([x0, x1], [y0, y1], color=FAINT, lw=0.8, zorder=1)
    last = (genotype.L, 1)
    ax.plot(*zip(_grid_xy(last), _grid_xy(genotype.head), strict=True), color=FAINT, lw=0.8,
            zorder=1)  # fmt: skip
    xs, ys = zip(*(_grid_xy(block) for block in table), strict=True)
    ax.scatter(xs, ys, s=28, color="white", edgecolor=FAINT, zorder=2)


def _draw_kept_edges(ax: Axes, genotype: Genotype, drawn: GenotypeArtists) -> None:
    """The kept path: each edge coloured by the cell type that computes it, the kept
    blocks dark, the stem and the head named."""
    head = genotype.head
    for source, target in genotype.edges:
        cell_type = None if target == head else cell_type_between(source, target)
        colour = HEAD_COLOUR if cell_type is None else CELL_COLOURS[cell_type]
        drawn.kept_edges[(source, target)] = ax.annotate(
            "",
            xy=_grid_xy(target),
            xytext=_grid_xy(source),
            arrowprops={
                "arrowstyle": "-|>",
                "color": colour,
                "lw": 2.2,
                "mutation_scale": 13,
                "shrinkA": 6,
                "shrinkB": 6,
            },
            zorder=3,
        )
    kept_blocks = {block for edge in genotype.edges for block in edge} - {STEM, head}
    if kept_blocks:
        kept_x, kept_y = zip(*(_grid_xy(block) for block in sorted(kept_blocks)), strict=True)
        ax.scatter(kept_x, kept_y, s=46, color="#222222", zorder=4)
    for block, name in ((STEM, "stem"), (head, "head")):
        x, y = _grid_xy(block)
        ax.scatter([x], [y], s=150, marker="s", color="#222222", zorder=4)
        ax.annotate(
            name,
            (x, y),
            xytext=(0, 11),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=10,
            weight="bold",
        )


def _label_grid(ax: Axes, genotype: Genotype) -> None:
    """Layers and depths on the axes (depth 1 at the top, as in the paper), the legend."""
    layers, depths = genotype.L, genotype.D
    ax.set_xticks(range(layers + 2), ["stem", *map(str, range(1, layers + 1)), "head"])
    ax.set_yticks(
        range(1, depths + 1),
        [
            f"{depth}  (1/{2 ** (depth - 1)}, {depth_width(genotype.C, depth)} ch)"
            for depth in range(1, depths + 1)
        ],
    )
    ax.set_xlim(-0.6, layers + 1.6)
    ax.set_ylim(depths + 0.5, 0.35)  # depth 1 at the top, as in the paper's figures
    ax.set_xlabel("layer")
    ax.set_ylabel("depth (resolution, width)")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    handles = [
        Line2D([], [], color=CELL_COLOURS[cell_type], lw=2.2, label=f"{cell_type} cell")
        for cell_type in CELL_TYPES
    ]
    handles += [
        Line2D([], [], color=HEAD_COLOUR, lw=2.2, label="to head"),
        Line2D([], [], color=FAINT, lw=1.0, marker="o", mfc="white", label="grid (not kept)"),
    ]
    ax.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, frameon=False
    )
    ax.set_title("network level: kept edges of the L x D grid", fontsize=11)


def _draw_cell(ax: Axes, genotype: Genotype, cell_type: str, drawn: GenotypeArtists) -> None:
    """Nodes N0..NP on a line; edge j -> i straight when adjacent, else an arc whose height
    grows with its span, alternating above and below so the op labels do not collide."""
    colour = CELL_COLOURS[cell_type]
    step = 1.5  # node spacing in units of arc height: room for an op name between two nodes
    position = {node: (step * node, 0.0) for node in range(genotype.P + 1)}
    arrows: dict[tuple[int, int], FancyArrowPatch] = {}
    labels: list[str] = []
    top = 0.0
    for (j, i), op in zip(cell_edges(genotype.P), genotype.cells[cell_type], strict=True):
        (x0, y0), (x1, y1) = position[j], position[i]
        # Height of the arc's middle; arc3 puts it at rad * span / 2 (equal aspect below
        # makes display and data geometry agree, so the label sits on its arc).
        bulge = 0.35 * (i - j - 1) * (1 if j % 2 == 0 else -1)
        rad = -2 * bulge / (x1 - x0)
        arrow = FancyArrowPatch(
            (x0, y0),
            (x1, y1),
            connectionstyle=f"arc3,rad={rad}",
            arrowstyle="-|>",
            mutation_scale=12,
            color=colour,
            lw=1.6,
            linestyle="--" if op == "skip_connect" else "-",
            shrinkA=9,
            shrinkB=9,
            zorder=2,
        )
        ax.add_patch(arrow)
        arrows[(j, i)] = arrow
        top = max(top, abs(bulge))
        ax.text(
            (x0 + x1) / 2,
            bulge,
            op,
            ha="center",
            va="center",
            fontsize=8,
            zorder=4,
            bbox={
                "boxstyle": "round,pad=0.2",
                "fc": "white",
                "ec": colour,
                "lw": 0.6,
                "ls": "--" if op == "skip_connect" else "-",
            },
        )
        labels.append(op)
    for node, (x, y) in position.items():
        ax.scatter([x], [y], s=260, color="white", edgecolor="#222222", lw=1.3, zorder=3)
        ax.text(x, y, f"N{node}", ha="center", va="center", fontsize=8, weight="bold", zorder=5)
    drawn.cell_edges[cell_type] = arrows
    drawn.edge_labels[cell_type] = labels
    ax.set_title(f"{cell_type} cell", fontsize=11, color=colour, weight="bold")
    ax.set_xlim(-0.35, step * genotype.P + 0.35)
    ax.set_ylim(-(top + 0.3), top + 0.3)
    ax.set_aspect("equal")
    ax.set_axis_off()


def _panel(name: str) -> str:
    """Which axes a curve belongs on: metrics by name, anything else is a loss."""
    lower = name.lower()
    if "psnr" in lower:
        return "PSNR (dB)"
    if "ssim" in lower:
        return "SSIM"
    return "loss"


def plot_curves(history: Mapping[str, Sequence[float]], path: str | Path) -> Path:
    """Per-epoch curves, one line per history key; losses (log scale) and metrics on
    separate axes because their units differ. Empty curves are skipped; with nothing to draw
    the picture says so rather than failing a run that has just started."""
    curves = {
        name: [float(value) for value in values] for name, values in history.items() if values
    }
    panels: dict[str, dict[str, list[float]]] = {}
    for name, values in curves.items():
        panels.setdefault(_panel(name), {})[name] = values
    order = sorted(panels, key=lambda panel: (panel != "loss", panel))
    columns = max(1, len(order))
    fig = Figure(figsize=(5.2 * columns, 4.0), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, columns, squeeze=False)[0]
    if not order:
        axes[0].text(0.5, 0.5, "no epochs recorded yet", ha="center", va="center")
        axes[0].set_axis_off()
    for ax, panel in zip(axes[: len(order)], order, strict=True):
        for name, values in panels[panel].items():
            epochs = range(1, len(values) + 1)
            ax.plot(epochs, values, marker="o" if len(values) < 30 else None, ms=3, label=name)
        finite = [
            value for values in panels[panel].values() for value in values if math.isfinite(value)
        ]
        if panel == "loss" and finite and min(finite) > 0:
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(panel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=9)
        ax.set_title({"loss": "training losses"}.get(panel, f"validation {panel}"), fontsize=11)
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
