"""Denoise a series: a CT series -> a denoised derived series, the one step both the
``denoise`` command and the DICOM node run (read with the one reader, denoise with the one
runtime, write with the one writer). Nothing here knows about command lines or networks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from manas_infer import __version__
from manas_infer.data.derived import Derivation, write_derived_series
from manas_infer.data.series import CTSeries
from manas_infer.errors import InputProblem
from manas_infer.hashing import sha256
from manas_infer.jobs.each_series import DerivedVolumes
from manas_infer.runtime import Denoiser
from manas_infer.runtime.guard import BIAS_GUARD_SIGMA_PX
from manas_infer.runtime.strength import DEFAULT_STRENGTH, check_strength


def denoise_derivation(
    denoiser: Denoiser, strength: float = DEFAULT_STRENGTH, why: str = ""
) -> Derivation:
    """The derived series' name and UID seed. The identity is the model file's sha256, the
    strength and the bias guard, so the same series through the same settings always gets
    the same UIDs (a PACS deduplicates a resend) and any other setting gets new ones. The
    strength is in the SeriesDescription (what a viewer lists), the DerivationDescription
    and the ContributionDescription; ``why`` (the automatic choice's reason) is appended to
    the DerivationDescription."""
    card = denoiser.card
    digest = card.get("sha256") or sha256(denoiser.path)
    dose = card.get("dose_percent")
    for_dose = f"{dose:g} % dose" if isinstance(dose, int | float) else "unknown dose"
    guard = BIAS_GUARD_SIGMA_PX
    text = (
        f"Low-dose CT denoising by the neural network {denoiser.name} trained for "
        f"{for_dose} (MANAS architecture search), manas-infer {__version__}, model sha256 "
        f"{digest[:16]}. Strength {strength:g} % of the estimated noise removed; CT-number "
        f"bias guard: the Gaussian low-pass (sigma {guard:g} px) of the removed part is kept. "
        "AI-processed: not for primary diagnosis."
    )
    if why:
        text += f" Choice: {why}"
    return Derivation(
        identity=f"denoise:{digest}:strength={strength:g}:guard={guard:g}",
        series_description=f"Denoised {for_dose} {denoiser.name} {strength:g}% (manas-infer)"[:64],
        derivation_description=text[:1024],
        series_number_offset=1000,
        equipment_model=f"manas-infer {denoiser.name}"[:64],
        contribution=f"AI denoising, strength {strength:g} % (not for primary diagnosis)",
    )


def denoise_series(
    series: CTSeries,
    denoiser: Denoiser,
    out_dir: Path,
    overwrite: bool = False,
    on_slice: Callable[[int], None] | None = None,
    strength: float = DEFAULT_STRENGTH,
    why: str = "",
) -> DerivedVolumes:
    """Denoise every slice of ``series`` at ``strength`` percent and write the derived series
    atomically to ``out_dir``; ``why`` says how model and strength were chosen.

    Raises InputProblem (naming the file) for slices that cannot be decoded or an output
    folder that exists, before anything is written.
    """
    strength = check_strength(strength)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise InputProblem(out_dir, "output folder exists (use --overwrite to replace it)")
    source = np.empty((series.n_slices, *series.shape), dtype=np.float32)
    output = np.empty_like(source)
    for start, hu in series.iter_hu(batch=denoiser.batch):
        source[start : start + len(hu)] = hu
        output[start : start + len(hu)] = denoiser.denoise(hu, strength)
        if on_slice is not None:
            on_slice(len(hu))
    derivation = denoise_derivation(denoiser, strength, why)
    written = write_derived_series(series, output, derivation, out_dir, overwrite)
    return DerivedVolumes(written, source, output)
