"""``manas-infer evaluate``: the paper's comparison (Tables 2-3, Fig. 3) on any data, and a
CT physicist's battery (noise power spectrum, task transfer function, CHO detectability).

pairs (what to compare against) -> methods (the rows) -> report (scores, table, figures);
physics (NPS and body-edge TTF on the same pairs, fed by the same outputs); lcd (the whole
battery on the FDA LCD-CT phantom, ``evaluate_phantom``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from manas_infer.evaluate.lcd import LcdPhantom, LcdSettings, default_phantom_dir, load_lcd_phantom
from manas_infer.evaluate.methods import (
    Method,
    bm3d_method,
    estimate_noise_hu,
    low_dose_input,
    model_method,
    run_method,
)
from manas_infer.evaluate.pairs import Pairs, matched_pairs, run_test_pairs, simulated_pairs
from manas_infer.evaluate.physics import PatientPhysics
from manas_infer.evaluate.report import score, write_report

__all__ = [
    "LcdPhantom",
    "LcdSettings",
    "Method",
    "Pairs",
    "bm3d_method",
    "default_phantom_dir",
    "estimate_noise_hu",
    "evaluate",
    "evaluate_phantom",
    "is_run_dir",
    "load_lcd_phantom",
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


def method_for(item: str, device: str, ensemble: int = 1) -> Method:
    """A run directory (its net runs in torch, over ``ensemble`` orientations), or else a
    model name in models/ or a .onnx path (the runtime; the file holds its own ensemble);
    ``device`` is auto, cpu or cuda for both."""
    if is_run_dir(item):
        from manas_infer.device import resolve_device

        device = str(resolve_device(device))  # keeps a cuda:N index
        return run_method(Path(item), device, ensemble)
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
    physics: bool = True,
) -> dict:
    """Score the low-dose input and every method on ``pairs`` and write the report folder;
    ``physics`` adds the noise power spectra and body-edge TTFs of the same outputs."""
    rows = [low_dose_input(), *methods]
    n_pairs = len(pairs)
    figure_slices = sorted({round((k + 1) * n_pairs / (n_figures + 1)) for k in range(n_figures)})
    figure_slices = [i for i in figure_slices if 0 <= i < n_pairs] if n_figures > 0 else []
    perceptual, note = perceptual_metric(vgg_weights)
    battery = PatientPhysics(pairs.full, pairs.spacing) if physics else None
    on_output = battery.add if battery is not None else None
    scored = score(pairs, rows, figure_slices, perceptual, on_step, on_output)
    measured = battery.result() if battery is not None else None
    return write_report(out, pairs, scored, figure_slices, note, settings or {}, measured)


def evaluate_phantom(
    folder: Path | LcdPhantom,
    methods: list[Method],
    out: Path,
    settings: dict | None = None,
    on_step: Callable[[str], None] | None = None,
    lcd_settings: LcdSettings | None = None,
) -> dict:
    """The whole battery on the LCD-CT phantom for the input and every method: report.md,
    metrics.json and figures in ``out``."""
    from manas_infer.evaluate.lcd import run_lcd_battery
    from manas_infer.evaluate.physics_report import write_phantom_report

    phantom = folder if isinstance(folder, LcdPhantom) else load_lcd_phantom(folder)
    unprocessed = Method(
        "input (FBP)", "input", lambda hu: hu, 0, 0.0, "the phantom's own FBP images, unprocessed"
    )
    lcd = run_lcd_battery(phantom, [unprocessed, *methods], lcd_settings, on_step)
    return write_phantom_report(out, lcd, settings or {})
