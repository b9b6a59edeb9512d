"""Strength, the CT-number bias guard, the noise estimate and the automatic model choice, on
real data: the estimator returns known noise, 0 % is the input and 100 % the network up to
the guard, the guard keeps CT numbers, a noisier series gets a stronger model while a
normal-dose one is left almost untouched, explicit settings win, and the node chooses the
same way when no routing rule matches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import CT, LCD_PHANTOM, PANCREAS, copy_slices, need
from typer.testing import CliRunner

from manas_infer.cli import app
from manas_infer.data.series import scan
from manas_infer.dicom_node.config import NodeConfigError, load_config
from manas_infer.dicom_node.routing import Router
from manas_infer.runtime import Denoiser, ModelError
from manas_infer.runtime.calibrate import COMMAND, model_doses
from manas_infer.runtime.choice import NoiseLevels, choose, fit, load_levels
from manas_infer.runtime.guard import BIAS_GUARD_SIGMA_PX, low_frequencies, uniform_regions
from manas_infer.runtime.noise import (
    FINE_GRAIN_FROM,
    slice_grain,
    slice_noise,
    soft_tissue_mask,
    volume_noise,
)
from manas_infer.runtime.strength import DEFAULT_STRENGTH, StrengthError, check_strength

HEAD = CT / "ge-head-std"
runner = CliRunner()
ALLOW = "security.allow_any=true"


def _within(value: float, truth: float, tolerance: float) -> bool:
    return abs(value / truth - 1.0) < tolerance


def test_estimator_returns_the_sd_of_white_noise_despite_structure() -> None:
    rng = np.random.default_rng(0)
    hu = np.full((256, 256), 40.0, dtype=np.float32)
    yy, xx = np.mgrid[:256, :256]
    hu[(yy - 128) ** 2 + (xx - 90) ** 2 < 30**2] = 110.0  # an enhancing organ inside the mask
    hu[100:104, :] = 500.0  # a bone strip, outside it
    for sd in (8.0, 30.0):
        noisy = hu + rng.normal(0, sd, hu.shape).astype(np.float32)
        assert _within(slice_noise(noisy), sd, 0.05), sd


def test_estimator_returns_real_fbp_noise_of_the_lcd_phantom() -> None:
    """Real scanner noise (FBP, 10 % and 100 % dose) against the noise-free ground truth."""
    root = need(LCD_PHANTOM)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "ground_truth.mhd")))
    truth = truth.astype(np.float32).squeeze() - 1000.0
    mask = soft_tissue_mask(truth)
    for dose in ("dose_010", "dose_100"):
        path = root / dose / "signal_present" / "signal_present.mhd"
        images = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32) - 1000.0
        for image in images[:2]:
            true = float((image - truth)[mask].std())
            assert _within(slice_noise(image, mask), true, 0.10), (dose, true)


def test_estimator_returns_simulated_low_dose_noise_on_a_real_slice() -> None:
    """A real abdomen slice at simulated 5 % dose: the estimate on the low-dose image is the
    simulated noise, SD(low - normal), added in quadrature to the slice's own."""
    from manas_infer.simulate.dose import DoseSettings, LowDoseSimulator

    series = scan(need(PANCREAS)).series[0]
    normal = series.read_slice_hu(series.n_slices // 2)
    low = LowDoseSimulator(DoseSettings(dose_percent=5)).simulate_numpy(
        normal, series.pixel_spacing[0], seed=0
    )
    mask = soft_tissue_mask(low)
    true = float(np.hypot((low - normal)[mask].std(), slice_noise(normal)))
    assert true > 60  # really noisy: the check is about the correlated noise, not the image
    assert _within(slice_noise(low), true, 0.10)


def test_grain_tells_the_ramp_and_sharp_kernels_from_a_soft_kernels_mottle() -> None:
    """White noise reads 1; a real abdomen at simulated 5 % reads fine at the simulator's
    ramp grain and coarse with a soft kernel's grain at the same SD; the series' own
    normal-dose noise reads coarse (an iDose abdomen kernel)."""
    from manas_infer.evaluate.pairs import Pairs, with_grain
    from manas_infer.simulate.dose import DoseSettings, LowDoseSimulator

    rng = np.random.default_rng(0)
    white = np.float32(40.0) + rng.normal(0, 50, (256, 256)).astype(np.float32)
    assert abs(slice_grain(white) - 1.0) < 0.03
    series = scan(need(PANCREAS)).series[0]
    normal = series.read_slice_hu(series.n_slices // 2)
    low = LowDoseSimulator(DoseSettings(dose_percent=5)).simulate_numpy(
        normal, series.pixel_spacing[0], seed=0
    )
    soft = with_grain(Pairs([low], [normal], ["x"], "test", spacing=[1.0]), 0.8).low[0]
    ramp_grain, soft_grain = slice_grain(low), slice_grain(soft)
    assert ramp_grain > 0.9 and soft_grain < 0.7, (ramp_grain, soft_grain)
    assert slice_grain(normal) < FINE_GRAIN_FROM
    # The noise SD itself does not depend on the grain (the choice of dose stays right).
    assert _within(slice_noise(soft), slice_noise(low), 0.06)
    estimate = volume_noise(np.stack([soft, soft]))
    assert estimate.grain_name == "coarse" and "coarse grain" in estimate.describe()


def test_each_grain_gets_the_model_family_taught_it() -> None:
    """The calibration knows which shipped models were taught a soft kernel's grain; the
    same noise SD gets the fine model for fine grain and the soft one for coarse grain, at
    the same dose and strength; an unmeasured grain falls back to every model."""
    levels = load_levels()
    assert {level.grain for level in levels.models} == {"fine", "coarse"}
    for level in levels.models:
        assert (level.grain == "coarse") == level.name.endswith("-soft"), level
    fine, strength_fine = fit(75.0, levels, grain="fine")
    coarse, strength_coarse = fit(75.0, levels, grain="coarse")
    assert fine.name == "manas-5pct" and coarse.name == "manas-5pct-soft"
    assert strength_fine == strength_coarse == DEFAULT_STRENGTH
    assert fit(75.0, levels)[0].name in {"manas-5pct", "manas-5pct-soft"}


@pytest.fixture(scope="module")
def five_pct() -> Denoiser:
    return Denoiser("manas-5pct", device="cpu", warm_up=None)


@pytest.fixture(scope="module")
def head_slice() -> np.ndarray:
    """A normal-dose head slice with all four uniform regions (scalp fat is thin higher up)."""
    return scan(need(HEAD)).series[0].read_slice_hu(10)


def test_strength_zero_is_the_input_and_full_is_the_network_up_to_the_guard(
    five_pct: Denoiser, head_slice: np.ndarray
) -> None:
    x = head_slice[128:384, 128:384] + np.float32(0.25)  # not integers: exactness shows
    net = five_pct(x)
    assert np.array_equal(five_pct.denoise(x, 0.0), x)
    assert np.allclose(five_pct.denoise(x, 100.0, guard_sigma_px=None), net, atol=1e-3)
    guarded = five_pct.denoise(x, 100.0)
    assert np.allclose(guarded, net + low_frequencies(x - net, x, BIAS_GUARD_SIGMA_PX), atol=1e-3)
    half = five_pct.denoise(x, 50.0)
    assert np.allclose(half, (x + guarded) / 2, atol=1e-3)
    assert float(np.abs(guarded - x).mean()) > 1.0  # the network did change the image
    for bad in (-1, 100.5, float("nan"), "much"):
        with pytest.raises(StrengthError, match="--strength"):
            check_strength(bad)


def test_scanner_padding_comes_back_as_it_came(five_pct: Denoiser, head_slice: np.ndarray) -> None:
    """The GE head's out-of-field circle (-1500 HU, written by the scanner): the bare network
    moves it (it sees it clamped to -1024), the denoiser returns it untouched at every
    strength, and the patient inside is still denoised."""
    padding = head_slice <= -1500.0
    assert padding.sum() > 20_000  # the corners outside the reconstruction circle
    net = five_pct(head_slice)
    assert float(np.abs(net - head_slice)[padding].max()) > 0.5
    for strength in (50.0, DEFAULT_STRENGTH, 100.0):
        out = five_pct.denoise(head_slice, strength)
        assert np.array_equal(out[padding], head_slice[padding]), strength
        assert float(np.abs(out - head_slice)[~padding].mean()) > 1.0


def test_bias_guard_keeps_uniform_regions_within_2_hu_on_a_real_slice(
    five_pct: Denoiser, head_slice: np.ndarray
) -> None:
    """A normal-dose head through the 5 % model at full strength: without the guard the
    mean of air, fat or brain moves by more than 2 HU (the issue measured air -8 HU); with
    it none does, nor bone (the issue's limit for all four), and the noise the network
    removes is still removed. On a noise-free skull what a network changes in bone is blur
    of thin bone, not a bias the guard takes out: recipe v5 (manas-5pct-soft) moved it
    -2.6 HU here (bench/results/compare-v5.md), v3 -0.9."""
    regions = uniform_regions(head_slice)
    assert all(m.sum() > 300 for m in regions.values()), {k: m.sum() for k, m in regions.items()}
    net = five_pct(head_slice)
    raw = {k: float((net - head_slice)[m].mean()) for k, m in regions.items()}
    guarded = five_pct.denoise(head_slice, 100.0)
    kept = {k: float((guarded - head_slice)[m].mean()) for k, m in regions.items()}
    uniform = ("air", "fat", "soft tissue")
    assert max(abs(raw[k]) for k in uniform) > 2.0, raw
    assert max(abs(kept[k]) for k in uniform) < 2.0, kept
    assert abs(kept["bone"]) < 2.0, (raw, kept)
    sd = [slice_noise(im) for im in (head_slice, net, guarded)]
    assert sd[2] < sd[0] and abs(sd[2] - sd[1]) < 0.1 * sd[0], sd


def test_ct_numbers_of_all_four_regions_within_2_hu_of_the_full_dose_at_5_percent(
    five_pct: Denoiser, head_slice: np.ndarray
) -> None:
    """The issue's limit where it applies: the head simulated at 5 %, denoised by the 5 % model
    at the default strength, against its full dose: air, fat, brain and bone within 2 HU,
    while the denoised image is far closer to the full dose than the input (recipe v5
    blurred the skull to -2.3 HU here, one reason it serves only coarse-grain series, as
    manas-5pct-soft)."""
    from manas_infer.simulate.dose import DoseSettings, LowDoseSimulator

    spacing = scan(need(HEAD)).series[0].pixel_spacing[0]
    low = LowDoseSimulator(DoseSettings(dose_percent=5)).simulate_numpy(head_slice, spacing, seed=0)
    out = five_pct.denoise(low)
    regions = uniform_regions(head_slice)
    shift = {k: float((out - head_slice)[m].mean()) for k, m in regions.items()}
    assert max(abs(v) for v in shift.values()) < 2.0, shift
    inside = head_slice > -500.0
    error_in, error_out = (np.sqrt(np.mean((x - head_slice)[inside] ** 2)) for x in (low, out))
    assert error_out < 0.7 * error_in, (error_in, error_out)


def test_calibration_file_covers_the_shipped_models_and_says_how_it_was_made() -> None:
    levels = load_levels()
    assert levels is not None, "models/noise-levels.json is missing"
    data = json.loads(levels.source.read_text())
    assert data["command"] == COMMAND
    shipped = model_doses(levels.source.parent)
    assert {m.name for m in levels.models} == set(shipped)
    by_dose = sorted(levels.models, key=lambda m: -shipped[m.name][0])
    centres = [m.centre_hu for m in by_dose]
    assert centres == sorted(centres) and levels.normal_dose_hu < centres[0]
    for m in levels.models:
        assert m.low_hu <= m.centre_hu <= m.high_hu


def test_a_broken_calibration_is_named(tmp_path: Path) -> None:
    (tmp_path / "noise-levels.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"noise-levels\.json: not a usable noise calibration"):
        load_levels(tmp_path)


def test_fit_gives_noisier_series_stronger_models_and_clean_ones_nothing() -> None:
    levels = load_levels()
    assert levels is not None
    sds = np.geomspace(levels.normal_dose_hu * 0.3, 400, 40)
    for grain in ("fine", "coarse"):
        family = [level for level in levels.models if level.grain == grain]
        fitted = [fit(float(sd), levels, grain=grain) for sd in sds]
        assert {m.grain for m, _ in fitted} == {grain}
        centres = [m.centre_hu for m, _ in fitted]
        strengths = [s for _, s in fitted]
        assert centres == sorted(centres) and len(set(centres)) == len(family) == 3
        assert strengths == sorted(strengths) and strengths[-1] == DEFAULT_STRENGTH
    assert fit(levels.normal_dose_hu * 0.9, levels)[1] == 0.0
    # The estimator reads a series' noise to a few per cent (noise-choice.md): an estimate 5 %
    # above the normal-dose level must not turn into a real change of a normal-dose series.
    assert fit(levels.normal_dose_hu * 1.05, levels)[1] <= 5.0
    synthetic = NoiseLevels(levels.models, 20.0, levels.source)
    assert 0 < fit(30.0, synthetic)[1] < DEFAULT_STRENGTH


@pytest.fixture(scope="module")
def head_series(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two real normal-dose head slices, and the same slices simulated at 2.5 % dose."""
    base = tmp_path_factory.mktemp("head")
    copy_slices(need(HEAD), base / "normal", 2, start=12)
    result = runner.invoke(app, ["simulate", str(base / "normal"), "--dose", "2.5", "--out",
                                 str(base / "low"), "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    return {"normal": base / "normal", "low": base / "low", "base": base}


def test_choice_picks_a_stronger_model_for_a_noisier_series(head_series: dict) -> None:
    normal = choose(scan(head_series["normal"]).series[0])
    low = choose(scan(head_series["low"]).series[0])
    assert normal.automatic and low.automatic
    assert normal.noise.sd_hu < 10 < 50 < low.noise.sd_hu
    levels = {m.name: m.centre_hu for m in load_levels().models}
    assert levels[low.model.name] > levels[normal.model.name]
    assert low.strength > normal.strength
    assert f"measured noise {low.noise.sd_hu:.1f} HU" in low.why and low.model.name in low.why


def _denoise(*args: object):
    return runner.invoke(app, ["denoise", *map(str, args), "--device", "cpu", "--json"])


@pytest.mark.parametrize(
    ("name", "start", "noise_below"),
    [("ge-head-std", 12, 10.0), ("tcga-thca-de-a4ma-wholebody", 120, 30.0)],
)
def test_a_normal_dose_series_is_changed_less_than_3_hu_by_default(
    name: str, start: int, noise_below: float, tmp_path: Path
) -> None:
    """The quietest (a head, 5 HU) and the noisiest normal-dose series here (a low-mA PET/CT
    abdomen, about 25 HU, coarse grain: a little above the training series' 21 HU)."""
    normal, out = tmp_path / "normal", tmp_path / "auto"
    copy_slices(CT / name, normal, 2, start=start)
    result = _denoise(normal, "--out", out)
    assert result.exit_code == 0, result.output
    (series,) = json.loads(result.stdout)["series"]
    assert series["automatic"] and series["measured_noise_hu"] < noise_below
    assert "measured noise" in series["why"] and "measured noise" in result.stderr
    before = scan(normal).series[0].read_hu()
    after = scan(out).series[0].read_hu()
    body = before > -500
    assert float(np.sqrt(np.mean((after - before)[body] ** 2))) < 3.0


def test_explicit_model_dose_and_strength_win(head_series: dict) -> None:
    base, normal = head_series["base"], head_series["normal"]
    by_dose = _denoise(normal, "--dose", "10", "--out", base / "d10")
    assert by_dose.exit_code == 0, by_dose.output
    (s,) = json.loads(by_dose.stdout)["series"]
    expected = ("manas-10pct", DEFAULT_STRENGTH, False)
    assert (s["model"], s["strength_percent"], s["automatic"]) == expected
    assert "--dose 10" in s["why"] and "default strength" in s["why"]
    named = _denoise(normal, "--model", "manas-2.5pct", "--strength", "30", "--out", base / "m")
    assert named.exit_code == 0, named.output
    (s,) = json.loads(named.stdout)["series"]
    assert (s["model"], s["strength_percent"]) == ("manas-2.5pct", 30.0)
    auto = _denoise(head_series["low"], "--strength", "40", "--out", base / "s40")
    assert auto.exit_code == 0, auto.output
    (s,) = json.loads(auto.stdout)["series"]
    assert s["automatic"] and s["strength_percent"] == 40.0 and "(--strength)" in s["why"]
    refused = _denoise(normal, "--strength", "150", "--out", base / "x")
    assert refused.exit_code == 2 and not (base / "x").exists()


def test_help_defends_the_default_strength() -> None:
    help_text = runner.invoke(app, ["denoise", "--help"], env={"COLUMNS": "300"}).output
    text = " ".join(help_text.replace("│", " ").split())
    assert f"{DEFAULT_STRENGTH:g} %" in text and "noise-choice.md" in text


def test_node_applies_the_automatic_choice_when_no_rule_matches(head_series: dict) -> None:
    rule = 'routing.rules=[{name="scanner", calling_ae=["CT_LOW"], model="manas-10pct"}]'
    router = Router(load_config(None, [ALLOW, rule]))
    assert {c.name for c in router.choices()} >= {m.name for m in load_levels().models}
    low = scan(head_series["low"]).series[0]
    expected = choose(low)
    route = router.choose("OTHER", None, low)
    assert route.rule == "default" and route.model.name == expected.model.name
    assert route.strength == expected.strength and route.noise_hu == expected.noise.sd_hu
    assert "no rule matched" in route.why and "measured noise" in route.why
    matched = router.choose("CT_LOW", None, low)
    assert (matched.model.name, matched.strength) == ("manas-10pct", DEFAULT_STRENGTH)

    own = 'routing.rules=[{calling_ae=["A"], dose=5, strength=10}]'
    fixed = Router(load_config(None, [ALLOW, own, "processing.strength=25"]))
    assert fixed.choose("A", None, low).strength == 10.0
    assert fixed.choose("B", None, low).strength == 25.0  # automatic model, fixed strength
    named = Router(load_config(None, [ALLOW, 'processing.default_model="manas-2.5pct"']))
    route = named.choose("B", None, low)
    assert (route.model.name, route.strength) == ("manas-2.5pct", DEFAULT_STRENGTH)
    with pytest.raises(NodeConfigError, match=r"processing\.strength must be between 0 and 100"):
        load_config(None, [ALLOW, "processing.strength=150"])
