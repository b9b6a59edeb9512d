"""The physicist's battery on patient pairs, beside ``evaluate``'s PSNR / SSIM table:
noise SD and NPS in uniform soft tissue, and the TTF of the body outline against air.

It is fed each method's output as ``score`` produces it (no second pass through any
denoiser). Where things are measured is decided once per slice on the full-dose image, so
every method is measured at the same places:
- NPS ROIs: the most uniform soft-tissue windows (``nps.uniform_rois``); the noise of a
  method is its output minus the full-dose image there (for the input, the simulated or
  real added noise); the full-dose row is the full-dose ROIs themselves, detrended, so its
  curve still holds some anatomy.
- TTF: pixels within a few px of the full-dose body outline (``ttf.contour_distance``);
  ESFs pooled over slices.
Slices whose pixel size differs from the first slice's are left out (curves in mm^-1 cannot
be pooled across pixel sizes); the report says how many were used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from manas_infer.evaluate.methods import Method
from manas_infer.evaluate.nps import crop, noise_power_spectrum, uniform_rois
from manas_infer.evaluate.ttf import contour_distance, edge_sums, esf_from_sums, ttf_from_esf

FULL_DOSE = "full dose"


@dataclass
class _Slice:
    corners: list[tuple[int, int]]
    distance: np.ndarray | None


@dataclass
class PatientPhysics:
    """Accumulates NPS ROIs and ESFs per method while ``score`` runs."""

    full: list[np.ndarray]
    spacing: list[float]  # mm per slice; empty when unknown (frequencies then in px^-1)
    roi_size: int = 32
    reach_px: float = 8.0
    bin_px: float = 0.1
    max_rois_per_slice: int = 4
    _slices: dict[int, _Slice] = field(default_factory=dict)
    _rois: dict[str, list[np.ndarray]] = field(default_factory=dict)
    _esf: dict[str, list[np.ndarray]] = field(default_factory=dict)  # [sums, counts]
    _order: list[tuple[str, str]] = field(default_factory=list)

    @property
    def pixel_spacing(self) -> float:
        return float(self.spacing[0]) if self.spacing else 1.0

    @property
    def unit(self) -> str:
        return "mm^-1" if self.spacing else "pixel^-1"

    def used(self, i: int) -> bool:
        return not self.spacing or abs(self.spacing[i] - self.spacing[0]) < 1e-3 * self.spacing[0]

    def _where(self, i: int) -> _Slice:
        if i not in self._slices:
            full = self.full[i]
            corners = uniform_rois(full, self.roi_size, max_rois=self.max_rois_per_slice)
            distance = contour_distance(full, reach=self.reach_px)
            self._slices[i] = _Slice(corners, distance if np.isfinite(distance).any() else None)
            self._add(FULL_DOSE, "full dose", i, full, noise_of_full=True)
        return self._slices[i]

    def add(self, method: Method, i: int, out: np.ndarray) -> None:
        """One method's output for slice ``i``."""
        if self.used(i):
            self._where(i)
            self._add(method.name, method.kind, i, out)

    def _add(self, name: str, kind: str, i: int, out: np.ndarray, noise_of_full=False) -> None:
        where = self._slices[i]
        if (name, kind) not in self._order:
            self._order.append((name, kind))
        if where.corners:
            noise = out if noise_of_full else out - self.full[i]
            self._rois.setdefault(name, []).append(crop(noise, where.corners, self.roi_size))
        if where.distance is not None:
            bins, sums, counts = edge_sums(
                out, where.distance, -self.reach_px, self.reach_px, self.bin_px
            )
            pooled = self._esf.setdefault(name, [np.zeros_like(sums), np.zeros_like(counts), bins])
            pooled[0] += sums
            pooled[1] += counts

    def result(self) -> dict:
        """The numbers and curves per method (full dose first), for metrics.json."""
        rows = []
        for name, kind in self._order:
            row: dict = {"method": name, "kind": kind}
            if self._rois.get(name):
                rois = np.concatenate(self._rois[name])
                row["nps"] = noise_power_spectrum(rois, self.pixel_spacing).to_dict()
            if name in self._esf:
                sums, counts, bins = self._esf[name]
                esf = esf_from_sums(bins, sums, counts)
                ttf = ttf_from_esf(bins, esf, self.pixel_spacing, int(counts.sum()))
                row["ttf_body_edge"] = ttf.to_dict()
            rows.append(row)
        used = [i for i in self._slices if self.used(i)]
        return {
            "unit": self.unit,
            "pixel_spacing_mm": self.pixel_spacing if self.spacing else None,
            "slices_used": len(used),
            "nps_rois": sum(len(self._slices[i].corners) for i in used),
            "edge_slices": sum(self._slices[i].distance is not None for i in used),
            "roi_size": self.roi_size,
            "rows": rows,
        }
