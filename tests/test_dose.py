"""The dose simulator: settings validation, reproducibility, attenuation clipping, and noise
that scales as 1/sqrt(dose) on a real chest slice and on the FDA LCD phantom."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import LCD_PHANTOM, need
from scipy import ndimage

from manas_infer.simulate.dose import (
    MU_WATER_PER_MM,
    DoseSettings,
    LowDoseSimulator,
    attenuation_per_pixel,
)

# The LCD phantom's uniform centre (no inserts there), 40 x 40 px.
LCD_ROI = (slice(108, 148), slice(108, 148))


def disc_image(n: int, outside: float = -1000.0) -> np.ndarray:
    """A water disc with a bone-like insert; ``outside`` fills everything beyond radius."""
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    r = np.hypot(xx, yy)
    img = np.where(r < 0.4 * n, 0.0, -1000.0).astype(np.float32)
    img[np.hypot(xx - 0.1 * n, yy) < 0.08 * n] = 700.0
    img[r >= 0.48 * n] = outside
    return img


def soft_tissue_roi(hu: np.ndarray, side: int = 64) -> tuple[slice, slice]:
    """The ``side``-square window nearest the image centre that is all soft tissue
    (-300..400 HU): the body, away from lung, bone and air."""
    tissue = (hu > -300) & (hu < 400)
    # A window centred at (r, c) is all tissue iff the minimum over it is True.
    ok = ndimage.minimum_filter(tissue.astype(np.uint8), size=side, mode="constant") > 0
    if not ok.any():
        pytest.fail(f"no {side}x{side} soft-tissue window in the slice")
    rows, cols = np.nonzero(ok)
    k = np.argmin((rows - hu.shape[0] / 2) ** 2 + (cols - hu.shape[1] / 2) ** 2)
    r0, c0 = rows[k] - side // 2, cols[k] - side // 2
    return slice(r0, r0 + side), slice(c0, c0 + side)


def fast(dose: float = 10.0, **kw: object) -> LowDoseSimulator:
    return LowDoseSimulator(DoseSettings(dose, n_views=kw.pop("n_views", 90), **kw))  # type: ignore[arg-type]


# --- settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dose_percent": 0.0}, r"dose_percent must be in \(0, 100\]"),
        ({"dose_percent": -5.0}, r"dose_percent must be in \(0, 100\]"),
        ({"dose_percent": 150.0}, r"dose_percent must be in \(0, 100\]"),
        ({"dose_percent": float("nan")}, "dose_percent must be finite"),
        ({"dose_percent": "5"}, "dose_percent must be a number"),
        ({"dose_percent": 5.0, "n_views": 0}, "n_views must be a positive integer"),
        ({"dose_percent": 5.0, "n_views": 2.5}, "n_views must be a positive integer"),
        ({"dose_percent": 5.0, "p0": 0.0}, "p0"),
        ({"dose_percent": 5.0, "electronic_variance": -1.0}, "electronic_variance must be >= 0"),
        ({"dose_percent": 5.0, "mode": "bogus"}, "mode must be one of insertion, reconstruction"),
        ({"dose_percent": 5.0, "mu_water": 0.0}, "mu_water"),
    ],
)
def test_invalid_settings_raise_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DoseSettings(**kwargs)


def test_settings_defaults_and_manifest_round_trip() -> None:
    s = DoseSettings(5)
    assert (s.dose_percent, s.p0, s.electronic_variance, s.n_views) == (5.0, 1e6, 10.0, 720)
    assert s.mode == "insertion" and s.mu_water == MU_WATER_PER_MM == 0.0192
    assert s.incident_photons == pytest.approx(5e4)
    record = json.loads(json.dumps(s.to_dict()))
    assert DoseSettings(**record) == s
    with pytest.raises(AttributeError):
        s.dose_percent = 10.0  # type: ignore[misc]


# --- attenuation, reproducibility, modes ------------------------------------------------


def test_padding_below_minus_1000_gives_no_negative_attenuation() -> None:
    n = 64
    padded = torch.from_numpy(disc_image(n, outside=-3024.0))
    mu = attenuation_per_pixel(padded, 0.8)
    assert float(mu.min()) == 0.0
    assert float(mu[0, 0]) == 0.0  # -3024 HU -> exactly no attenuation
    assert float(mu[n // 2, n // 2 - 10]) == pytest.approx(MU_WATER_PER_MM * 0.8)
    # -3024 and -1000 outside the disc project identically, hence get the same noise inside
    # it; the padding itself comes back as the scanner wrote it, with no noise, as air does not.
    air = torch.from_numpy(disc_image(n, outside=-1000.0))
    sim = fast()
    gen = torch.Generator().manual_seed(7)
    noisy_padded = sim.simulate(padded, 0.8, generator=gen)
    gen = torch.Generator().manual_seed(7)
    noisy_air = sim.simulate(air, 0.8, generator=gen)
    assert torch.isfinite(noisy_padded).all()
    outside = padded <= -1500.0
    assert int(outside.sum()) > n  # the test has padding to keep
    torch.testing.assert_close(noisy_padded[outside], padded[outside], atol=0, rtol=0)
    assert float((noisy_air - air)[outside].std()) > 1.0  # real air is noisy
    inside = ~outside
    torch.testing.assert_close(
        (noisy_padded - padded)[inside], (noisy_air - air)[inside], atol=1e-3, rtol=0
    )
    rec = fast(mode="reconstruction").simulate(padded, 0.8, generator=gen)
    assert torch.isfinite(rec).all()
    torch.testing.assert_close(rec[outside], padded[outside], atol=0, rtol=0)


def test_same_seed_same_output_and_batch_size_does_not_matter() -> None:
    stack = np.stack([disc_image(48), disc_image(48)[::-1].copy(), disc_image(48).T.copy()])
    sim = fast(5.0)
    a = sim.simulate_numpy(stack, 0.7, seed=11, batch_size=3)
    b = sim.simulate_numpy(stack, 0.7, seed=11, batch_size=3)
    c = sim.simulate_numpy(stack, 0.7, seed=11, batch_size=1)
    d = sim.simulate_numpy(stack, 0.7, seed=12, batch_size=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, c, atol=1e-3)
    assert np.abs(a - d).mean() > 1.0  # another seed, other noise
    single = sim.simulate_numpy(stack[1], 0.7, seed=11)
    assert single.shape == (48, 48) and single.dtype == np.float32
    # torch API: the same generator seed reproduces the batch.
    t = torch.from_numpy(stack)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(sim.simulate(t, 0.7, g1), sim.simulate(t, 0.7, g2), rtol=0, atol=0)


def test_non_square_slices_keep_shape_and_noise_only_where_expected() -> None:
    img = disc_image(64)[8:56, :]  # 48 x 64
    out = fast().simulate(torch.from_numpy(img), 0.9, torch.Generator().manual_seed(0))
    assert out.shape == (48, 64)
    assert torch.isfinite(out).all()
    assert float((out - torch.from_numpy(img)).std()) > 1.0


def test_noise_free_limit_returns_the_image() -> None:
    """With (nearly) infinite photons insertion adds nothing, and reconstruction returns the
    image up to FBP's own error (here checked in a flat water region)."""
    img = torch.from_numpy(disc_image(64))
    gen = torch.Generator().manual_seed(0)
    exact = dict(dose=100.0, p0=1e14, electronic_variance=0.0)
    ins = fast(**exact).simulate(img, 1.0, gen)
    assert float((ins - img).abs().max()) < 0.5
    rec = fast(mode="reconstruction", **exact).simulate(img, 1.0, gen)
    water = rec[20:44, 14:24]  # inside the disc, left of the insert
    assert float(img[20:44, 14:24].abs().max()) == 0.0
    assert abs(float(water.mean())) < 10.0


def test_pixel_spacing_validation() -> None:
    sim = fast()
    img = torch.zeros(2, 16, 16)
    with pytest.raises(ValueError, match="pixel_spacing_mm must be finite and > 0"):
        sim.simulate(img, 0.0)
    with pytest.raises(ValueError, match="one value or one per slice"):
        sim.simulate(img, torch.tensor([1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[H, W\] or \[B, H, W\]"):
        sim.simulate(torch.zeros(1, 1, 16, 16), 1.0)
    out = sim.simulate(img, torch.tensor([0.5, 1.0]))
    assert out.shape == (2, 16, 16)


# --- noise level against dose ------------------------------------------------------------


def roi_std(sim: LowDoseSimulator, hu: np.ndarray, spacing: float, roi: tuple, seeds: int) -> float:
    """Added-noise std in ``roi``, pooled over ``seeds`` realisations (variance average)."""
    var = [float(np.var((sim.simulate_numpy(hu, spacing, seed=s) - hu)[roi])) for s in range(seeds)]
    return math.sqrt(sum(var) / len(var))


@pytest.mark.slow
@pytest.mark.realdata
def test_noise_std_scales_as_inverse_sqrt_dose_on_chest(
    chest_slice: tuple[np.ndarray, float],
) -> None:
    """Ratios within 7 % of sqrt(2) and 2. The quantum noise scales exactly; electronic noise
    (sigma_e^2 = 10 counts) adds relatively more at low dose, +3..4 % on this slice at 2.5 %
    (observed ratio 2.04..2.10 over seeds), and the std of 64 x 64 correlated pixels from two
    realisations carries ~1.5 % sampling error."""
    hu, spacing = chest_slice
    roi = soft_tissue_roi(hu)
    std = {d: roi_std(LowDoseSimulator(DoseSettings(d)), hu, spacing, roi, 2) for d in (10, 5, 2.5)}
    print(f"chest added-noise std (HU) in {roi}: {std}")
    assert 5.0 < std[10] < 300.0
    assert std[5] / std[10] == pytest.approx(math.sqrt(2), rel=0.07)
    assert std[2.5] / std[10] == pytest.approx(2.0, rel=0.07)


def read_lcd(path: str) -> tuple[np.ndarray, float]:
    sitk = pytest.importorskip("SimpleITK")
    image = sitk.ReadImage(str(need(LCD_PHANTOM / path)))
    return sitk.GetArrayFromImage(image).astype(np.float32) - 1000.0, float(image.GetSpacing()[0])


@pytest.mark.slow
@pytest.mark.realdata
def test_lcd_phantom_noise_and_ours_both_follow_inverse_sqrt_dose() -> None:
    """The FDA phantom's own 10 % / 100 % noise ratio follows sqrt(10) within 8 % (its
    README: ~77 and ~25 HU, ratio 3.08), and so does ours on its ground truth within 6 %
    (no electronic-noise bias to speak of through 23 cm of water at these doses).
    Absolute values differ (their scanner model and kernel are not ours): only a plausible
    CT range is asserted for ours."""
    theirs = {}
    for dose in (10, 100):
        stack, _ = read_lcd(f"dose_{dose:03d}/signal_absent/signal_absent.mhd")
        theirs[dose] = float(np.sqrt(np.mean([np.var(s[LCD_ROI]) for s in stack])))
    truth, spacing = read_lcd("ground_truth.mhd")
    assert np.ptp(truth[LCD_ROI]) == 0  # uniform centre: the std is pure noise
    stacked = np.stack([truth] * 3)
    ours = {}
    for dose in (10, 100):
        noise = LowDoseSimulator(DoseSettings(dose)).simulate_numpy(stacked, spacing, seed=5)
        ours[dose] = float(np.sqrt(np.mean([np.var(n[LCD_ROI]) for n in noise - stacked])))
    print(
        f"LCD phantom centre noise std (HU), theirs: 10 % {theirs[10]:.1f}, 100 % "
        f"{theirs[100]:.1f}; ours (spacing {spacing} mm): 10 % {ours[10]:.1f}, "
        f"100 % {ours[100]:.1f}"
    )
    assert 60 < theirs[10] < 95 and 18 < theirs[100] < 32  # the README's 77 and 25
    assert theirs[10] / theirs[100] == pytest.approx(math.sqrt(10), rel=0.08)
    assert ours[10] / ours[100] == pytest.approx(math.sqrt(10), rel=0.06)
    assert 5.0 < ours[10] < 300.0 and ours[100] < ours[10]
