"""Training-pair augmentation: the transforms do what their docstring says, pairs stay
aligned, and a run records and resumes them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from manas_infer.hu import HU_MAX, HU_MIN
from manas_infer.train.augment import AIR_HU, Augmentation, augment_pairs


def _pair(b: int = 64, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    normal = torch.full((b, 1, size, size), AIR_HU)
    normal[:, :, 4:12, 4:12] = 40.0  # a soft-tissue square in air
    normal[:, :, 6, 6] = 700.0  # one bright pixel: shows where orientation moved it
    noise = 30.0 * torch.randn(normal.shape, generator=g)
    return normal + noise, normal


def test_contrast_scales_anatomy_about_air_and_keeps_the_noise_aligned() -> None:
    low, normal = _pair()
    aug = Augmentation(orientation=False, sharpen=(0.0, 0.0), contrast=(2.0, 2.0), noise=(1.0, 1.0))
    low2, normal2 = augment_pairs(low, normal, aug, torch.Generator().manual_seed(1))
    assert torch.allclose(normal2[:, :, 0, 0], torch.full((64, 1), AIR_HU))
    assert torch.allclose(normal2[:, :, 8, 8], torch.full((64, 1), AIR_HU + 2 * 1040.0))
    expected = (normal2 + (low - normal)).clamp(HU_MIN, HU_MAX)  # the same noise, clamped
    assert torch.allclose(low2, expected, atol=1e-3)


def test_noise_gain_scales_the_residual_like_a_lower_dose() -> None:
    low, normal = _pair()
    aug = Augmentation(orientation=False, sharpen=(0.0, 0.0), contrast=(1.0, 1.0), noise=(0.5, 0.5))
    low2, normal2 = augment_pairs(low, normal, aug, torch.Generator().manual_seed(1))
    inside = (slice(None), slice(None), slice(4, 12), slice(4, 12))
    ratio = (low2 - normal2)[inside].std() / (low - normal)[inside].std()
    assert ratio == pytest.approx(0.5, abs=1e-4)


def test_draws_cover_their_ranges_per_pair() -> None:
    low, normal = _pair(b=256)
    aug = Augmentation(orientation=False, sharpen=(0.0, 0.0), contrast=(0.5, 2.0), noise=(1.0, 1.0))
    _, normal2 = augment_pairs(low, normal, aug, torch.Generator().manual_seed(3))
    scale = (normal2[:, 0, 8, 8] - AIR_HU) / 1040.0
    assert scale.min() >= 0.5 - 1e-5 and scale.max() <= 2.0 + 1e-5
    assert scale.min() < 0.6 and scale.max() > 1.7  # log-uniform reaches both ends
    assert (scale < 1).float().mean().item() == pytest.approx(0.5, abs=0.1)


def test_orientation_moves_both_images_the_same_way_and_covers_all_eight() -> None:
    low, normal = _pair(b=256)
    aug = Augmentation(orientation=True, sharpen=(0.0, 0.0), contrast=(1.0, 1.0), noise=(1.0, 1.0))
    low2, normal2 = augment_pairs(low, normal, aug, torch.Generator().manual_seed(4))
    where = {tuple((n[0] == 700.0).nonzero()[0].tolist()) for n in normal2}
    assert len(where) == 4  # a pixel on the diagonal has 4 images under the 8 transforms...
    # ...and the residual went with it: the noise at the bright pixel is unchanged.
    for lo, no, lo2, no2 in zip(low[:8], normal[:8], low2[:8], normal2[:8], strict=True):
        r, c = (no2[0] == 700.0).nonzero()[0].tolist()
        assert lo2[0, r, c] == pytest.approx(lo[0, 6, 6].item())
        assert sorted((lo2 - no2).flatten().tolist()) == pytest.approx(
            sorted((lo.clamp(HU_MIN) - no).flatten().tolist()), abs=1e-3
        )


def test_output_is_clamped_to_the_networks_range() -> None:
    low, normal = _pair()
    normal[:, :, 8, 8] = 2500.0
    aug = Augmentation(orientation=False, sharpen=(0.0, 0.0), contrast=(2.0, 2.0), noise=(1.0, 1.0))
    low2, normal2 = augment_pairs(low, normal, aug, torch.Generator().manual_seed(1))
    assert normal2.max() == HU_MAX and low2.min() >= HU_MIN


def test_bad_ranges_are_refused_and_the_dict_round_trips() -> None:
    with pytest.raises(ValueError, match="contrast range"):
        Augmentation(contrast=(2.0, 0.5))
    with pytest.raises(ValueError, match="noise range"):
        Augmentation(noise=(0.0, 1.0))
    aug = Augmentation(contrast=(0.7, 1.3))
    assert Augmentation.from_dict(aug.to_dict()) == aug


def test_sharpening_steepens_edges_and_keeps_flat_regions() -> None:
    normal = torch.full((4, 1, 32, 32), AIR_HU)
    normal[:, :, 8:24, 8:24] = 40.0
    low = normal + 30.0 * torch.randn(normal.shape, generator=torch.Generator().manual_seed(0))
    aug = Augmentation(orientation=False, sharpen=(1.0, 1.0), contrast=(1.0, 1.0), noise=(1.0, 1.0))
    low2, normal2 = augment_pairs(low, normal, aug, torch.Generator().manual_seed(5))
    assert torch.allclose(normal2[:, :, 16, 16], normal[:, :, 16, 16], atol=1.0)  # flat inside
    assert (normal2[:, :, 8, 16] > normal[:, :, 8, 16] + 100).all()  # overshoot at the edge
    inner = (slice(None), slice(None), slice(12, 20), slice(12, 20))
    assert torch.allclose((low2 - normal2)[inner], (low - normal)[inner], atol=1e-3)  # same noise


def test_gaussian_blur_matches_scipy() -> None:
    from scipy.ndimage import gaussian_filter

    from manas_infer.train.augment import gaussian_blur

    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    ours = gaussian_blur(x, 1.0)[0, 0].numpy()
    theirs = gaussian_filter(x[0, 0].numpy(), 1.0, mode="mirror", truncate=3.0)
    assert abs(ours - theirs).max() < 1e-5


def test_noise_grain_of_a_soft_kernel_from_real_fbp_noise_at_the_same_sd() -> None:
    """The LCD phantom's real scanner noise (sharp FBP, ten realisations less their mean),
    apodized: its TG-233 NPS centroid falls from a sharp kernel's to a soft-tissue kernel's,
    its SD does not move, and a small sigma leaves it as it is."""
    from conftest import LCD_PHANTOM, need

    from manas_infer.evaluate.lcd import load_lcd_phantom
    from manas_infer.evaluate.nps import noise_power_spectrum
    from manas_infer.simulate.texture import apodize

    images = load_lcd_phantom(need(LCD_PHANTOM)).images(10, "absent")
    noise = torch.from_numpy((images - images.mean(axis=0)).astype(np.float32))[:, None]
    sigma = [0.0, 0.2, 0.8, 1.2, 0.0, 0.8, 1.2, 0.0, 0.8, 1.2]
    coarse = apodize(noise, sigma)

    def centre(x: torch.Tensor, picks: list[int]) -> tuple[float, float]:
        rois = x[picks, 0, 96:160, 96:160].double().numpy() * np.sqrt(10 / 9)
        nps = noise_power_spectrum(rois)
        return nps.mean_frequency, nps.sd

    sharp_f, sharp_sd = centre(noise, [0, 4, 7])
    assert 0.19 < sharp_f < 0.25 and 60 < sharp_sd < 90  # cycles/pixel; 10 %: ~75 HU
    assert torch.equal(coarse[[0, 1, 4, 7]], noise[[0, 1, 4, 7]])
    soft_f, _ = centre(coarse, [3, 6, 9])
    medium_f, _ = centre(coarse, [2, 5, 8])
    assert soft_f < medium_f < 0.8 * sharp_f and soft_f < 0.13
    # The dose's structure (here a 5 HU bias over half the field) passes unscaled, as a
    # kernel's window passes zero frequency: rescaling it taught shifts of CT numbers.
    biased = noise[[3]].clone()
    biased[..., :128] += 5.0
    shifted = apodize(biased, [1.2]) - apodize(noise[[3]], [1.2])
    assert float(shifted[..., 16:112].mean()) == pytest.approx(5.0, abs=1.0)
    assert abs(float(shifted[..., 144:240].mean())) < 1.0
    for i in (2, 3, 5, 6, 8, 9):
        assert float(coarse[i].std()) == pytest.approx(float(noise[i].std()), rel=1e-4)
    aug = Augmentation(texture=(0.0, 1.4))
    assert Augmentation.from_dict(aug.to_dict()) == aug
    old = {k: v for k, v in aug.to_dict().items() if k != "texture"}  # a run made before it
    assert Augmentation.from_dict(old).texture == (0.0, 0.0)
    with pytest.raises(ValueError, match="texture range"):
        Augmentation(texture=(1.0, 0.5))


def test_lesions_are_inserted_in_soft_tissue_in_both_images_with_their_sizes_and_contrasts() -> (
    None
):
    """Round, faint lesions land only on soft tissue (never in air), in target and input
    alike (the noise is unchanged), at the documented diameters and contrasts, as many as
    asked on average; 0 leaves the pair as it was."""
    from manas_infer.train.augment import (
        LESION_CONTRAST_HU,
        LESION_DIAMETER_PX,
        insert_lesions,
    )

    count, size = 400, 64
    normal = torch.full((count, 1, size, size), AIR_HU)
    normal[:, :, 16:48, 16:48] = 40.0  # soft tissue, 32 x 32 px, in air
    noise = 30.0 * torch.randn(normal.shape, generator=torch.Generator().manual_seed(0))
    plain = Augmentation(
        orientation=False, sharpen=(0.0, 0.0), contrast=(1.0, 1.0), noise=(1.0, 1.0)
    )
    with_lesions = Augmentation(**{**plain.to_dict(), "lesions": 2.0})
    assert Augmentation.from_dict(with_lesions.to_dict()) == with_lesions
    low2, normal2 = augment_pairs(
        normal + noise, normal, with_lesions, torch.Generator().manual_seed(5)
    )
    tissue = (slice(None), slice(None), slice(16, 48), slice(16, 48))  # no clamping there
    assert torch.allclose((low2 - normal2)[tissue], noise[tissue], atol=1e-3)  # same noise
    added = normal2 - normal
    touched = added.abs() > 1.0
    # Centres only on tissue: air beyond a lesion's radius and edge from it stays as it was.
    assert not touched[:, :, :6].any() and not touched[:, :, 58:].any()
    assert not touched[:, :, :, :6].any() and not touched[:, :, :, 58:].any()
    # Lesions per patch: the tissue covers a quarter of the patch, so 2 x 0.25 land on
    # average, and 1 - exp(-0.5) = 39 % of the patches get at least one.
    peaks = added.flatten(1).abs().amax(1)
    assert 0.28 < (peaks > 1.0).float().mean().item() < 0.5
    # Single lesions far from the edges: contrast within the range, diameter within the range.
    one = insert_lesions(normal[:1].clone(), 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(one, normal[:1])
    lo, hi = LESION_CONTRAST_HU
    assert peaks.max().item() <= 2 * hi  # two overlapping lesions at most, in practice
    strongest = added.flatten(1).abs().amax(1)
    assert ((strongest > lo * 0.9) | (strongest < 1.0)).all()
    area = (added.abs() > 0.5 * strongest[:, None, None, None]).flatten(1).sum(1).float()
    single = (strongest > 1.0) & (area > 0)
    diameters = 2 * torch.sqrt(area[single] / torch.pi)
    assert (
        diameters.min() > LESION_DIAMETER_PX[0] - 1.5
        and diameters.max() < 2 * LESION_DIAMETER_PX[1]
    )
    signs = torch.sign(added.flatten(1).sum(1))[single]
    assert (signs > 0).any() and (signs < 0).any()  # darker and brighter lesions
    _, plain_normal = augment_pairs(normal + noise, normal, plain, torch.Generator().manual_seed(5))
    assert torch.equal(plain_normal, normal)
