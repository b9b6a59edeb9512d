"""The MANAS search space: ops, cells, the super-net grid, decoding, genotype, derived net."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace
from itertools import pairwise

import numpy as np
import pytest
import torch
from torch import nn

from manas_infer.train.cells import (
    DerivedCell,
    SearchCell,
    cell_edges,
    compute_nodes,
)
from manas_infer.train.derive import (
    count_skip_connections,
    derive_cells,
    derive_genotype,
    k_shortest_paths,
)
from manas_infer.train.genotype import Genotype
from manas_infer.train.network import DerivedNetwork
from manas_infer.train.operations import OPS, PRIMITIVES
from manas_infer.train.profile import count_flops, count_parameters
from manas_infer.train.supernet import SuperNet, block_key, grid

C, L, D = 4, 4, 3

# Hand-enumerated for L = 4, D = 3: depth d exists at layer l iff d-1 <= l and d-1 <= L-l.
GRID_4x3 = {
    (1, 1): {"transfer": (0, 1)},
    (1, 2): {"expand": (0, 1)},
    (2, 1): {"transfer": (1, 1), "compress": (1, 2)},
    (2, 2): {"expand": (1, 1), "transfer": (1, 2)},
    (2, 3): {"expand": (1, 2)},
    (3, 1): {"transfer": (2, 1), "compress": (2, 2)},
    (3, 2): {"expand": (2, 1), "transfer": (2, 2), "compress": (2, 3)},
    (4, 1): {"transfer": (3, 1), "compress": (3, 2)},
}
# Every stem -> head path of that grid as the depths at layers 1..3 (layers 0 and 4 are depth 1).
PATHS_4x3 = [
    (1, 1, 1), (1, 1, 2), (1, 2, 1), (1, 2, 2),
    (2, 1, 1), (2, 1, 2), (2, 2, 1), (2, 2, 2), (2, 3, 2),
]  # fmt: skip


@pytest.fixture(scope="module")
def supernet() -> SuperNet:
    torch.manual_seed(0)
    return SuperNet(C, L, D)


def edges_of(*paths: tuple[int, ...]) -> tuple[tuple[tuple[int, int], tuple[int, int]], ...]:
    """The grid edges of paths given as depths at layers 1..3 (the L = 4, D = 3 grid)."""
    return tuple({(a, b) for p in paths for a, b in pairwise(as_nodes(p))})


def as_nodes(depths: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    return ((0, 1), *((i + 1, d) for i, d in enumerate(depths)), (L, 1), (L + 1, 1))


def small_genotype() -> Genotype:
    """Three paths; (3, 1) and (4, 1) each sum two kept inputs; every op appears."""
    return Genotype(
        C=C,
        L=L,
        D=D,
        P=3,
        cells={
            "expand": (
                "sep_conv_3x3",
                "conv_3x3",
                "skip_connect",
                "dil_conv_5x5",
                "conv_5x5",
                "sep_conv_5x5",
            ),
            "transfer": (
                "conv_3x3",
                "skip_connect",
                "dil_conv_3x3",
                "conv_3x3",
                "sep_conv_5x5",
                "skip_connect",
            ),
            "compress": (
                "dil_conv_3x3",
                "conv_5x5",
                "sep_conv_3x3",
                "skip_connect",
                "conv_3x3",
                "dil_conv_5x5",
            ),
        },
        edges=edges_of((2, 3, 2), (1, 1, 1), (2, 2, 1)),
    )


# ---- operations and cells ------------------------------------------------------------------


def test_primitives_are_the_seven_spec_ops() -> None:
    assert PRIMITIVES == (
        "skip_connect", "conv_3x3", "conv_5x5", "sep_conv_3x3", "sep_conv_5x5",
        "dil_conv_3x3", "dil_conv_5x5",
    )  # fmt: skip
    assert set(OPS) == set(PRIMITIVES)


@pytest.mark.parametrize("name", PRIMITIVES)
def test_every_op_keeps_shape_and_has_no_batch_norm(name: str) -> None:
    op = OPS[name](6)
    x = torch.randn(2, 6, 10, 14)
    assert op(x).shape == x.shape
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in op.modules())
    if name != "skip_connect":
        assert isinstance(op[0], nn.ReLU)
        assert isinstance(op[-1], nn.Conv2d) and op[-1].kernel_size == (1, 1)
    if name.startswith("sep"):
        assert op[1].groups == 6
    if name.startswith("dil"):
        assert op[1].dilation == (2, 2)


def test_node_wiring_follows_cell_edges() -> None:
    # edge k multiplies by k + 2: N1 = 2 N0, N2 = 3 N0 + 4 N1, N3 = 5 N0 + 6 N1 + 7 N2.
    assert cell_edges(3) == [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
    nodes = compute_nodes(torch.tensor(1.0), 3, lambda k, h: (k + 2) * h)
    assert [float(n) for n in nodes] == [2.0, 11.0, 94.0]


@pytest.mark.parametrize(
    ("cell_type", "in_shape", "out_shape"),
    [
        ("expand", (2, 4, 16, 12), (2, 8, 8, 6)),  # from depth d-1: 2H, C/2 -> H, C
        ("transfer", (2, 8, 8, 6), (2, 8, 8, 6)),
        ("compress", (2, 16, 4, 3), (2, 8, 8, 6)),  # from depth d+1: H/2, 2C -> H, C
    ],
)
def test_cell_types_map_to_the_cell_resolution_and_width(
    cell_type: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> None:
    x = torch.randn(*in_shape)
    alphas = 1e-3 * torch.randn(len(cell_edges(3)), len(PRIMITIVES))
    assert SearchCell(cell_type, 8, P=3)(x, alphas).shape == out_shape
    derived = DerivedCell(cell_type, 8, ["skip_connect", "conv_3x3"] * 3)
    assert derived.P == 3
    assert derived(x).shape == out_shape


def test_derived_cell_rejects_bad_op_lists() -> None:
    with pytest.raises(ValueError, match="unknown op"):
        DerivedCell("transfer", 4, ["conv_3x3"] * 5 + ["max_pool_3x3"])
    with pytest.raises(ValueError, match="edges is not a cell"):
        DerivedCell("transfer", 4, ["conv_3x3"] * 5)


# ---- the grid and the super-net ------------------------------------------------------------


def test_grid_matches_the_reachability_rule() -> None:
    assert grid(L, D) == GRID_4x3
    assert list(grid(L, D)) == sorted(GRID_4x3)  # layer by layer
    preset = grid(12, 4)
    assert len(preset) == 39
    assert {b for b in preset if b[0] == 12} == {(12, 1)}
    assert (3, 4) in preset and (2, 4) not in preset and (10, 4) not in preset
    with pytest.raises(ValueError, match="unreachable"):
        grid(4, 4)


def test_supernet_blocks_have_the_right_resolution_and_width(supernet: SuperNet) -> None:
    expected_cells = {f"{block_key(b)}_{t}" for b, src in GRID_4x3.items() for t in src}
    assert set(supernet.cells) == expected_cells
    assert {k: len(p) for k, p in supernet.betas.items()} == {
        block_key(b): len(src) for b, src in GRID_4x3.items()
    }
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        cell.register_forward_hook(lambda m, i, o, k=k: shapes.__setitem__(k, tuple(o.shape)))
        for k, cell in supernet.cells.items()
    ]
    try:
        with torch.no_grad():
            y = supernet(torch.randn(2, 1, 16, 16))
    finally:
        for h in hooks:
            h.remove()
    assert y.shape == (2, 1, 16, 16)
    assert set(shapes) == expected_cells
    for key, shape in shapes.items():
        d = int(key.split("_")[1][1:])
        assert shape == (2, C * 2 ** (d - 1), 16 // 2 ** (d - 1), 16 // 2 ** (d - 1)), key


def test_nets_start_near_the_identity(supernet: SuperNet) -> None:
    """A small head: output = input plus at most a few HU until training moves it."""
    x = 0.25 + 0.02 * torch.randn(2, 1, 16, 16)  # soft tissue with noise, normalised
    with torch.no_grad():
        offset = (supernet(x) - x).abs().max().item()
    assert 0 < offset < 0.01  # 0.01 of the normalised range is 41 HU
    torch.manual_seed(0)
    derived = DerivedNetwork(small_genotype())
    x = 0.25 + 0.02 * torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        offset = (derived(x) - x).abs().max().item()
    assert 0 < offset < 0.01


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_reaching_the_stem_is_above_adam_eps(seed: int) -> None:
    """The first real run's failure: with PyTorch's default init the stem's gradient in this
    L=4, D=3 net was ~1e-10, below Adam's eps (1e-8), and the net never learned. He init
    keeps it at ~1e-7 to 1e-6 (train/init.py)."""
    torch.manual_seed(seed)
    derived = DerivedNetwork(small_genotype())
    x = 0.25 + 0.02 * torch.randn(2, 1, 32, 32)
    (derived(x) - 0.25).square().mean().backward()
    assert derived.stem.weight.grad.abs().mean().item() > 1e-8


def test_gradients_reach_weights_alphas_and_betas(supernet: SuperNet) -> None:
    supernet.zero_grad(set_to_none=True)
    supernet(torch.randn(1, 1, 16, 16)).square().mean().backward()
    weights, arch = supernet.weights(), supernet.arch_parameters()
    assert {id(p) for p in weights}.isdisjoint(id(p) for p in arch)
    assert len(weights) + len(arch) == len(list(supernet.parameters()))
    assert all(p.grad is not None for p in weights)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in supernet.alphas.values())
    for key, beta in supernet.betas.items():
        assert beta.grad is not None, key
        if len(beta) > 1:  # a lone source has softmax 1: its gradient is zero by construction
            assert beta.grad.abs().sum() > 0, key


def test_invalid_input_sizes_raise_a_clear_error(supernet: SuperNet) -> None:
    with pytest.raises(ValueError, match=r"multiples of 2\^\(D-1\) = 4"):
        supernet(torch.randn(1, 1, 30, 32))
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        supernet(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="multiples"):
        DerivedNetwork(small_genotype())(torch.randn(1, 1, 32, 18))


# ---- decoding ------------------------------------------------------------------------------

# Hand-made beta logits: the deep U stem-(1,2)-(2,3)-(3,2)-(4,1) is clearly best.
BETAS_4x3 = {
    (1, 1): {"transfer": 0.0},
    (1, 2): {"expand": 0.0},
    (2, 1): {"transfer": 0.0, "compress": 1.0},
    (2, 2): {"expand": 0.0, "transfer": 2.0},
    (2, 3): {"expand": 0.0},
    (3, 1): {"transfer": 0.5, "compress": 0.0},
    (3, 2): {"expand": 0.0, "transfer": 1.0, "compress": 3.0},
    (4, 1): {"transfer": 0.0, "compress": 2.0},
}


def _path_cost(depths: tuple[int, ...]) -> float:
    """-sum log softmax(beta) along a path, computed independently of derive.py."""
    full = (1, *depths, 1)
    cost = 0.0
    for layer in range(1, L + 1):
        logits = BETAS_4x3[(layer, full[layer])]
        kind = {1: "expand", 0: "transfer", -1: "compress"}[full[layer] - full[layer - 1]]
        cost -= logits[kind] - math.log(sum(math.exp(v) for v in logits.values()))
    return cost


def test_k_shortest_paths_on_hand_made_betas() -> None:
    ranked = sorted(PATHS_4x3, key=_path_cost)
    costs = [_path_cost(p) for p in ranked]
    assert all(a < b - 1e-6 for a, b in pairwise(costs))  # the order is unambiguous
    assert ranked[0] == (2, 3, 2)  # the designed best path
    assert ranked[1] == (2, 2, 2)  # next: swap the lone expand into (2,3) for (2,2)'s transfer
    paths = k_shortest_paths(BETAS_4x3, L, D, K=5)
    assert paths == [as_nodes(p) for p in ranked[:5]]
    assert len(k_shortest_paths(BETAS_4x3, L, D, K=50)) == len(PATHS_4x3)
    with pytest.raises(ValueError, match="must cover its sources"):
        k_shortest_paths({**BETAS_4x3, (3, 2): {"transfer": 1.0}}, L, D, K=5)


def test_derive_genotype_is_the_union_of_the_k_paths() -> None:
    torch.manual_seed(0)
    net = SuperNet(C, L, D)
    with torch.no_grad():
        for block, logits in BETAS_4x3.items():
            net.betas[block_key(block)].copy_(torch.tensor(list(logits.values())))
        for t, alpha in net.alphas.items():
            alpha.zero_()
            alpha[:, PRIMITIVES.index("sep_conv_3x3" if t == "expand" else "conv_5x5")] = 1.0
        net.alphas["transfer"][4, PRIMITIVES.index("skip_connect")] = 2.0
    g = derive_genotype(net, K=3)
    assert set(g.edges) == set(edges_of(*sorted(PATHS_4x3, key=_path_cost)[:3]))
    assert g.cells["expand"] == ("sep_conv_3x3",) * 6
    assert g.cells["transfer"] == ("conv_5x5",) * 4 + ("skip_connect", "conv_5x5")
    assert derive_cells(net.alphas) == g.cells


def test_count_skip_connections() -> None:
    ops = [
        "skip_connect",
        "conv_3x3",
        "skip_connect",
        "sep_conv_5x5",
        "skip_connect",
        "dil_conv_3x3",
    ]
    assert count_skip_connections(ops) == 3
    assert count_skip_connections(["conv_3x3"] * 6) == 0


# ---- genotype ------------------------------------------------------------------------------


def test_genotype_round_trips_and_rebuilds_the_same_network(tmp_path) -> None:
    g = small_genotype()
    path = tmp_path / "genotype.json"
    g.save(path)
    text = path.read_text()
    assert '"from": "stem"' in text and '"to": "head"' in text
    assert json.loads(text)["version"] == 1
    g2 = Genotype.load(path)
    assert g2 == g
    a, b = DerivedNetwork(g), DerivedNetwork(g2)
    assert count_parameters(a) == count_parameters(b) > 0
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    # Only what the genotype keeps: one cell per kept non-head edge, no architecture weights.
    assert len(a.cells) == len(g.edges) - 1
    assert not any("alpha" in n or "beta" in n for n, _ in a.named_parameters())


def _edited(g: Genotype, **changes: object) -> str:
    data = json.loads(g.to_json())
    data.update(changes)
    return json.dumps(data)


def test_genotype_validation_on_load() -> None:
    g = small_genotype()
    data = json.loads(g.to_json())
    with pytest.raises(ValueError, match="version"):
        Genotype.from_json(_edited(g, version=2))
    bad_cells = json.loads(json.dumps(data["cells"]))
    bad_cells["expand"][0]["op"] = "max_pool_3x3"
    with pytest.raises(ValueError, match="unknown op"):
        Genotype.from_json(_edited(g, cells=bad_cells))
    no_head = [e for e in data["edges"] if e["to"] != "head"]
    with pytest.raises(ValueError, match="do not connect the stem to the head"):
        Genotype.from_json(_edited(g, edges=no_head))
    one_path = json.loads(replace(g, edges=edges_of((1, 1, 1))).to_json())["edges"]
    Genotype.from_json(_edited(g, edges=one_path))  # a single path is a valid network
    dangling = [*one_path, {"from": [1, 1], "to": [2, 2]}]  # (2, 2) leads nowhere
    with pytest.raises(ValueError, match="not on a stem -> head path"):
        Genotype.from_json(_edited(g, edges=dangling))
    with pytest.raises(ValueError, match="twice"):
        Genotype.from_json(_edited(g, edges=[*one_path, one_path[0]]))
    with pytest.raises(ValueError, match="not an edge of the grid"):
        Genotype.from_json(_edited(g, edges=[*data["edges"], {"from": "stem", "to": [2, 1]}]))
    with pytest.raises(ValueError, match="not valid JSON"):
        Genotype.from_json("{")


def test_a_grown_genotype_starts_as_the_net_it_grew_from() -> None:
    """More kept edges (recipe v8's full-resolution path): the shared cells keep their
    weights, the new path starts at zero, so the grown net first computes what the old one
    did; and it is the only architecture change a fine-tune accepts."""
    g = replace(small_genotype(), edges=edges_of((2, 3, 2), (2, 2, 1)))  # no (1,1) path
    grown = replace(g, edges=edges_of((2, 3, 2), (2, 2, 1), (1, 1, 1)))
    assert grown.grows(g) and not g.grows(grown) and not g.grows(g)
    other_cells = dict(g.cells, compress=("conv_3x3",) * 6)
    assert not replace(grown, cells=other_cells).grows(g), "other ops: not the same cells"
    torch.manual_seed(0)
    old = DerivedNetwork(g).eval()
    new = DerivedNetwork(grown).eval()
    added = new.load_grown(old.state_dict())
    assert added == ["L1_D1_transfer", "L2_D1_transfer", "L3_D1_transfer"]
    assert not new.cells["L3_D1_transfer"].project.weight.any()  # feeds a block old had
    assert new.cells["L1_D1_transfer"].project.weight.any()  # new block: trains from init
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(new(x), old(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="not of a genotype this one grows"):
        DerivedNetwork(g).load_grown(new.state_dict())  # the other way round


# ---- derived network: export and cost ------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter warns
def test_derived_network_exports_to_onnx_with_dynamic_size() -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = DerivedNetwork(small_genotype()).eval()
    buf = io.BytesIO()
    axes = {0: "N", 2: "H", 3: "W"}
    torch.onnx.export(
        net,
        (torch.zeros(1, 1, 16, 16),),
        buf,
        dynamo=False,
        input_names=["image"],
        output_names=["denoised"],
        dynamic_axes={"image": axes, "denoised": axes},
        opset_version=17,
    )
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for shape in [(1, 1, 32, 32), (2, 1, 24, 40)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = net(x).numpy()
        (got,) = session.run(None, {"image": x.numpy()})
        assert got.shape == shape
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_profile_counts() -> None:
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, groups=4))
    assert count_parameters(conv) == (4 * 9 + 4) + (4 * 9 + 4)
    assert count_flops(conv, 8, 6) == 2 * (8 * 6 * 4 * 9) * 2
    g = small_genotype()
    net = DerivedNetwork(g)
    assert count_flops(net, 64, 64) == 4 * count_flops(net, 32, 32)
    assert count_parameters(SuperNet(C, L, D)) > count_parameters(net)
