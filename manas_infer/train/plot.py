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
    g = genotype
    width = max(13.0, 1.0 + 0.75 * (g.L + 2))
    fig = Figure(figsize=(width, 3.6 + 0.55 * g.D + 0.25 * g.P), dpi=DPI, layout="constrained")
    panels = fig.subfigures(2, 1, height_ratios=[1.1 + 0.55 * g.D, 1.2 + 0.4 * g.P])
    drawn = GenotypeArtists()
    _draw_grid(panels[0].add_subplot(), g, drawn)
    cell_axes = panels[1].subplots(1, len(CELL_TYPES))
    for ax, t in zip(cell_axes, CELL_TYPES, strict=True):
        _draw_cell(ax, g, t, drawn)
    panels[1].supxlabel(
        "cell level: N0 = the cell input at the block's resolution and width (expand: stride-2 "
        "3x3 conv from depth d-1; transfer: 1x1 conv; compress: 1x1 conv + 2x upsampling from "
        f"d+1);\neach node sums its incoming edges; output = 1x1 conv over concat(N1..N{g.P}); "
        "dashed = skip_connect",
        fontsize=9,
        color="#444444",
    )
    fig.suptitle(
        f"MANAS genotype  C={g.C}  L={g.L}  D={g.D}  P={g.P}  ({len(g.edges)} kept grid edges)",
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


def _draw_grid(ax: Axes, g: Genotype, drawn: GenotypeArtists) -> None:
    table = grid(g.L, g.D)
    head = g.head
    last = (g.L, 1)
    # The search space, faint: every block and every edge the super-net had.
    for block, sources in table.items():
        for src in sources.values():
            (x0, y0), (x1, y1) = _grid_xy(src), _grid_xy(block)
            ax.plot([x0, x1], [y0, y1], color=FAINT, lw=0.8, zorder=1)
    ax.plot(*zip(_grid_xy(last), _grid_xy(head), strict=True), color=FAINT, lw=0.8, zorder=1)
    xs, ys = zip(*(_grid_xy(b) for b in table), strict=True)
    ax.scatter(xs, ys, s=28, color="white", edgecolor=FAINT, zorder=2)

    kept_nodes = {n for e in g.edges for n in e} - {STEM, head}
    for src, dst in g.edges:
        t = None if dst == head else cell_type_between(src, dst)
        colour = HEAD_COLOUR if t is None else CELL_COLOURS[t]
        drawn.kept_edges[(src, dst)] = ax.annotate(
            "",
            xy=_grid_xy(dst),
            xytext=_grid_xy(src),
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
    if kept_nodes:
        kx, ky = zip(*(_grid_xy(b) for b in sorted(kept_nodes)), strict=True)
        ax.scatter(kx, ky, s=46, color="#222222", zorder=4)
    for node, name in ((STEM, "stem"), (head, "head")):
        x, y = _grid_xy(node)
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

    ax.set_xticks(range(g.L + 2), ["stem", *map(str, range(1, g.L + 1)), "head"])
    ax.set_yticks(
        range(1, g.D + 1),
        [f"{d}  (1/{2 ** (d - 1)}, {depth_width(g.C, d)} ch)" for d in range(1, g.D + 1)],
    )
    ax.set_xlim(-0.6, g.L + 1.6)
    ax.set_ylim(g.D + 0.5, 0.35)  # depth 1 at the top, as in the paper's figures
    ax.set_xlabel("layer")
    ax.set_ylabel("depth (resolution, width)")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    handles = [Line2D([], [], color=CELL_COLOURS[t], lw=2.2, label=f"{t} cell") for t in CELL_TYPES]
    handles += [
        Line2D([], [], color=HEAD_COLOUR, lw=2.2, label="to head"),
        Line2D([], [], color=FAINT, lw=1.0, marker="o", mfc="white", label="grid (not kept)"),
    ]
    ax.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, frameon=False
    )
    ax.set_title("network level: kept edges of the L x D grid", fontsize=11)


def _draw_cell(ax: Axes, g: Genotype, cell_type: str, drawn: GenotypeArtists) -> None:
    """Nodes N0..NP on a line; edge j -> i straight when adjacent, else an arc whose height
    grows with its span, alternating above and below so the op labels do not collide."""
    colour = CELL_COLOURS[cell_type]
    step = 1.5  # node spacing in units of arc height: room for an op name between two nodes
    pos = {n: (step * n, 0.0) for n in range(g.P + 1)}
    arrows: dict[tuple[int, int], FancyArrowPatch] = {}
    labels: list[str] = []
    top = 0.0
    for (j, i), op in zip(cell_edges(g.P), g.cells[cell_type], strict=True):
        (x0, y0), (x1, y1) = pos[j], pos[i]
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
    for n, (x, y) in pos.items():
        ax.scatter([x], [y], s=260, color="white", edgecolor="#222222", lw=1.3, zorder=3)
        ax.text(x, y, f"N{n}", ha="center", va="center", fontsize=8, weight="bold", zorder=5)
    drawn.cell_edges[cell_type] = arrows
    drawn.edge_labels[cell_type] = labels
    ax.set_title(f"{cell_type} cell", fontsize=11, color=colour, weight="bold")
    ax.set_xlim(-0.35, step * g.P + 0.35)
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
    curves = {name: [float(v) for v in values] for name, values in history.items() if values}
    panels: dict[str, dict[str, list[float]]] = {}
    for name, values in curves.items():
        panels.setdefault(_panel(name), {})[name] = values
    order = sorted(panels, key=lambda p: (p != "loss", p))
    n = max(1, len(order))
    fig = Figure(figsize=(5.2 * n, 4.0), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    if not order:
        axes[0].text(0.5, 0.5, "no epochs recorded yet", ha="center", va="center")
        axes[0].set_axis_off()
    for ax, panel in zip(axes[: len(order)], order, strict=True):
        for name, values in panels[panel].items():
            epochs = range(1, len(values) + 1)
            ax.plot(epochs, values, marker="o" if len(values) < 30 else None, ms=3, label=name)
        finite = [v for vs in panels[panel].values() for v in vs if math.isfinite(v)]
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
