"""The VGG-16 perceptual loss and the training loss (SPEC section 2, "Loss").

The real ImageNet file is not available offline, so the tests write a fake checkpoint with
torchvision's ``vgg16-397923af.pth`` layout (hard-coded below as the oracle) and random values.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from manas_infer.train import perceptual
from manas_infer.train.loss import DenoiseLoss
from manas_infer.train.perceptual import (
    PerceptualLoss,
    VGG16Features,
    find_vgg16_weights,
    load_vgg16_features,
)

# torchvision's VGG-16 checkpoint, features part: index -> (out, in) of each 3x3 conv.
VGG16_CONVS = {
    0: (64, 3), 2: (64, 64),
    5: (128, 64), 7: (128, 128),
    10: (256, 128), 12: (256, 256), 14: (256, 256),
    17: (512, 256), 19: (512, 512), 21: (512, 512),
    24: (512, 512), 26: (512, 512), 28: (512, 512),
}  # fmt: skip
# VGG-19 (configuration E) indices: conv3_4 at 16, so the layouts disagree from there on.
VGG19_CONVS = {
    0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128),
    10: (256, 128), 12: (256, 256), 14: (256, 256), 16: (256, 256),
    19: (512, 256), 21: (512, 512), 23: (512, 512), 25: (512, 512),
    28: (512, 512), 30: (512, 512), 32: (512, 512), 34: (512, 512),
}  # fmt: skip


def expected_shapes(convs: dict[int, tuple[int, int]]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for index, (out, inp) in convs.items():
        shapes[f"features.{index}.weight"] = (out, inp, 3, 3)
        shapes[f"features.{index}.bias"] = (out,)
    return shapes


def fake_state(convs: dict[int, tuple[int, int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random He-scaled weights (so features neither vanish nor explode over 13 layers), plus
    classifier entries of the wrong size, which the loader must ignore."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in expected_shapes(convs).items():
        if key.endswith("weight"):
            fan_in = shape[1] * 9
            state[key] = torch.randn(shape, generator=g) * math.sqrt(2 / fan_in)
        else:
            state[key] = torch.randn(shape, generator=g) * 0.01
    state["classifier.0.weight"] = torch.randn(8, 5, generator=g)
    state["classifier.6.bias"] = torch.randn(3, generator=g)
    return state


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vgg") / "vgg16-397923af.pth"
    torch.save(fake_state(VGG16_CONVS), path)
    return path


@pytest.fixture(scope="module")
def pl(vgg_file: Path) -> PerceptualLoss:
    return PerceptualLoss(load_vgg16_features(vgg_file))


def images(seed: int, batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_vgg16_features_match_the_torchvision_layout() -> None:
    net = VGG16Features()  # default relu5_3: all 13 convs
    shapes = {key: tuple(value.shape) for key, value in net.state_dict().items()}
    assert shapes == expected_shapes(VGG16_CONVS)
    assert list(shapes) == list(expected_shapes(VGG16_CONVS)), "same key order"
    assert len(net.features) == 30 and isinstance(net.features[-1], torch.nn.ReLU)
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 512, 2, 2)

    shallow = VGG16Features("relu4_3")
    assert len(shallow.features) == 23 and isinstance(shallow.features[-1], torch.nn.ReLU)
    assert set(shallow.state_dict()) == set(
        expected_shapes({i: c for i, c in VGG16_CONVS.items() if i < 23})
    )
    assert shallow(torch.zeros(1, 3, 32, 32)).shape == (1, 512, 4, 4)
    with pytest.raises(ValueError, match="relu5_3"):
        VGG16Features("fc7")


def test_fake_checkpoint_loads_frozen_and_exact(vgg_file: Path) -> None:
    stored = torch.load(vgg_file, weights_only=True)
    for layer, n_keys in (("relu5_3", 26), ("relu4_3", 20)):
        net = load_vgg16_features(vgg_file, layer)
        state = net.state_dict()
        assert len(state) == n_keys
        assert all(torch.equal(value, stored[key]) for key, value in state.items())
        assert not net.training
        assert not any(p.requires_grad for p in net.parameters())


@pytest.mark.parametrize(
    "state, says",
    [
        (fake_state(VGG19_CONVS), "features.16"),
        ({k: v for k, v in fake_state(VGG16_CONVS).items() if k != "features.28.weight"},
         "missing features.28.weight"),
        ({**fake_state(VGG16_CONVS), "features.0.weight": torch.zeros(64, 1, 3, 3)},
         "features.0.weight (64, 1, 3, 3)"),
        (torch.zeros(3), "not a state dict"),
    ],
    ids=["vgg19", "truncated", "wrong-shape", "tensor"],
)  # fmt: skip
def test_wrong_checkpoint_is_refused_with_the_file_named(
    tmp_path: Path, state: object, says: str
) -> None:
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as error:
        load_vgg16_features(path)
    assert str(path) in str(error.value) and says in str(error.value)


def test_non_checkpoint_file_is_refused_with_the_file_named(tmp_path: Path) -> None:
    path = tmp_path / "vgg16-397923af.pth"
    path.write_bytes(b"<html>404 not found</html>" * 10)
    with pytest.raises(ValueError, match=str(path)):
        load_vgg16_features(path)


def test_missing_weights_say_where_and_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vgg_file: Path
) -> None:
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    with pytest.raises(FileNotFoundError) as error:
        find_vgg16_weights(None)
    message = str(error.value)
    assert str(hub / "checkpoints" / "vgg16-397923af.pth") in message
    for how in ("vgg16-397923af.pth", "--vgg-weights PATH", "--perceptual-weight 0"):
        assert how in message
    with pytest.raises(FileNotFoundError, match="--perceptual-weight 0"):
        DenoiseLoss(1e-4, None)  # never a random VGG

    given = tmp_path / "elsewhere.pth"
    with pytest.raises(FileNotFoundError, match=str(given)):
        find_vgg16_weights(given)
    assert find_vgg16_weights(vgg_file) == vgg_file

    (hub / "checkpoints").mkdir(parents=True)
    cached = hub / "checkpoints" / "vgg16-397923af.pth"
    cached.write_bytes(vgg_file.read_bytes())
    assert find_vgg16_weights(None) == cached
    assert DenoiseLoss(1e-4).perceptual is not None


def test_perceptual_loss_zero_for_identical_and_positive_otherwise(pl: PerceptualLoss) -> None:
    x, y = images(1), images(2)
    assert pl(x, x.clone()).item() == 0.0
    assert pl(x, y).item() > 0
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        pl(x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1))


def test_perceptual_loss_is_grey_to_rgb_with_imagenet_normalisation(pl: PerceptualLoss) -> None:
    x, y = images(3), images(4)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        fx = pl.vgg((x.repeat(1, 3, 1, 1) - mean) / std)
        fy = pl.vgg((y.repeat(1, 3, 1, 1) - mean) / std)
    assert pl(x, y).item() == pytest.approx(((fx - fy) ** 2).mean().item(), rel=1e-5)


def test_gradients_reach_the_prediction_only(pl: PerceptualLoss) -> None:
    pred = images(5).requires_grad_(True)
    target = images(6).requires_grad_(True)
    pl(pred, target).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert target.grad is None
    assert all(p.grad is None and not p.requires_grad for p in pl.parameters())


def test_denoise_loss_weight_zero_is_plain_mse_without_any_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))

    def no_vgg(*args: object, **kwargs: object) -> None:
        raise AssertionError("weight 0 must not look for VGG weights")

    monkeypatch.setattr(perceptual, "find_vgg16_weights", no_vgg)
    monkeypatch.setattr(perceptual, "load_vgg16_features", no_vgg)
    loss = DenoiseLoss(0.0, tmp_path / "does-not-exist.pth")
    assert loss.perceptual is None and not list(loss.parameters())
    x, y = images(7), images(8)
    assert loss(x, y).item() == F.mse_loss(x, y).item()
    assert loss.components(x, y) == pytest.approx({"mse": F.mse_loss(x, y).item(),
                                                   "total": F.mse_loss(x, y).item()})  # fmt: skip
    with pytest.raises(ValueError, match=">= 0"):
        DenoiseLoss(-1.0)


def test_denoise_loss_is_mse_plus_weighted_perceptual(vgg_file: Path, pl: PerceptualLoss) -> None:
    weight = 0.25  # large so that the perceptual term visibly moves the total
    loss = DenoiseLoss(weight, vgg_file)
    x, y = images(9), images(10)
    mse, plv = F.mse_loss(x, y).item(), pl(x, y).item()
    assert plv > 0
    assert loss(x, y).item() == pytest.approx(mse + weight * plv, rel=1e-5)
    parts = loss.components(x, y)
    assert parts["mse"] == pytest.approx(mse) and parts["perceptual"] == pytest.approx(plv)
    assert parts["total"] == pytest.approx(mse + weight * plv, rel=1e-5)
    assert str(vgg_file) == str(find_vgg16_weights(str(vgg_file)))  # run.py passes a str


def test_bf16_autocast_on_cpu_gives_a_finite_float32_loss(vgg_file: Path) -> None:
    loss = DenoiseLoss(1e-2, str(vgg_file))
    conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    low, normal = images(11), images(12)
    with torch.autocast("cpu", torch.bfloat16):
        pred = conv(low)
        assert pred.dtype == torch.bfloat16
        value = loss(pred, normal)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    # The VGG runs in float32 inside autocast: same inputs, same loss as without autocast.
    x, y = images(13), images(14)
    plain = loss(x, y)
    with torch.autocast("cpu", torch.bfloat16):
        under = loss(x, y)
    assert under.item() == pytest.approx(plain.item(), rel=1e-6)


def test_structural_and_edge_terms_add_to_mse_for_blur_and_noise_alike() -> None:
    """The optional terms (no downloaded weights): zero for a perfect prediction, positive
    for a blurred one and for a noisy one of the same MSE, reported by name, and refused
    with a negative weight."""
    from manas_infer.hu import normalize
    from manas_infer.train.augment import gaussian_blur

    g = torch.Generator().manual_seed(0)
    hu = 40.0 + 60.0 * gaussian_blur(torch.randn(4, 1, 64, 64, generator=g), 1.0)
    hu[..., 20:44, 20:44] += 300.0  # an edge
    target = normalize(hu)
    blurred = normalize(gaussian_blur(hu, 1.5))
    mse = F.mse_loss(blurred, target)
    noisy = target + mse.sqrt() * torch.randn(target.shape, generator=g)  # the same MSE
    for weights in ({"ssim_weight": 1.0}, {"edge_weight": 1.0}):
        extra = DenoiseLoss(0.0, **weights)
        assert float(extra(target, target)) == 0.0
        for pred in (blurred, noisy):
            assert float(extra(pred, target)) > float(F.mse_loss(pred, target))
        parts = extra.components(blurred, target)
        assert set(parts) == {"mse", next(iter(weights)).removesuffix("_weight"), "total"}
    with pytest.raises(ValueError, match="edge weight"):
        DenoiseLoss(0.0, edge_weight=-1.0)
