"""Hounsfield-unit conventions shared by every stage, so that training, export and
inference agree on one intensity range."""

# The paper normalises HU to [0, 1] over this range (SPEC section 2).
HU_MIN = -1024.0
HU_MAX = 3072.0

# Display windows as (level, width): what radiologists look at, used for previews and metrics.
SOFT_TISSUE_WINDOW = (40.0, 400.0)  # [-160, 240] HU
LUNG_WINDOW = (-600.0, 1500.0)

# Scanners write one constant far below air outside the reconstruction circle (-1500 on the
# GE head, -2000, -3024), with no noise in it: pixels at or below this are that padding,
# not anatomy (air is -1000 HU). The simulator adds no noise there, the runtime writes it
# back as it came, and the CT-number guard leaves it out of its low-pass.
PADDING_BELOW_HU = -1500.0


def window_bounds(window: tuple[float, float]) -> tuple[float, float]:
    """(level, width) -> (low, high) in HU."""
    level, width = window
    return level - width / 2.0, level + width / 2.0


def normalize(hu):
    """HU -> [0, 1] over [HU_MIN, HU_MAX], the networks' input scale (works on tensors too)."""
    return (hu - HU_MIN) / (HU_MAX - HU_MIN)


def denormalize(x):
    """[0, 1] -> HU, the inverse of ``normalize``."""
    return x * (HU_MAX - HU_MIN) + HU_MIN


def is_padding(hu):
    """Where ``hu`` is scanner padding (at or below PADDING_BELOW_HU); arrays or tensors."""
    return hu <= PADDING_BELOW_HU
