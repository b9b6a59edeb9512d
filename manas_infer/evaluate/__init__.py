"""``manas-infer evaluate``: the paper's comparison (Tables 2-3, Fig. 3) on any data.

pairs (what to compare against) -> methods (the rows) -> report (scores, table, figures).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from manas_infer.evaluate.methods import (
    Method,
    bm3d_method,
    estimate_noise_hu,
    low_dose_input,
    model_method,
    run_method,
)
from manas_infer.evaluate.pairs import Pairs, matched_pairs, run_test_pairs, simulated_pairs
from manas_infer.evaluate.report import score, write_report

__all__ = [
    "Method",
    "Pairs",
    "bm3d_method",
    "estimate_noise_hu",
    "evaluate",
    "is_run_dir",
    "low_dose_input",
    "matched_pairs",
    "method_for",
    "model_method",
    "perceptual_metric",
    "run_method",
    "run_test_pairs",
    "simulated_pairs",
]


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "config.json").is_file()


def method_for(item: str, device: str) -> Method:
    """A run directory (its net runs in torch), or else a model name in models/ or a .onnx
    path (the runtime); ``device`` is auto, cpu or cuda for both."""
    if is_run_dir(item):
        from manas_infer.device import resolve_device

        return run_method(Path(item), resolve_device(device).type)
    return model_method(item, device)


def perceptual_metric(vgg_weights: Path | None):
    """(the VGG-16 perceptual metric or None, the sentence the report prints about it)."""
    from manas_infer.train.perceptual import PerceptualLoss

    try:
        metric = PerceptualLoss.from_file(vgg_weights)
    except FileNotFoundError as e:
        where = str(e).split(". ")[0].removeprefix("VGG-16 weights for the perceptual loss ")
        return None, f"not computed: no VGG-16 weights ({where}); pass --vgg-weights PATH"
    return metric, "VGG-16 relu5_3 feature MSE (the training loss's perceptual term)"


def evaluate(
    pairs: Pairs,
    methods: list[Method],
    out: Path,
    n_figures: int = 3,
    vgg_weights: Path | None = None,
    settings: dict | None = None,
    on_step: Callable[[str], None] | None = None,
) -> dict:
    """Score the low-dose input and every method on ``pairs`` and write the report folder."""
    rows = [low_dose_input(), *methods]
    n = len(pairs)
    figure_slices = sorted({round((k + 1) * n / (n_figures + 1)) for k in range(n_figures)})
    figure_slices = [i for i in figure_slices if 0 <= i < n] if n_figures > 0 else []
    perceptual, note = perceptual_metric(vgg_weights)
    scored = score(pairs, rows, figure_slices, perceptual, on_step)
    return write_report(out, pairs, scored, figure_slices, note, settings or {})
