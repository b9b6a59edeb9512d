"""Which model denoises a series, at which strength, and where its derived series goes: the
config's routing rules, first match wins, by calling AE title, by the dose information in
the data (CTDIvol) and by the reconstruction kernel (ConvolutionKernel). When no rule
matches, every destination, and the model and strength the series' own measured noise calls
for (``manas_infer.runtime.choice``), unless ``processing.default_model`` names one.

Every model a rule names is resolved when the node starts, so a typo in a model name stops
the start-up instead of failing the first series at night.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass

from pydicom.multival import MultiValue

from manas_infer.data.series import CTSeries
from manas_infer.dicom_node.config import NodeConfig, Rule
from manas_infer.runtime import ModelChoice, ModelError, resolve_model
from manas_infer.runtime.choice import choose, load_levels
from manas_infer.runtime.strength import DEFAULT_STRENGTH


@dataclass(frozen=True)
class Route:
    """The decision for one series, with the reason in words for the log and the record."""

    model: ModelChoice
    rule: str
    destinations: tuple[str, ...]
    why: str
    strength: float = DEFAULT_STRENGTH  # percent of the estimated noise removed
    noise_hu: float | None = None  # the measured noise, when the choice measured it


def series_ctdivol(series: CTSeries) -> float | None:
    """The series' CTDIvol (0018,9345) in mGy: the median over the slices that carry one."""
    values = []
    for header in series.slices:
        value = header.dataset.get("CTDIvol")
        try:
            if value is not None and value != "":
                values.append(float(value))
        except (TypeError, ValueError):
            continue
    return statistics.median(values) if values else None


def series_kernel(series: CTSeries) -> str | None:
    """The series' ConvolutionKernel (0018,1210), the value most of its slices carry.

    Only the first value counts when there are several (Siemens adds the iterative strength:
    ``Br38f\\3``), so a rule names the kernel as the scanner's protocol does.
    """
    names = []
    for header in series.slices:
        value = header.dataset.get("ConvolutionKernel")
        if isinstance(value, MultiValue):
            value = value[0] if len(value) else None
        if value is not None and str(value).strip():
            names.append(str(value).strip())
    return Counter(names).most_common(1)[0][0] if names else None


def _matches(rule: Rule, calling_ae: str, ctdivol: float | None, kernel: str | None) -> bool:
    if rule.calling_ae and calling_ae.strip() not in [title.strip() for title in rule.calling_ae]:
        return False
    if rule.convolution_kernel and (
        kernel is None
        or kernel.strip().casefold()
        not in [name.strip().casefold() for name in rule.convolution_kernel]
    ):
        return False
    if rule.ctdivol_below is not None and (ctdivol is None or ctdivol >= rule.ctdivol_below):
        return False
    return not (
        rule.ctdivol_at_least is not None and (ctdivol is None or ctdivol < rule.ctdivol_at_least)
    )


def _describe(rule: Rule, index: int) -> str:
    return rule.name or f"rule {index + 1}"


class Router:
    """The config's rules with their models resolved once."""

    def __init__(self, config: NodeConfig) -> None:
        self.rules = config.routing.rules
        self.all_destinations = tuple(dest.name for dest in config.destinations)
        self.strength = config.processing.strength
        self.automatic = not config.processing.default_model
        problems = []
        self.models: list[ModelChoice] = []
        for index, rule in enumerate(self.rules):
            try:
                self.models.append(resolve_model(rule.model or None, rule.dose))
            except ModelError as exc:
                problems.append(f"routing.rules[{index}] ({_describe(rule, index)}): {exc}")
        self.candidates: list[ModelChoice] = []
        try:
            self.default = resolve_model(config.processing.default_model or None)
            if self.automatic:  # every model the noise can pick, checked (and loaded) now
                levels = load_levels()
                names = [level.name for level in levels.models] if levels else []
                self.candidates = [resolve_model(name) for name in names]
        except ModelError as exc:
            problems.append(f"processing.default_model: {exc}")
        if problems:
            from manas_infer.dicom_node.config import NodeConfigError

            raise NodeConfigError(config.source, problems)

    def choices(self) -> list[ModelChoice]:
        """Every model a series can be routed to (each loaded once by the worker)."""
        unique: dict[str, ModelChoice] = {}
        for choice in [self.default, *self.candidates, *self.models]:
            unique.setdefault(str(choice.path.resolve()), choice)
        return list(unique.values())

    def choose(
        self,
        calling_ae: str,
        ctdivol: float | None,
        series: CTSeries | None = None,
        kernel: str | None = None,
    ) -> Route:
        """The route for a series; ``series`` is read (a few slices) only when no rule
        matches and the model is chosen from its measured noise."""
        dose = "no CTDIvol" if ctdivol is None else f"CTDIvol {ctdivol:.2f} mGy"
        dose += ", no kernel" if kernel is None else f", kernel {kernel}"
        for i, (rule, model) in enumerate(zip(self.rules, self.models, strict=True)):
            if _matches(rule, calling_ae, ctdivol, kernel):
                name = _describe(rule, i)
                strength = rule.strength if rule.strength is not None else self.strength
                strength = DEFAULT_STRENGTH if strength is None else strength
                return Route(
                    model,
                    name,
                    tuple(rule.destinations) or self.all_destinations,
                    f"rule {name!r} matched (calling AE {calling_ae or '?'}, {dose}): "
                    f"{model.name}, strength {strength:g} %",
                    strength,
                )
        unmatched = f"no rule matched (calling AE {calling_ae or '?'}, {dose})"
        if not self.automatic:
            strength = DEFAULT_STRENGTH if self.strength is None else self.strength
            return Route(
                self.default,
                "default",
                self.all_destinations,
                f"{unmatched}: processing.default_model {self.default.name}, "
                f"strength {strength:g} %",
                strength,
            )
        choice = choose(series, strength=self.strength)
        noise = None if choice.noise is None else choice.noise.sd_hu
        return Route(
            choice.model,
            "default",
            self.all_destinations,
            f"{unmatched}: {choice.why}",
            choice.strength,
            noise,
        )
