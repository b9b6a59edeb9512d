"""The synthetic phantom: plausible HU per tissue, lesions where and as strong as stated,
deterministic per seed, the same anatomy at every matrix size, smooth along z."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from manas_infer.data.phantom import (
    BODY_LENGTH_MM,
    Lesion,
    lesions,
    phantom_slice,
    phantom_volume,
    pixel_spacing_mm,
    slice_positions,
    slice_spacing_mm,
)

SEEDS = (0, 1, 2)


def _distance_mm(size: int, les: Lesion, fov_mm: float = 400.0) -> np.ndarray:
    """Distance of every pixel centre from the lesion centre, mm."""
    rr, cc = np.mgrid[:size, :size]
    return np.hypot(rr - les.row, cc - les.col) * pixel_spacing_mm(size, fov_mm)


def _inside_and_ring(img: np.ndarray, les: Lesion) -> tuple[float, float]:
    """Mean HU inside the lesion (1 mm clear of its edge) and in the ring of background the
    phantom keeps free around it (r + 1 mm to r + max(r, 3 mm))."""
    d = _distance_mm(img.shape[0], les)
    r = les.radius_mm
    inside = img[d < r - 1.0]
    ring = img[(d > r + 1.0) & (d < r + max(r, 3.0))]
    return float(inside.mean()), float(ring.mean())


def _largest_enclosed_area_mm2(mask: np.ndarray, spacing: float) -> float:
    """Area of the largest connected region of ``mask`` not touching the image border."""
    lab, n = ndimage.label(mask)
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    counts = np.bincount(lab.ravel(), minlength=n + 1)
    counts[border] = 0
    counts[0] = 0
    return float(counts.max()) * spacing**2


def test_shape_dtype_and_spacing() -> None:
    img = phantom_slice(96, 0.5, 0)
    assert img.shape == (96, 96)
    assert img.dtype == np.float32
    assert np.isfinite(img).all()
    assert pixel_spacing_mm(512, 400.0) == pytest.approx(400.0 / 512)
    assert pixel_spacing_mm(128, 320.0) == pytest.approx(2.5)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("z", [0.0, 0.5, 1.0])
def test_air_outside_body(seed: int, z: float) -> None:
    img = phantom_slice(128, z, seed)
    band = 128 // 10  # 40 mm: no patient is that close to the top or bottom of the FOV
    corner = 20
    outside = np.concatenate(
        [
            img[:band].ravel(),
            img[-band:].ravel(),
            img[:corner, :corner].ravel(),
            img[:corner, -corner:].ravel(),
            img[-corner:, :corner].ravel(),
            img[-corner:, -corner:].ravel(),
        ]
    )
    np.testing.assert_allclose(outside, -1000.0, atol=0.5)
    # ... and the body is there: the centre is tissue or lung, hardly any air.
    centre = img[48:80, 48:80]
    assert np.mean(centre > -950) > 0.9


def test_table_is_optional_and_below_the_body() -> None:
    plain = phantom_slice(128, 0.5, 0)
    with_table = phantom_slice(128, 0.5, 0, table=True)
    changed = np.argwhere(np.abs(with_table - plain) > 1.0)
    assert len(changed) > 0
    assert changed[:, 0].min() > 128 * 0.75  # only rows under the body


@pytest.mark.parametrize("seed", SEEDS)
def test_soft_tissue_around_lesions(seed: int) -> None:
    """Lesion hosts (liver, spleen, kidney, muscle, heart) read as soft tissue."""
    rings = []
    for z in (0.1, 0.4, 0.6, 0.8):
        img = phantom_slice(256, z, seed)
        for les in lesions(256, z, seed):
            if les.radius_mm >= 2.0:
                rings.append(_inside_and_ring(img, les)[1])
    assert len(rings) >= 3
    assert all(0.0 <= r <= 80.0 for r in rings), rings


def test_tissue_values_are_plausible() -> None:
    img = phantom_slice(256, 0.5, 0)

    def median_within(lo: float, hi: float) -> float:
        return float(np.median(img[(img > lo) & (img < hi)]))

    assert -120 < median_within(-200, -50) < -80  # fat
    assert 25 < median_within(0, 100) < 65  # soft tissue
    assert img.max() > 1000  # cortical bone
    assert img.min() >= -1000.5  # nothing below air


def test_bone_in_every_slice() -> None:
    vol = phantom_volume(12, 128, seed=0)
    spacing = pixel_spacing_mm(128)
    for i, img in enumerate(vol):
        bone_area = np.sum(img > 500) * spacing**2
        assert bone_area > 100.0, f"slice {i}: only {bone_area:.0f} mm2 above 500 HU"


@pytest.mark.parametrize("seed", SEEDS)
def test_lung_in_thorax_not_in_pelvis(seed: int) -> None:
    spacing = pixel_spacing_mm(128)
    thorax = _largest_enclosed_area_mm2(phantom_slice(128, 0.05, seed) < -700, spacing)
    pelvis = _largest_enclosed_area_mm2(phantom_slice(128, 1.0, seed) < -700, spacing)
    assert thorax > 5000.0  # a lung is ~100 cm2 in the mid-thorax
    assert pelvis < 2500.0  # only bowel gas is left


@pytest.mark.parametrize("seed", SEEDS)
def test_lesions_are_where_and_as_strong_as_stated(seed: int) -> None:
    measured = 0
    for z in (0.3, 0.45, 0.6):
        img = phantom_slice(512, z, seed)
        flat = phantom_slice(512, z, seed, texture=False)
        for les in lesions(512, z, seed):
            assert 0 < les.radius_mm < 10.0
            assert 5.0 <= les.contrast_hu <= 20.0
            assert les.radius_px == pytest.approx(les.radius_mm / pixel_spacing_mm(512))
            if les.radius_mm < 2.5:  # a cap of the rod: too small to measure
                continue
            inside, ring = _inside_and_ring(flat, les)
            assert inside - ring == pytest.approx(les.contrast_hu, abs=0.5)
            inside, ring = _inside_and_ring(img, les)
            assert inside - ring == pytest.approx(les.contrast_hu, abs=3.0)
            measured += 1
    assert measured >= 3


def test_lesion_positions_scale_with_size() -> None:
    big, small = lesions(512, 0.45, 1), lesions(128, 0.45, 1)
    assert len(big) == len(small) > 0
    for b, s in zip(big, small, strict=True):
        # Pixel centres: (i + 0.5) * spacing, so index_512 + 0.5 = 4 * (index_128 + 0.5).
        assert b.row + 0.5 == pytest.approx(4 * (s.row + 0.5))
        assert b.col + 0.5 == pytest.approx(4 * (s.col + 0.5))
        assert b.radius_mm == pytest.approx(s.radius_mm)
        assert b.contrast_hu == s.contrast_hu


def test_lesion_rings_are_clean_background() -> None:
    """Texture-free, the ring around each lesion is one flat tissue: no edges, no other
    lesion, so the ring mean is a fair background for contrast measurements."""
    z, seed = 0.45, 1
    img = phantom_slice(512, z, seed, texture=False)
    for les in lesions(512, z, seed):
        d = _distance_mm(512, les)
        ring = img[(d > les.radius_mm + 1.0) & (d < les.radius_mm + max(les.radius_mm, 3.0))]
        assert np.ptp(ring) < 0.5


def test_deterministic_per_seed() -> None:
    a = phantom_slice(128, 0.4, 5)
    np.testing.assert_array_equal(a, phantom_slice(128, 0.4, 5))
    b = phantom_slice(128, 0.4, 6)
    assert np.mean(np.abs(a - b)) > 10.0
    assert lesions(128, 0.4, 5) == lesions(128, 0.4, 5)
    assert lesions(128, 0.4, 5) != lesions(128, 0.4, 6)


@pytest.mark.parametrize("z", [0.05, 0.5, 0.9])
def test_same_anatomy_at_every_size(z: float) -> None:
    fine = phantom_slice(512, z, 2).reshape(128, 4, 128, 4).mean(axis=(1, 3))
    coarse = phantom_slice(128, z, 2)
    diff = np.abs(fine - coarse)
    assert diff.mean() < 4.0  # only edge pixels differ, by partial-volume detail
    assert np.median(diff) < 0.5
    assert np.mean(diff > 100.0) < 0.01


def test_consecutive_slices_are_similar_not_identical() -> None:
    vol = phantom_volume(64, 128, seed=3, z_start=0.3, z_stop=0.6)
    steps = np.abs(np.diff(vol, axis=0)).mean(axis=(1, 2))
    far = np.abs(vol[-1] - vol[0]).mean()
    assert (steps > 0.1).all()  # every slice is new
    assert steps.max() < 0.25 * far  # yet close to its neighbour
    assert steps.max() < 25.0


def test_volume_matches_slices() -> None:
    vol = phantom_volume(3, 64, seed=4, z_start=0.2, z_stop=0.8)
    assert vol.shape == (3, 64, 64) and vol.dtype == np.float32
    for img, z in zip(vol, slice_positions(3, 0.2, 0.8), strict=True):
        np.testing.assert_array_equal(img, phantom_slice(64, float(z), 4))
    assert slice_spacing_mm(3, 0.2, 0.8) == pytest.approx(0.3 * BODY_LENGTH_MM)


@pytest.mark.parametrize(
    "kwargs",
    [{"size": 4}, {"z": -0.1}, {"z": 1.5}, {"fov_mm": 0.0}, {"z": float("nan")}, {"seed": -1}],
)
def test_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        phantom_slice(**kwargs)  # type: ignore[arg-type]
