"""Figures of the physicist's battery: NPS curves (magnitude and shape), TTF curves, and
CHO AUC bars with their 95 % intervals."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

Curve = tuple[str, list[float], list[float]]  # (label, frequency, value)


def save_figure(fig, path: Path) -> Path:
    """Lay out, write as a 90 dpi PNG (its folder made if needed) and close: every figure
    of an evaluation report ends this way."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _style(label: str) -> dict:
    if label.startswith("full dose"):
        return {"color": "black", "lw": 2.0, "ls": "--"}
    if label.startswith(("low dose", "input")):
        return {"color": "grey", "lw": 2.0}
    return {"lw": 1.4}


def nps_figure(path: Path, curves: list[Curve], title: str, unit: str) -> Path:
    """Left: the NPS (noise magnitude at each frequency). Right: each NPS divided by its own
    integral, the noise texture alone: a curve moved to the left is a blotchier texture."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, frequency, nps in curves:
        frequency, nps = np.asarray(frequency), np.asarray(nps)
        step = frequency[1] - frequency[0]
        area = float(np.sum(nps * 2 * np.pi * frequency) * step)  # ring integral, radial curve
        axes[0].plot(frequency[1:], nps[1:], label=label, **_style(label))  # no DC on a log axis
        if area > 0:
            axes[1].plot(frequency, nps / area, label=label, **_style(label))
    axes[0].set_ylabel("NPS (HU² mm²)" if unit == "mm^-1" else "NPS (HU² px²)")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("NPS / its integral (texture)")
    for ax in axes:
        ax.set_xlabel(f"spatial frequency ({unit})")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def ttf_figure(path: Path, panels: list[tuple[str, list[Curve]]], unit: str) -> Path:
    """One panel per edge (or dose): the TTF of every method, 0.5 and 0.1 marked."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels, strict=True):
        for label, frequency, ttf in curves:
            ax.plot(frequency, ttf, label=label, **_style(label))
        for level in (0.5, 0.1):
            ax.axhline(level, color="k", lw=0.5, alpha=0.5)
        ax.set_ylim(-0.05, 1.15)
        ax.set_xlabel(f"spatial frequency ({unit})")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("TTF")
    axes[0][-1].legend(fontsize=7)
    return save_figure(fig, path)


def auc_figure(path: Path, lcd: dict) -> Path:
    """One panel per dose: a group of bars per rod, a bar per method, 95 % intervals."""
    doses = lcd["phantom"]["doses_percent"]
    inserts = [insert["label"] for insert in lcd["phantom"]["inserts"]]
    methods = [method["name"] for method in lcd["methods"]]
    fig, axes = plt.subplots(1, len(doses), figsize=(5 * len(doses), 4.2), squeeze=False)
    width = 0.8 / len(methods)
    for ax, dose in zip(axes[0], doses, strict=True):
        rows = {row["method"]: row for row in lcd["rows"] if row["dose_percent"] == dose}
        for index, name in enumerate(methods):
            cho = rows[name]["cho"]
            auc = np.array([cho[insert]["auc"] for insert in inserts])
            ci = np.array([cho[insert]["auc_ci95"] for insert in inserts])
            x = np.arange(len(inserts)) - 0.4 + (index + 0.5) * width
            color = "grey" if rows[name]["kind"] == "input" else None
            ax.bar(x, auc, width, label=name, color=color)
            ax.errorbar(
                x,
                auc,
                yerr=[auc - ci[:, 0], ci[:, 1] - auc],
                fmt="none",
                ecolor="k",
                lw=0.8,
                capsize=2,
            )
        ax.axhline(0.5, color="k", lw=0.6, ls=":")
        ax.set_xticks(range(len(inserts)), inserts, fontsize=8)
        ax.set_ylim(0.3, 1.02)
        ax.set_title(f"{dose} % dose", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("CHO AUC (95 % CI)")
    axes[0][-1].legend(fontsize=7)
    return save_figure(fig, path)
