"""The run's pictures: genotype figure content and the training-curve figure."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from matplotlib.patches import FancyArrowPatch
from matplotlib.text import Annotation

from manas_infer.train.cells import CELL_TYPES, cell_edges
from manas_infer.train.derive import derive_genotype
from manas_infer.train.genotype import Genotype
from manas_infer.train.plot import draw_genotype, plot_curves, plot_genotype
from manas_infer.train.supernet import SuperNet

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk; fails unless the file is a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def random_genotype(C: int, L: int, D: int, K: int, seed: int, P: int = 3) -> Genotype:
    """A derived genotype from random alphas and betas (what a search would decode)."""
    torch.manual_seed(seed)
    net = SuperNet(C, L, D, P)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_()
    return derive_genotype(net, K=K)


@pytest.mark.parametrize(
    ("L", "D", "K", "P", "seed"), [(4, 3, 3, 3, 0), (12, 4, 5, 3, 1), (2, 2, 2, 2, 2)]
)
def test_genotype_figure_draws_every_kept_edge_and_cell_edge(
    L: int, D: int, K: int, P: int, seed: int
) -> None:
    g = random_genotype(4, L, D, K, seed, P)
    fig, drawn = draw_genotype(g)
    assert set(drawn.kept_edges) == set(g.edges)
    assert len(drawn.kept_edges) == len(g.edges)
    grid_ax = fig.subfigs[0].axes[0]
    annotations = [c for c in grid_ax.get_children() if isinstance(c, Annotation)]
    arrows = [a for a in annotations if a.arrow_patch is not None]
    # Exactly one arrow per kept edge on the grid axes (stem/head labels have no arrow).
    assert len(arrows) == len(g.edges)
    assert all(a in arrows for a in drawn.kept_edges.values())
    for t in CELL_TYPES:
        assert list(drawn.cell_edges[t]) == cell_edges(g.P)
        assert drawn.edge_labels[t] == list(g.cells[t])
        ax = drawn.cell_edges[t][(0, 1)].axes
        patches = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
        assert len(patches) == len(cell_edges(g.P))
        # Every op name is written on the cell's axes.
        texts = [txt.get_text() for txt in ax.texts]
        for op in g.cells[t]:
            assert op in texts


def test_plot_genotype_writes_a_png(tmp_path: Path) -> None:
    g = random_genotype(8, 12, 4, 5, seed=3)
    out = plot_genotype(g, tmp_path / "sub" / "genotype.png")
    assert out == tmp_path / "sub" / "genotype.png"
    width, height = png_size(out)
    assert 1000 <= width <= 4000 and 500 <= height <= 3000
    assert 20_000 < out.stat().st_size < 2_000_000


def test_plot_curves_writes_a_png_and_skips_empty_curves(tmp_path: Path) -> None:
    history = {
        "search_loss": [0.1, 0.05, 0.03],
        "search_arch_loss": [],
        "retrain_loss": [0.04, 0.02, 0.015, 0.012],
        "val_psnr": [30.0, 32.5, 33.1, 33.4],
    }
    out = plot_curves(history, tmp_path / "curves.png")
    width, height = png_size(out)
    assert width >= 800 and height >= 300
    assert 10_000 < out.stat().st_size < 1_000_000
    # Only losses: one panel, narrower than losses + PSNR.
    only_loss = plot_curves({"search_loss": [1.0, 0.5], "val_psnr": []}, tmp_path / "one.png")
    assert png_size(only_loss)[0] < width


def test_plot_curves_with_nothing_recorded_still_writes(tmp_path: Path) -> None:
    out = plot_curves({"search_loss": []}, tmp_path / "empty.png")
    assert png_size(out)[0] > 0
