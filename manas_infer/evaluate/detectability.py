"""Low-contrast detectability: a channelized Hotelling observer (CHO) with Laguerre-Gauss
channels, as in the FDA's LCD-CT toolbox, with leave-one-image-out training and an image
bootstrap for the confidence interval.

- Channels: u_j(r) = sqrt(2)/h exp(-pi r^2/h^2) L_j(2 pi r^2/h^2), j < n (Barrett & Myers),
  centred on the (sub-pixel) signal position; rotationally symmetric, so a channel's output
  has the same statistics wherever it sits on a ring of a round phantom.
- Template w = K^-1 (mean_present - mean_absent) in channel space, K the mean of the two
  classes' covariances. Trained on all images but one and applied to that one's ROIs, for
  every image in turn (leave one image out): a template never scores the noise it was fitted
  to, which would bias the AUC upwards with only ten images per class.
- AUC: the empirical (Mann-Whitney) AUC of the held-out test statistics; d' = their mean
  difference over the pooled SD, and Phi(d'/sqrt 2) beside it. 95 % interval: percentiles of
  the AUC over bootstrap resamples of images (present and absent images drawn with
  replacement, each class separately, an image bringing all its ROIs; the held-out
  statistics are resampled and the templates are not refitted, which is fast and leaves out
  the template's own spread); a method's change against its input uses the same resampled
  images for both (paired bootstrap).
Written here because no maintained Python package provides a CHO.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import eval_laguerre, ndtr


def laguerre_gauss_channels(
    size: int, width: float, n_channels: int = 5, offset: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """[n_channels, size * size] LG channels of width ``width`` (px) on a ``size`` x ``size``
    ROI, centred ``offset`` (row, col px) from the ROI's middle pixel."""
    half = (size - 1) / 2
    rows, cols = np.mgrid[0:size, 0:size]
    r2 = (rows - half - offset[0]) ** 2 + (cols - half - offset[1]) ** 2
    x = 2 * np.pi * r2 / width**2
    gauss = np.sqrt(2) / width * np.exp(-x / 2)
    return np.stack([(gauss * eval_laguerre(j, x)).ravel() for j in range(n_channels)])


def channel_responses(
    images: np.ndarray,
    centres: list[tuple[float, float]],
    size: int,
    width: float,
    n_channels: int = 5,
) -> np.ndarray:
    """[n_images, n_centres, n_channels]: each image's channel outputs at each centre."""
    images = np.asarray(images, dtype=np.float64)
    half = size // 2
    out = np.empty((images.shape[0], len(centres), n_channels))
    for k, (row, col) in enumerate(centres):
        r0, c0 = round(row), round(col)
        channels = laguerre_gauss_channels(size, width, n_channels, (row - r0, col - c0))
        rois = images[:, r0 - half : r0 - half + size, c0 - half : c0 - half + size]
        if rois.shape[1:] != (size, size):
            raise ValueError(f"a {size}-pixel ROI at {(row, col)} leaves the image")
        out[:, k] = rois.reshape(len(images), -1) @ channels.T
    return out


def hotelling_template(present: np.ndarray, absent: np.ndarray) -> np.ndarray:
    """w = K^-1 dmu from channel vectors [n, channels] of each class (pseudo-inverse, as a
    singular K with few samples must still give a template)."""
    delta = present.mean(0) - absent.mean(0)
    k = (np.cov(present, rowvar=False) + np.cov(absent, rowvar=False)) / 2
    return np.linalg.pinv(np.atleast_2d(k)) @ delta


def leave_one_image_out(
    present: np.ndarray, present_image: np.ndarray, absent: np.ndarray, absent_image: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Test statistics of every ROI, each from the template trained without its image.

    ``present`` / ``absent``: channel vectors [n, channels]; ``*_image``: the image each ROI
    comes from (an image may give ROIs to both classes)."""
    t_present = np.empty(len(present))
    t_absent = np.empty(len(absent))
    for image in np.union1d(present_image, absent_image):
        train_p, train_a = present_image != image, absent_image != image
        template = hotelling_template(present[train_p], absent[train_a])
        t_present[~train_p] = present[~train_p] @ template
        t_absent[~train_a] = absent[~train_a] @ template
    return t_present, t_absent


def empirical_auc(t_present: np.ndarray, t_absent: np.ndarray) -> float:
    """P(t_present > t_absent) + P(tie) / 2: the Mann-Whitney AUC."""
    diff = np.asarray(t_present)[:, None] - np.asarray(t_absent)[None, :]
    return float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))


def detectability_snr(t_present: np.ndarray, t_absent: np.ndarray) -> float:
    """d' = (mean_p - mean_a) / sqrt((var_p + var_a) / 2)."""
    pooled = np.sqrt((np.var(t_present, ddof=1) + np.var(t_absent, ddof=1)) / 2)
    return float((np.mean(t_present) - np.mean(t_absent)) / pooled) if pooled > 0 else np.inf


@dataclass
class ObserverResult:
    """One CHO study: held-out test statistics and what they say."""

    t_present: np.ndarray
    t_absent: np.ndarray
    present_image: np.ndarray
    absent_image: np.ndarray
    auc: float
    snr: float
    auc_ci: tuple[float, float]
    boot_auc: np.ndarray  # the bootstrap distribution (for paired comparisons)

    @property
    def auc_from_snr(self) -> float:
        return float(ndtr(self.snr / np.sqrt(2)))

    def to_dict(self) -> dict:
        return {
            "auc": self.auc,
            "auc_ci95": [float(self.auc_ci[0]), float(self.auc_ci[1])],
            "snr": self.snr,
            "auc_from_snr": self.auc_from_snr,
            "n_present": len(self.t_present),
            "n_absent": len(self.t_absent),
        }


def bootstrap_draws(strata: list[np.ndarray], n_boot: int, seed: int) -> np.ndarray:
    """Resampled image ids [n_boot, total]: each stratum (signal-present images,
    signal-absent images) drawn with replacement to its own size. Shared between methods,
    so their AUCs are compared on the same resamples (paired)."""
    rng = np.random.default_rng(seed)
    parts = [
        np.asarray(stratum)[rng.integers(0, len(stratum), (n_boot, len(stratum)))]
        for stratum in strata
    ]
    return np.concatenate(parts, axis=1)


def bootstrap_auc(
    t_present: np.ndarray,
    present_image: np.ndarray,
    t_absent: np.ndarray,
    absent_image: np.ndarray,
    draws: np.ndarray,
) -> np.ndarray:
    """The AUC of each bootstrap resample of images: every drawn image brings the held-out
    statistics of all its ROIs, of either class."""
    empty = np.empty(0)
    by_p = {i: t_present[present_image == i] for i in np.unique(present_image)}
    by_a = {i: t_absent[absent_image == i] for i in np.unique(absent_image)}
    out = np.empty(len(draws))
    for draw, ids in enumerate(draws):
        drawn_present = np.concatenate([by_p.get(i, empty) for i in ids])
        drawn_absent = np.sort(np.concatenate([by_a.get(i, empty) for i in ids]))
        if len(drawn_present) == 0 or len(drawn_absent) == 0:
            out[draw] = np.nan
            continue
        # rank form of the Mann-Whitney AUC: fast for the hundreds of absent ROIs
        below = np.searchsorted(drawn_absent, drawn_present, side="left")
        ties = np.searchsorted(drawn_absent, drawn_present, side="right") - below
        pairs = len(drawn_present) * len(drawn_absent)
        out[draw] = float((below.sum() + 0.5 * ties.sum()) / pairs)
    return out


def cho_study(
    present: np.ndarray,
    present_image: np.ndarray,
    absent: np.ndarray,
    absent_image: np.ndarray,
    draws: np.ndarray,
) -> ObserverResult:
    """Leave-one-image-out CHO on channel vectors, with its bootstrap interval."""
    t_present, t_absent = leave_one_image_out(present, present_image, absent, absent_image)
    boot = bootstrap_auc(t_present, present_image, t_absent, absent_image, draws)
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    return ObserverResult(
        t_present,
        t_absent,
        present_image,
        absent_image,
        empirical_auc(t_present, t_absent),
        detectability_snr(t_present, t_absent),
        (float(lo), float(hi)),
        boot,
    )


def compare(method: ObserverResult, reference: ObserverResult) -> dict:
    """The paired-bootstrap change of AUC against ``reference`` (the method's own input):
    raises / lowers when the 95 % interval of the difference excludes 0, keeps otherwise."""
    diff = method.boot_auc - reference.boot_auc
    lo, hi = (float(v) for v in np.nanpercentile(diff, [2.5, 97.5]))
    verdict = "raises" if lo > 0 else "lowers" if hi < 0 else "keeps"
    return {"delta_auc": method.auc - reference.auc, "delta_ci95": [lo, hi], "verdict": verdict}
