"""VGG-16 perceptual loss (SPEC section 2, paper Eq. 5), without torchvision.

VGG-16 is 13 convolutions, so it is defined here in plain torch with the module indices of
torchvision's ``features`` block; torchvision's ImageNet checkpoint ``vgg16-397923af.pth``
then loads into it by key. The weights are never downloaded or invented: they come from the
torch hub cache or an explicit path, and a missing or wrong file is an error that says how
to fix it, because a perceptual loss on random VGG weights trains silently to the wrong goal.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHTS_FILE = "vgg16-397923af.pth"
WEIGHTS_URL = f"https://download.pytorch.org/models/{WEIGHTS_FILE}"

# Configuration D of Simonyan & Zisserman: output channels per conv, "M" = 2x2 max-pool.
VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip

# relu5_3 = features[:30]: the last conv block, as CT perceptual losses use (WGAN-VGG: VGG-19's
# last block); deep features compare structure and texture, not grey levels MSE already covers.
DEFAULT_LAYER = "relu5_3"

# torchvision's ImageNet normalisation, which the checkpoint's first conv expects.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _layers(end: int | None = None) -> tuple[list[nn.Module], dict[str, int]]:
    """VGG-16's ``features`` modules in torchvision's order (the first ``end`` of them, all
    when None), and relu name -> end index; built lazily so a truncated net skips conv5."""
    layers: list[nn.Module] = []
    ends: dict[str, int] = {}
    in_channels, block, conv, index = 3, 1, 0, 0
    for item in VGG16_CONFIG:
        if item == "M":
            if end is None or index < end:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            block, conv, index = block + 1, 0, index + 1
            continue
        assert isinstance(item, int)
        if end is None or index < end:
            layers += [nn.Conv2d(in_channels, item, 3, padding=1), nn.ReLU(inplace=True)]
        conv, index, in_channels = conv + 1, index + 2, item
        ends[f"relu{block}_{conv}"] = index
    return layers, ends


LAYER_ENDS: dict[str, int] = _layers(0)[1]


def vgg16_feature_shapes() -> dict[str, tuple[int, ...]]:
    """``features.*`` keys and shapes of a complete VGG-16 checkpoint: what a file must hold."""
    shapes: dict[str, tuple[int, ...]] = {}
    in_channels, index = 3, 0
    for item in VGG16_CONFIG:
        if item == "M":
            index += 1
            continue
        assert isinstance(item, int)
        shapes[f"features.{index}.weight"] = (item, in_channels, 3, 3)
        shapes[f"features.{index}.bias"] = (item,)
        in_channels, index = item, index + 2
    return shapes


class VGG16Features(nn.Module):
    """VGG-16's convolutional part up to and including ``layer`` (e.g. ``relu4_3``, ``relu5_3``).

    Default relu5_3 (features[:30]): CT perceptual losses (WGAN-VGG) use the last conv block.

    ``features`` is torchvision's prefix, so indices and parameter names (``features.0.weight``
    ... ``features.28.bias``) match the checkpoint. It has no batch norm or dropout, so train
    and eval mode compute the same thing.
    """

    def __init__(self, layer: str = DEFAULT_LAYER) -> None:
        super().__init__()
        if layer not in LAYER_ENDS:
            raise ValueError(
                f"unknown VGG-16 layer {layer!r}; choose one of {', '.join(LAYER_ENDS)}"
            )
        self.layer = layer
        self.features = nn.Sequential(*_layers(LAYER_ENDS[layer])[0])

    def forward(self, x: Tensor) -> Tensor:
        """ImageNet-normalised RGB [B, 3, H, W] -> features at ``layer``."""
        return self.features(x)


def find_vgg16_weights(path: Path | str | None = None) -> Path:
    """The VGG-16 checkpoint to use: ``path`` if given, else the torch hub cache's copy.

    An explicit path that is missing is an error rather than a fall-back to the cache: the
    user asked for that file. Raises ``FileNotFoundError`` that says where it looked and how to
    provide the weights.
    """
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    candidate = Path(path).expanduser() if path is not None else hub_dir / WEIGHTS_FILE
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(
        f"VGG-16 weights for the perceptual loss not found: looked at {candidate}. "
        f"Download {WEIGHTS_FILE} (torchvision's ImageNet VGG-16, {WEIGHTS_URL}) into "
        f"{hub_dir}/ or pass --vgg-weights PATH, or train with --perceptual-weight 0."
    )


def _key_order(key: str) -> tuple[int, str]:
    match = re.match(r"features\.(\d+)\.", key)
    return (int(match.group(1)) if match else -1, key)


def _listed(keys: list[str], limit: int = 4) -> str:
    keys = sorted(keys, key=_key_order)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_vgg16_features(path: Path | str, layer: str = DEFAULT_LAYER) -> VGG16Features:
    """Frozen VGG-16 features from torchvision's checkpoint file; ``classifier.*`` is ignored.

    The whole ``features`` layout is checked, not just the part ``layer`` uses, so that a
    VGG-19, a batch-norm VGG or a truncated download is refused with the file named.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as exc:
        raise ValueError(
            f"{path}: not a checkpoint torch.load(weights_only=True) can read "
            f"({type(exc).__name__}); expected torchvision's {WEIGHTS_FILE}"
        ) from exc
    if not isinstance(state, Mapping):
        raise ValueError(
            f"{path}: holds a {type(state).__name__}, not a state dict; "
            f"expected torchvision's {WEIGHTS_FILE}"
        )
    found = {
        key: value
        for key, value in state.items()
        if isinstance(key, str) and key.startswith("features.")
    }
    expected = vgg16_feature_shapes()
    problems = []
    if missing := [key for key in expected if key not in found]:
        problems.append(f"missing {_listed(missing)}")
    if unexpected := [key for key in found if key not in expected]:
        problems.append(f"unexpected {_listed(unexpected)}")
    wrong = [
        f"{key} {tuple(found[key].shape) if isinstance(found[key], Tensor) else '?'} "
        f"(expected {shape})"
        for key, shape in expected.items()
        if key in found
        and not (
            isinstance(found[key], Tensor)
            and found[key].is_floating_point()
            and tuple(found[key].shape) == shape
        )
    ]
    if wrong:
        problems.append("wrong shape or type " + "; ".join(wrong[:4]))
    if problems:
        raise ValueError(
            f"{path}: not torchvision's VGG-16 ({WEIGHTS_FILE}) checkpoint: " + "; ".join(problems)
        )
    if bad := [key for key in expected if not torch.isfinite(found[key]).all()]:
        raise ValueError(f"{path}: non-finite values in {_listed(bad)}")
    model = VGG16Features(layer)
    model.load_state_dict({key: found[key] for key in model.state_dict()}, strict=True)
    model.requires_grad_(False)
    return model.eval()


class PerceptualLoss(nn.Module):
    """Mean squared distance of frozen VGG-16 features of two normalised CT images.

    Inputs are [B, 1, H, W] in [0, 1] (HU over [-1024, 3072]); the grey image is repeated to
    RGB and ImageNet-normalised because that is what the pretrained filters were trained on.
    The paper writes ||phi(x) - phi(y)||^2; the mean over feature elements (WGAN-VGG's 1/(whd))
    keeps lambda = 1e-4 independent of image and batch size. The target's features are taken
    without gradient: only the prediction is trained.

    The VGG runs in float32 (autocast off) even inside bf16 autocast: PL is a difference of
    two nearly equal deep feature maps, and bf16's 8-bit mantissa would turn it into rounding
    noise once the prediction is close to the target.
    """

    def __init__(self, features: VGG16Features) -> None:
        super().__init__()
        self.vgg = features.requires_grad_(False).eval()
        shape = (1, 3, 1, 1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(shape), persistent=False)
        self.mean: Tensor
        self.std: Tensor

    @classmethod
    def from_file(
        cls, path: Path | str | None = None, layer: str = DEFAULT_LAYER
    ) -> PerceptualLoss:
        """Load the VGG from ``path`` or the hub cache (see :func:`find_vgg16_weights`)."""
        return cls(load_vgg16_features(find_vgg16_weights(path), layer))

    def _rgb(self, x: Tensor) -> Tensor:
        # The buffers' dtype is the VGG's (float32 unless someone casts this module).
        x = x.to(self.mean.dtype).expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Scalar PL; gradients reach ``pred`` only."""
        if pred.ndim != 4 or pred.shape[1] != 1 or pred.shape != target.shape:
            raise ValueError(
                f"perceptual loss wants two [B, 1, H, W] images of one shape, "
                f"got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        with torch.autocast(pred.device.type, enabled=False):
            with torch.no_grad():
                target_features = self.vgg(self._rgb(target))
            return F.mse_loss(self.vgg(self._rgb(pred)), target_features)
