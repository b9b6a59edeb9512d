"""The physicist's battery in words: markdown sections and figures for ``report.md``, for
patient pairs (beside the PSNR / SSIM table) and for the LCD phantom (on its own)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from manas_infer.evaluate.physics_plots import auc_figure, nps_figure, ttf_figure

NPS_NOTE = (
    "NPS per AAPM TG-233: NPS(fx, fy) = dx dy / (Nx Ny) <|DFT(ROI - 2nd-order fit)|²>, so its "
    "integral is the noise variance (the SD column); radially averaged up to the Nyquist "
    "frequency; mean frequency = centroid of the radial curve, peak = its maximum (3-bin "
    "smoothed). A denoiser that lowers the mean / peak frequency makes the noise blotchy "
    "(the 'waxy' or 'plastic' look) even when its SD is low."
)
TTF_NOTE = (
    "TTF: signed distance of each pixel to the edge, values binned in sub-pixel bins (the "
    "oversampled ESF), differentiated (LSF), Tukey-windowed, Fourier transformed, normalised "
    "at 0; f50 / f10: where it falls to 0.5 / 0.1 ('—': not reached below 2x Nyquist). "
    "For a nonlinear denoiser it depends on the edge's contrast and noise: a 1000 HU edge "
    "says little about a 5 HU one."
)


def _f(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def _ci(value: float | None, ci: list | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    if not ci or ci[0] is None:
        return _f(value, digits)
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def patient_section(out: Path, physics: dict) -> tuple[list[str], list[str]]:
    """(markdown lines, figure names) for the battery on patient pairs."""
    unit = physics["unit"]
    rows = physics["rows"]
    lines = [
        "## Noise texture and edge sharpness",
        "",
        f"{physics['nps_rois']} ROIs of {physics['roi_size']} x {physics['roi_size']} px in "
        f"the most uniform soft tissue ([-150, 200] HU) of the full-dose images, and the body "
        f"outline against air on {physics['edge_slices']} of {physics['slices_used']} slices "
        f"(pixel {_f(physics['pixel_spacing_mm'])} mm). Noise = method output minus the "
        "full-dose image at the same ROIs (for the input: the added noise); the full-dose row "
        "is its own detrended ROIs, anatomy and all.",
        "",
        f"| method | noise SD (HU) | NPS mean f ({unit}) | NPS peak f ({unit}) | "
        f"body-edge TTF f50 ({unit}) | f10 ({unit}) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        nps, ttf = row.get("nps"), row.get("ttf_body_edge")
        lines.append(
            f"| {row['method']} | {_f(nps and nps['sd_hu'], 1)} | "
            f"{_f(nps and nps['mean_frequency'])} | {_f(nps and nps['peak_frequency'])} | "
            f"{_f(ttf and ttf['f50'])} | {_f(ttf and ttf['f10'])} |"
        )
    lines += ["", f"- {NPS_NOTE}", f"- {TTF_NOTE}", ""]
    figures = []
    curves = [
        (row["method"], row["nps"]["frequency"], row["nps"]["nps"]) for row in rows if "nps" in row
    ]
    if curves:
        nps_figure(
            out / "physics-nps.png", curves, "Noise power spectra in uniform soft tissue", unit
        )
        figures.append("physics-nps.png")
    edges = [
        (row["method"], row["ttf_body_edge"]["frequency"], row["ttf_body_edge"]["ttf"])
        for row in rows
        if "ttf_body_edge" in row
    ]
    if edges:
        ttf_figure(out / "physics-ttf.png", [("body outline against air", edges)], unit)
        figures.append("physics-ttf.png")
    lines += [f"![{name}]({name})" for name in figures] + [""]
    return lines, figures


@dataclass(frozen=True)
class _LcdResults:
    """The LCD battery's results as the sections read them: rows by (dose, method)."""

    phantom: dict
    settings: dict
    doses: list[int]
    inserts: list[str]  # rod labels
    methods: list[str]
    input_name: str | None  # the method that is the unprocessed input, if one is
    rows: dict[tuple[int, str], dict]

    @classmethod
    def of(cls, lcd: dict) -> _LcdResults:
        phantom = lcd["phantom"]
        return cls(
            phantom=phantom,
            settings=lcd["settings"],
            doses=phantom["doses_percent"],
            inserts=[insert["label"] for insert in phantom["inserts"]],
            methods=[method["name"] for method in lcd["methods"]],
            input_name=next(
                (method["name"] for method in lcd["methods"] if method["kind"] == "input"), None
            ),
            rows={(row["dose_percent"], row["method"]): row for row in lcd["rows"]},
        )

    @property
    def full_dose(self) -> int:
        return max(self.doses)

    def curves(self, dose: int, measure: str, values: str) -> list[tuple[str, list, list]]:
        """(method, frequency, values) of one measure of every method at one dose."""
        measured = {method: self.rows[(dose, method)][measure] for method in self.methods}
        return [(method, row["frequency"], row[values]) for method, row in measured.items()]

    def each(self) -> Iterator[tuple[int, str, dict]]:
        """(dose, method, row) in table order: by dose, then by method."""
        for dose in self.doses:
            for method in self.methods:
                yield dose, method, self.rows[(dose, method)]


def lcd_section(out: Path, lcd: dict) -> tuple[list[str], list[str]]:
    """(markdown lines, figure names) for the battery on the LCD phantom."""
    results = _LcdResults.of(lcd)
    lines = [
        *_lcd_intro(results),
        *_summary(results),
        *_lcd_noise(results),
        *_lcd_sharpness(results),
        *_lcd_detectability(results),
    ]
    figures = _lcd_figures(out, results, lcd)
    lines += [f"![{name}]({name})" for name in figures] + [""]
    return lines, figures


def _lcd_intro(results: _LcdResults) -> list[str]:
    """The heading and what was measured where."""
    phantom = results.phantom
    where = "; ".join(
        f"{insert['label']} at ({insert['centre_px'][0]:.1f}, {insert['centre_px'][1]:.1f}) px"
        for insert in phantom["inserts"]
    )
    doses = ", ".join(f"{dose} %" for dose in results.doses)
    return [
        "## The LCD phantom (MITA CCT189): noise, sharpness, low-contrast detectability",
        "",
        f"Phantom: {phantom['folder']}; pixel {phantom['pixel_spacing_mm']:.4f} mm "
        f"({phantom['pixel_spacing_note']}); doses {doses} of its own "
        "protocol, ten noise realisations each with and without the rods. Rods measured on the "
        f"ground truth (nominal CCT189: 3 / 5 / 7 / 10 mm at 14 / 7 / 5 / 3 HU): {where}. "
        "Every method is applied to every image of every dose.",
        "",
    ]


def _lcd_noise(results: _LcdResults) -> list[str]:
    """The noise table: SD, NPS mean and peak frequency, water mean; and how it was measured."""
    settings = results.settings
    lines = [
        "### Noise",
        "",
        "| dose | method | noise SD (HU) | NPS mean f (mm⁻¹) | NPS peak f (mm⁻¹) | "
        "water mean (HU) |",
        "|---|---|---|---|---|---|",
    ]
    for dose, method, row in results.each():
        nps = row["nps"]
        lines.append(
            f"| {dose} % | {method} | {nps['sd_hu']:.1f} | {nps['mean_frequency']:.3f} | "
            f"{nps['peak_frequency']:.3f} | {row['mean_hu_centre']:.1f} |"
        )
    return [
        *lines,
        "",
        f"- Noise = (output of realisation 2k - output of 2k+1) / sqrt 2 over the five pairs of "
        f"signal-absent images, {settings['nps_roi']} x {settings['nps_roi']} px ROIs at the "
        f"centre and eight on a {settings['nps_ring_px']:.0f} px ring (45 ROIs per dose and "
        "method). Water mean: the central ROI's mean over the signal-absent outputs (0 HU "
        "is right). " + NPS_NOTE,
        "",
    ]


def _lcd_sharpness(results: _LcdResults) -> list[str]:
    """The TTF table of the outline and the rods, with why the rods' numbers are weak."""
    inserts, settings = results.inserts, results.settings
    lines = [
        "### Sharpness",
        "",
        "| dose | method | outline TTF f50 (mm⁻¹) [95 % CI] | outline f10 [95 % CI] | "
        + " | ".join(f"rod {insert} f50" for insert in inserts)
        + " |",
        "|---|---|---|---|" + "---|" * len(inserts),
    ]
    for dose, method, row in results.each():
        outline, rod = row["ttf_outline"], row["ttf_inserts"]
        rods = " | ".join(_ci(rod[insert]["f50"], rod[insert]["f50_ci95"]) for insert in inserts)
        lines.append(
            f"| {dose} % | {method} | {_ci(outline['f50'], outline['f50_ci95'])} | "
            f"{_ci(outline['f10'], outline['f10_ci95'])} | {rods} |"
        )
    return [
        *lines,
        "",
        f"- Outline: the phantom's edge (water against air, about 1000 HU), a circle of "
        f"{results.phantom['outline_radius_px']:.1f} px about the ground truth's centre; ESF "
        f"over ±{settings['outline_reach_px']:.0f} px from the mean of all twenty images of a "
        "dose. Rods: each rod's circular edge on the mean of its ten signal-present images; at "
        "3-14 HU under 20-70 HU of noise their ESF is mostly noise, so these f50 are "
        "unreliable (often no interval, '—' when no crossing): averaging ten realisations is "
        "not enough, and they are shown only to say so. 95 % intervals: percentiles over "
        f"{settings['n_boot_ttf']} resamples of the images. " + TTF_NOTE,
        "",
    ]


def _lcd_detectability(results: _LcdResults) -> list[str]:
    """The CHO AUC table with each verdict against the input, and the observer's method."""
    inserts, settings, input_name = results.inserts, results.settings, results.input_name
    n_tests = (len(results.methods) - 1) * len(inserts) * len(results.doses)
    lines = [
        "### Low-contrast detectability (CHO)",
        "",
        "| dose | method | " + " | ".join(f"AUC {insert} [95 % CI]" for insert in inserts) + " |",
        "|---|---|" + "---|" * len(inserts),
    ]
    for dose, method, row in results.each():
        cells = []
        for insert in inserts:
            cho = row["cho"][insert]
            verdict = f" **{cho['vs_input']['verdict']}**" if "vs_input" in cho else ""
            cells.append(_ci(cho["auc"], cho["auc_ci95"]) + verdict)
        lines.append(f"| {dose} % | {method} | " + " | ".join(cells) + " |")
    return [
        *lines,
        "",
        f"- Channelized Hotelling observer, {settings['channels']} Laguerre-Gauss channels of "
        f"width {settings['channel_width']:g} x the rod radius centred on the rod. Signal "
        "present: the rod in each of the ten signal-present images. Signal absent: the four rod "
        "positions and the four positions between them on the same ring in each signal-absent "
        "image, and the four between-rod positions in each signal-present image (120 per dose: "
        "the channels are round, so on a ring of a round phantom their statistics do not depend "
        "on the angle). No extra realisations were simulated: the project's simulator has "
        "another noise texture than this phantom's scanner model.",
        "- Template trained leave-one-image-out (all images but one; applied to that image's "
        "ROIs), so no template scores the noise it was fitted to. AUC: the empirical "
        "(Mann-Whitney) AUC of the held-out statistics; 95 % CI: percentiles over "
        f"{settings['n_boot']} bootstrap resamples of the images (present and absent images "
        "each drawn with replacement, every image with all its ROIs; the held-out statistics "
        "are resampled, the templates not refitted, so the interval leaves out the spread of "
        "the template itself and is, if anything, too narrow). **raises / lowers / "
        f"keeps**: the paired bootstrap 95 % interval of the AUC change against "
        f"{input_name or 'the input'} at the same dose excludes 0 (above / below) or not; "
        f"{n_tests} such comparisons here, not corrected for multiplicity: about "
        f"{n_tests / 20:.0f} are expected to come out significant by chance alone.",
        f"- {results.full_dose} % is the phantom's full dose: its input row is the reference "
        "for the lower doses.",
        "",
    ]


def _lcd_figures(out: Path, results: _LcdResults, lcd: dict) -> list[str]:
    """NPS per dose (with the full-dose input for reference), outline TTFs, AUC bars."""
    full_dose, input_name, rows = results.full_dose, results.input_name, results.rows
    figures = []
    for dose in results.doses:
        curves = results.curves(dose, "nps", "nps")
        if dose != full_dose and input_name is not None:
            ref = rows[(full_dose, input_name)]["nps"]
            curves.insert(0, (f"full dose ({full_dose} % input)", ref["frequency"], ref["nps"]))
        name = f"physics-lcd-nps-{dose}pct.png"
        title = f"LCD phantom, {dose} % dose: noise power spectra"
        nps_figure(out / name, curves, title, "mm^-1")
        figures.append(name)
    panels = [
        (f"{dose} %: phantom outline (water / air)", results.curves(dose, "ttf_outline", "ttf"))
        for dose in results.doses
    ]
    ttf_figure(out / "physics-lcd-ttf.png", panels, "mm^-1")
    figures.append("physics-lcd-ttf.png")
    auc_figure(out / "physics-lcd-auc.png", lcd)
    figures.append("physics-lcd-auc.png")
    return figures


def _summary(results: _LcdResults) -> list[str]:
    """Each method against the input at the same dose, in one line per method and dose."""
    input_name, inserts = results.input_name, results.inserts
    if input_name is None:
        return []
    lines = [
        "### Summary: each method against its input",
        "",
        "| dose | method | noise SD | NPS mean f | NPS peak f | outline TTF f50 | "
        "CHO AUC: raises / keeps / lowers (rods) |",
        "|---|---|---|---|---|---|---|",
    ]

    def change(new: float | None, old: float | None) -> str:
        return "—" if not new or not old else f"{100 * (new / old - 1):+.0f} %"

    for dose, method, row in results.each():
        if method == input_name:
            continue
        ref = results.rows[(dose, input_name)]
        verdicts = [row["cho"][insert].get("vs_input", {}).get("verdict") for insert in inserts]
        lowered = [
            insert for insert, verdict in zip(inserts, verdicts, strict=True) if verdict == "lowers"
        ]
        counts = " / ".join(str(verdicts.count(kind)) for kind in ("raises", "keeps", "lowers"))
        lines.append(
            f"| {dose} % | {method} | {change(row['nps']['sd_hu'], ref['nps']['sd_hu'])} | "
            f"{change(row['nps']['mean_frequency'], ref['nps']['mean_frequency'])} | "
            f"{change(row['nps']['peak_frequency'], ref['nps']['peak_frequency'])} | "
            f"{change(row['ttf_outline']['f50'], ref['ttf_outline']['f50'])} | {counts}"
            + (f" (lowers {', '.join(lowered)})" if lowered else "")
            + " |"
        )
    return [*lines, ""]


def write_phantom_report(out: Path, lcd: dict, settings: dict) -> dict:
    """report.md and metrics.json of the phantom battery alone; returns the metrics."""
    out.mkdir(parents=True, exist_ok=True)
    lines, figures = lcd_section(out, lcd)
    methods = [f"- {m['name']}: {m['detail']}" for m in lcd["methods"]]
    text = ["# Physicist's battery on the LCD phantom", "", *lines, "Methods:", "", *methods, ""]
    (out / "report.md").write_text("\n".join(text))
    metrics = {
        "source": lcd["phantom"]["folder"],
        "settings": settings,
        "lcd": lcd,
        "figures": figures,
    }
    (out / "metrics.json").write_text(json.dumps(strict_json(metrics), indent=1, allow_nan=False))
    return metrics


def strict_json(value: object) -> object:
    """Strict JSON: NaN / inf become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
