"""The FDA LCD-CT phantom (MITA CCT189) as a test object: geometry from its noise-free ground
truth, and the physicist's battery (noise, NPS, TTF, CHO detectability) at each of its doses
for every method.

Layout (the FDA DIDSR LCD_CT data): ``ground_truth.mhd`` (noise-free, HU = value - 1000) and
``dose_XXX/signal_{present,absent}/signal_{present,absent}.mhd``, ten noise realisations
each. The phantom: a 200 mm water disc with four low-contrast rods on a 40 mm ring (3 mm /
14 HU, 5 mm / 7 HU, 7 mm / 5 HU, 10 mm / 3 HU); positions, sizes and contrasts are measured
on the ground truth, not assumed (on this data's ground truth the rods measure about 4, 6.7,
9.3 and 13.3 mm at the disc-derived pixel size, a third larger than nominal; the labels give
what was measured). The .mhd headers give 1 mm pixels, which is a placeholder:
the pixel size is the 200 mm diameter over the disc's measured diameter (0.859 mm, a
220 mm field of view on 256 pixels).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from manas_infer.errors import InputProblem
from manas_infer.evaluate import detectability as cho
from manas_infer.evaluate.methods import Method
from manas_infer.evaluate.nps import noise_power_spectrum
from manas_infer.evaluate.ttf import circular_distance, edge_spread, ttf_from_esf

PHANTOM_DIAMETER_MM = 200.0  # the CCT189 body (FDA LCD-CT toolbox, CCT189_obj.m)
HU_OFFSET = -1000.0


def default_phantom_dir() -> Path | None:
    """The project's copy of the phantom (``../shared/data/phantom/lcd-ct`` beside the
    repository or the working directory, or under $MANAS_SHARED_DATA), if there is one."""
    import os

    import manas_infer

    roots = [Path(os.environ["MANAS_SHARED_DATA"])] if os.environ.get("MANAS_SHARED_DATA") else []
    roots += [
        Path.cwd().parent / "shared" / "data",
        Path(manas_infer.__file__).resolve().parents[2] / "shared" / "data",
    ]
    for root in roots:
        if (root / "phantom" / "lcd-ct" / "ground_truth.mhd").is_file():
            return root / "phantom" / "lcd-ct"
    return None


@dataclass
class Insert:
    """One low-contrast rod, measured on the ground truth."""

    centre: tuple[float, float]  # (row, col) px, contrast-weighted centroid
    radius_px: float  # from its partial-volume area
    contrast_hu: float
    diameter_mm: float

    @property
    def label(self) -> str:
        return f"{self.diameter_mm:.0f} mm, {self.contrast_hu:.0f} HU"


@dataclass
class LcdPhantom:
    folder: Path
    truth: np.ndarray  # HU
    spacing: float  # mm
    spacing_note: str
    centre: tuple[float, float]  # the disc's centre (row, col) px
    radius_px: float  # the disc's outline
    inserts: list[Insert]
    doses: list[int]  # percent, from the dose_XXX folder names

    def images(self, dose: int, kind: str) -> np.ndarray:
        """The ten realisations [10, H, W] in HU; ``kind`` is present or absent."""
        from manas_infer.data.volume import CTVolume

        path = self.folder / f"dose_{dose:03d}" / f"signal_{kind}" / f"signal_{kind}.mhd"
        return CTVolume(path, hu_offset=HU_OFFSET).read_hu()

    def describe(self) -> dict:
        return {
            "folder": str(self.folder),
            "pixel_spacing_mm": self.spacing,
            "pixel_spacing_note": self.spacing_note,
            "outline_centre_px": list(self.centre),
            "outline_radius_px": self.radius_px,
            "doses_percent": self.doses,
            "inserts": [
                {
                    "label": insert.label,
                    "centre_px": [round(coordinate, 3) for coordinate in insert.centre],
                    "radius_px": round(insert.radius_px, 3),
                    "contrast_hu": insert.contrast_hu,
                    "diameter_mm": round(insert.diameter_mm, 2),
                }
                for insert in self.inserts
            ],
        }


def load_lcd_phantom(folder: Path) -> LcdPhantom:
    """Read the ground truth, measure the geometry, list the doses; refuse other layouts."""
    from manas_infer.data.volume import CTVolume

    folder = Path(folder)
    truth_path = folder / "ground_truth.mhd"
    if not truth_path.is_file():
        raise InputProblem(folder, "not an LCD-CT phantom folder (no ground_truth.mhd)")
    volume = CTVolume(truth_path, hu_offset=HU_OFFSET)
    truth = volume.read_hu()[0].astype(np.float64)
    doses = sorted(
        int(dose_dir.name.removeprefix("dose_"))
        for dose_dir in folder.glob("dose_*")
        if dose_dir.name.removeprefix("dose_").isdigit()
        and (dose_dir / "signal_present").is_dir()
        and (dose_dir / "signal_absent").is_dir()
    )
    if not doses:
        raise InputProblem(folder, "no dose_XXX/signal_present and signal_absent folders")
    weight = np.clip((truth - HU_OFFSET) / -HU_OFFSET, 0.0, 1.0)  # water 1, air 0, edges between
    centre = tuple(float(coordinate) for coordinate in ndimage.center_of_mass(weight))
    radius = math.sqrt(float(weight.sum()) / math.pi)
    header = volume.pixel_spacing[0]
    if abs(header - 1.0) > 1e-6:
        spacing, note = header, "from the image header"
    else:
        spacing = PHANTOM_DIAMETER_MM / (2 * radius)
        note = (
            f"the header's 1 mm is a placeholder: the {PHANTOM_DIAMETER_MM:.0f} mm CCT189 "
            f"disc measures {2 * radius:.1f} px on the ground truth"
        )
    return LcdPhantom(
        folder,
        truth,
        spacing,
        note,
        centre,
        radius,
        find_inserts(truth, centre, radius, spacing),
        doses,
    )


def find_inserts(
    truth: np.ndarray, centre: tuple[float, float], radius: float, spacing: float
) -> list[Insert]:
    """The rods: connected regions above the water background well inside the outline,
    sorted from the smallest to the largest."""
    inner = circular_distance(truth.shape, centre, radius) < -6.0
    contrast = np.where(inner, truth, 0.0)
    labels, n_regions = ndimage.label(contrast > 0.5, structure=np.ones((3, 3)))
    inserts = []
    for label in range(1, n_regions + 1):
        region = np.where(labels == label, contrast, 0.0)
        peak = float(region.max())
        if region.sum() / peak < 3:  # stray partial pixels are no rod
            continue
        radius_px = math.sqrt(float(region.sum()) / peak / math.pi)
        centre_px = tuple(float(coordinate) for coordinate in ndimage.center_of_mass(region))
        inserts.append(Insert(centre_px, radius_px, peak, 2 * radius_px * spacing))
    if not inserts:
        raise InputProblem(Path("ground_truth.mhd"), "no low-contrast inserts found")
    return sorted(inserts, key=lambda insert: insert.radius_px)


@dataclass
class LcdSettings:
    """The battery's choices (recorded in metrics.json)."""

    nps_roi: int = 64  # px, ROIs of the NPS (TG-233 suggests about 64 x 64 or more)
    nps_ring_px: float = 60.0  # eight ROIs on this ring plus one at the centre
    outline_reach_px: float = 12.0  # ESF half-length at the disc's outline
    insert_reach_px: float = 10.0  # ESF length outside a rod (inside: to its centre)
    channels: int = 5  # LG channels (the LCD-CT toolbox's default)
    # LG width h in rod radii: five channels then reach about 2.5 radii (the rod, its edge
    # and the background the observer compares it with). The LCD-CT toolbox suggests 2/3 of
    # the radius; on this data that observer was less efficient on the unprocessed images
    # (AUC about 0.05 lower at 55 and 100 %), so it would understate every method alike.
    channel_width: float = 1.5
    n_boot: int = 1000  # bootstrap resamples for AUC intervals
    n_boot_ttf: int = 200  # ... for TTF intervals
    seed: int = 0


@dataclass
class Geometry:
    """Where each measurement is taken, computed once per phantom."""

    nps_corners: list[tuple[int, int]]
    absent_centres: list[tuple[float, float]]  # ring positions: at and between the rods
    between_centres: list[tuple[float, float]]  # ring positions between the rods only
    outline_distance: np.ndarray
    insert_distance: list[np.ndarray] = field(default_factory=list)


def geometry(phantom: LcdPhantom, settings: LcdSettings) -> Geometry:
    """The NPS ROIs (centre and a ring), the ring positions at and between the rods, and
    the signed distance maps of the outline and of each rod."""
    cy, cx = phantom.centre
    roi = settings.nps_roi
    ring = settings.nps_ring_px
    spots = [(cy, cx)] + [
        (cy + ring * math.sin(angle), cx + ring * math.cos(angle))
        for angle in np.arange(8) * math.pi / 4
    ]
    corners = [(round(row - roi / 2), round(col - roi / 2)) for row, col in spots]
    offsets = [(insert.centre[0] - cy, insert.centre[1] - cx) for insert in phantom.inserts]
    angles = sorted(math.atan2(dy, dx) for dy, dx in offsets)
    rho = float(np.mean([math.hypot(dy, dx) for dy, dx in offsets]))
    between = [
        (angle + ((angles[(k + 1) % len(angles)] - angle) % (2 * math.pi)) / 2)
        for k, angle in enumerate(angles)
    ]
    on_rods = [(cy + rho * math.sin(angle), cx + rho * math.cos(angle)) for angle in angles]
    mid = [(cy + rho * math.sin(angle), cx + rho * math.cos(angle)) for angle in between]
    shape = phantom.truth.shape
    return Geometry(
        corners,
        on_rods + mid,
        mid,
        circular_distance(shape, phantom.centre, phantom.radius_px),
        [circular_distance(shape, insert.centre, insert.radius_px) for insert in phantom.inserts],
    )


def roi_size(insert: Insert) -> int:
    """An odd ROI side that holds the channels (about three rod radii each way)."""
    return 2 * max(6, math.ceil(3 * insert.radius_px)) + 1


def _esfs(
    images: np.ndarray, distance: np.ndarray, low: float, high: float, radius: float
) -> tuple:
    """One ESF per image (bins shared), so image resamples only average ESFs. Bins are as
    fine as 0.1 px while a ring of the circle still holds about 10 pixels per bin."""
    bin_px = float(np.clip(10.0 / (2 * math.pi * radius), 0.1, 0.5))
    spreads = [edge_spread(image, distance, low, high, bin_px) for image in images]
    return spreads[0][0], np.stack([esf for _, esf, _ in spreads]), spreads[0][2]


def _ttf_with_interval(
    distance: np.ndarray, esfs: np.ndarray, n_px: int, spacing: float, n_boot: int, seed: int
) -> dict:
    """TTF of the mean ESF, with 95 % intervals of f50 / f10 over image resamples."""
    ttf = ttf_from_esf(distance, esfs.mean(0), spacing, n_px * len(esfs))
    rng = np.random.default_rng(seed)
    f50, f10 = [], []
    for _ in range(n_boot):
        resampled = esfs[rng.integers(0, len(esfs), len(esfs))].mean(0)
        resampled_ttf = ttf_from_esf(distance, resampled, spacing)
        f50.append(resampled_ttf.f50)
        f10.append(resampled_ttf.f10)
    out = ttf.to_dict()

    def interval(values: list[float]) -> list[float | None]:
        found = np.asarray(values)
        if np.isnan(found).mean() > 0.05:  # often no crossing: say so rather than guess
            return [None, None]
        return [float(bound) for bound in np.nanpercentile(found, [2.5, 97.5])]

    out["f50_ci95"], out["f10_ci95"] = interval(f50), interval(f10)
    out["images"] = len(esfs)
    return out


def run_lcd_battery(
    phantom: LcdPhantom,
    methods: list[Method],
    settings: LcdSettings | None = None,
    on_step: Callable[[str], None] | None = None,
) -> dict:
    """Every method on every realisation of every dose, and the battery on the outputs.

    The first method of kind "input" is the reference each other method's AUC is compared
    with, dose by dose."""
    settings = settings or LcdSettings()
    geo = geometry(phantom, settings)
    rows: list[dict] = []
    for dose in phantom.doses:
        present, absent = phantom.images(dose, "present"), phantom.images(dose, "absent")
        n_present = len(present)
        ids = np.arange(n_present + len(absent))  # present images first, then absent ones
        groups = [ids[:n_present], ids[n_present:]]
        draws = cho.bootstrap_draws(groups, settings.n_boot, settings.seed + dose)
        references: dict[str, cho.ObserverResult] = {}
        for method in methods:
            images = np.concatenate([present, absent])
            outputs = np.stack([method.denoise(image) for image in images])
            out_p, out_a = outputs[:n_present], outputs[n_present:]
            row: dict = {"dose_percent": dose, "method": method.name, "kind": method.kind}
            row |= _noise(out_a, geo, settings, phantom.spacing)
            row |= _sharpness(phantom, outputs, out_p, geo, settings)
            row["cho"] = {}
            for insert in phantom.inserts:
                result = _cho(insert, out_p, out_a, geo, settings, draws)
                entry = result.to_dict()
                if method.kind == "input" and insert.label not in references:
                    references[insert.label] = result
                elif insert.label in references:
                    entry["vs_input"] = cho.compare(result, references[insert.label])
                row["cho"][insert.label] = entry
            rows.append(row)
            if on_step is not None:
                on_step(method.name)
    return {
        "phantom": phantom.describe(),
        "settings": settings.__dict__,
        "methods": [
            {"name": method.name, "kind": method.kind, "detail": method.detail}
            for method in methods
        ],
        "rows": rows,
    }


def _noise(out_a: np.ndarray, geo: Geometry, settings: LcdSettings, spacing: float) -> dict:
    """NPS of (output of realisation 2k - output of 2k+1) / sqrt 2 over the signal-absent
    images (five noise images, nine ROIs each): the difference removes the phantom and any
    bias, the sqrt 2 restores one image's noise. And the mean of water at the centre."""
    half = len(out_a) // 2
    noise = (out_a[0 : 2 * half : 2] - out_a[1 : 2 * half : 2]) / math.sqrt(2)
    roi = settings.nps_roi
    rois = np.concatenate(
        [noise[:, row : row + roi, col : col + roi] for row, col in geo.nps_corners]
    )
    row, col = geo.nps_corners[0]
    return {
        "nps": noise_power_spectrum(rois, spacing).to_dict(),
        "mean_hu_centre": float(out_a[:, row : row + roi, col : col + roi].mean()),
    }


def _sharpness(
    phantom: LcdPhantom,
    outputs: np.ndarray,
    out_p: np.ndarray,
    geo: Geometry,
    settings: LcdSettings,
) -> dict:
    """TTF of the disc's outline (water / air, about 1000 HU) on the mean ESF of all twenty
    images, and of each rod on the mean of its ten signal-present images."""
    reach = settings.outline_reach_px
    boot = (phantom.spacing, settings.n_boot_ttf, settings.seed)
    bins, esfs, n_px = _esfs(outputs, geo.outline_distance, -reach, reach, phantom.radius_px)
    out = {"ttf_outline": _ttf_with_interval(bins, esfs, n_px, *boot), "ttf_inserts": {}}
    for insert, distance in zip(phantom.inserts, geo.insert_distance, strict=True):
        low, high = -insert.radius_px, settings.insert_reach_px
        bins, esfs, n_px = _esfs(out_p, distance, low, high, insert.radius_px)
        out["ttf_inserts"][insert.label] = _ttf_with_interval(bins, esfs, n_px, *boot)
    return out


def _cho(
    insert: Insert,
    out_p: np.ndarray,
    out_a: np.ndarray,
    geo: Geometry,
    settings: LcdSettings,
    draws: np.ndarray,
) -> cho.ObserverResult:
    """Present: the rod in each signal-present image. Absent: every ring position (at and
    between the rods) in each signal-absent image, and the positions between the rods in
    each signal-present image: 12 absent ROIs per present one, from the same noise."""
    size = roi_size(insert)
    width = settings.channel_width * insert.radius_px
    n_ch = settings.channels
    n_p, n_a = len(out_p), len(out_a)
    present = cho.channel_responses(out_p, [insert.centre], size, width, n_ch)[:, 0]
    absent_a = cho.channel_responses(out_a, geo.absent_centres, size, width, n_ch)
    absent_p = cho.channel_responses(out_p, geo.between_centres, size, width, n_ch)
    absent = np.concatenate([absent_p.reshape(-1, n_ch), absent_a.reshape(-1, n_ch)])
    absent_image = np.concatenate(
        [
            np.repeat(np.arange(n_p), len(geo.between_centres)),
            np.repeat(np.arange(n_p, n_p + n_a), len(geo.absent_centres)),
        ]
    )
    return cho.cho_study(present, np.arange(n_p), absent, absent_image, draws)
