"""Quality gate on faint lesions: the shipped default (``denoise`` without ``--model``: model
and strength from each image's own noise, CT-number guard) makes no rod of the FDA LCD-CT
phantom less detectable than in the phantom's own images, at any of its three doses.

The phantom's images come from another scanner and reconstruction than any training data,
with real noise (nothing simulated), and no model was trained on them. Detectability is the
channelized Hotelling observer's AUC, each rod against its input by a paired bootstrap
(``manas_infer/evaluate/detectability.py``); "less detectable" is a 95 % interval of the AUC
change entirely below 0, the verdict ``bench/results/physics-lcd.md`` reports."""

from __future__ import annotations

import pytest
from conftest import LCD_PHANTOM, need

from manas_infer.evaluate.lcd import load_lcd_phantom, run_lcd_battery
from manas_infer.evaluate.methods import automatic_method, low_dose_input


@pytest.fixture(scope="module")
def battery() -> dict:
    phantom = load_lcd_phantom(need(LCD_PHANTOM))
    return run_lcd_battery(phantom, [low_dose_input(), automatic_method("cpu")])


@pytest.mark.slow
@pytest.mark.realdata
def test_the_shipped_default_makes_no_lcd_rod_less_detectable(battery: dict) -> None:
    rows = [row for row in battery["rows"] if row["kind"] == "model"]
    assert sorted(row["dose_percent"] for row in rows) == [10, 55, 100]
    lowered = [
        (row["dose_percent"], rod, entry["vs_input"])
        for row in rows
        for rod, entry in row["cho"].items()
        if entry["vs_input"]["verdict"] == "lowers"
    ]
    assert not lowered, lowered
    # ... and it does denoise: at the phantom's 10 % (about 70 HU of noise) the noise falls
    # by at least a third, while at 100 % (22 HU, normal-dose noise) it is left almost as it is.
    inputs = {r["dose_percent"]: r["nps"]["sd_hu"] for r in battery["rows"] if r["kind"] == "input"}
    outputs = {row["dose_percent"]: row["nps"]["sd_hu"] for row in rows}
    assert outputs[10] < 0.67 * inputs[10], (inputs, outputs)
    assert outputs[100] > 0.85 * inputs[100], (inputs, outputs)
