"""Pictures for people who would rather look than read: slices side by side in a window."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: works on servers with no display
import matplotlib.pyplot as plt
import numpy as np

from manas_infer.hu import SOFT_TISSUE_WINDOW, window_bounds


def save_comparison(
    path: Path | str,
    panels: list[tuple[str, np.ndarray]],
    difference: tuple[str, np.ndarray] | None = None,
    window: tuple[float, float] = SOFT_TISSUE_WINDOW,
    title: str = "",
) -> Path:
    """Save HU slices side by side in a display window, plus an optional difference image.

    The difference is shown in a symmetric blue-red scale at +-3 standard deviations with
    its standard deviation in the caption, so noise removed or added reads at a glance.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = len(panels) + (difference is not None)
    fig, axes = plt.subplots(1, columns, figsize=(4.2 * columns, 4.6), squeeze=False)
    low, high = window_bounds(window)
    for ax, (label, image) in zip(axes[0], panels, strict=False):
        ax.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        ax.set_title(label, fontsize=10)
    if difference is not None:
        label, image = difference
        sd = float(np.std(image)) or 1.0
        ax = axes[0][-1]
        shown = ax.imshow(image, cmap="RdBu_r", vmin=-3 * sd, vmax=3 * sd, interpolation="nearest")
        ax.set_title(f"{label}\n(SD {sd:.1f} HU)", fontsize=10)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="HU")
    for ax in axes[0]:
        ax.set_xticks([])
        ax.set_yticks([])
    caption = f"window level {window[0]:g} / width {window[1]:g} HU"
    fig.suptitle(f"{title}\n{caption}" if title else caption, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
