"""ResNeXt [Xie17], Wide ResNet-50/101-2 [Zagoruyko16] and ResNet-D [He19] against REFERENCE.md:
sizes, torchvision's and timm's state-dict layouts, grouped convs, the ResNet-D shortcut, twins."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from model_fixtures import meta_model, n_params
from resnetlab import create_model, list_models
from resnetlab.models import BasicBlock, Bottleneck
from resnetlab.models.table import load_table

DATA = Path(__file__).parent / "data"

# REFERENCE.md "Pretrained weights": torchvision's and timm's counts with 1000 classes.
PARAMS = {
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
    "resnet18d": 11_708_744,
    "resnet34d": 21_816_904,
    "resnet50d": 25_576_264,
    "resnet101d": 44_568_392,
    "resnet152d": 60_212_040,
}
TORCHVISION = [n for n in PARAMS if not n.endswith("d") or "x" in n]
RESNET_D = [n for n in PARAMS if n not in TORCHVISION]
TWINS = {
    "resnext50_32x4d": "plain50_32x4d",
    "resnext101_32x8d": "plain101_32x8d",
    "resnext101_64x4d": "plain101_64x4d",
    "wide_resnet50_2": "wide_plain50_2",
    "wide_resnet101_2": "wide_plain101_2",
    "resnet18d": "plain18d",
    "resnet34d": "plain34d",
    "resnet50d": "plain50d",
    "resnet101d": "plain101d",
    "resnet152d": "plain152d",
}


def layout(model: nn.Module) -> list[str]:
    """'key shape' lines, as in the golden files (shape 'AxBxC', '-' for a scalar)."""
    return [f"{k} {'x'.join(map(str, v.shape)) or '-'}" for k, v in model.state_dict().items()]


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts_match_reference(name: str) -> None:
    assert n_params(meta_model(name)) == PARAMS[name]


@pytest.mark.parametrize("name", ["resnext50_32x4d", "resnet50d"])
def test_state_dict_is_the_published_layout(name: str) -> None:
    """The golden files were written from torchvision's `resnet.py` (ResNeXt) and timm's
    `resnet.py` (ResNet-D) layouts, key by key with shapes, independently of this code."""
    expected = (DATA / f"state_dict_{name}.txt").read_text().splitlines()
    assert layout(meta_model(name)) == expected


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_key_layout(name: str) -> None:
    keys = list(meta_model(name).state_dict())
    convs = 1 + 3 * len(meta_model(name).blocks()) + 4  # stem, 3 per bottleneck, 4 projections
    assert len(keys) == convs + convs * 5 + 2  # each conv has a BN of 5 entries; fc weight, bias
    pattern = re.compile(r"(conv1|bn1|fc)\.\w+|layer[1-4]\.\d+\.(conv[1-3]|bn[1-3]|downsample\.[01])\.\w+")
    assert all(pattern.fullmatch(k) for k in keys)


@pytest.mark.parametrize("name", RESNET_D)
def test_timm_resnet_d_key_layout(name: str) -> None:
    model = meta_model(name)
    keys = list(model.state_dict())
    stem = r"conv1\.[036]\.weight|conv1\.[14]\.\w+|bn1\.\w+|fc\.\w+"
    block = r"layer[1-4]\.\d+\.(conv[1-3]|bn[1-3]|downsample\.[12])\.\w+"
    assert all(re.fullmatch(f"{stem}|{block}", k) for k in keys)
    assert not any(".downsample.0." in k for k in keys)  # the pool has no state
    # Projections: the first block of each stage, but layer1 of a basic net keeps 64 channels.
    first = 1 if isinstance(model.blocks()[0], BasicBlock) else 0
    assert {k.split(".downsample")[0] for k in keys if "downsample.1" in k} == {
        f"layer{i}.0" for i in range(1 + first, 5)
    }


@pytest.mark.parametrize(
    ("name", "stage", "width", "groups"),
    [
        ("resnext50_32x4d", "layer1", 128, 32),
        ("resnext50_32x4d", "layer4", 1024, 32),
        ("resnext101_32x8d", "layer2", 512, 32),
        ("resnext101_64x4d", "layer3", 1024, 64),
        ("wide_resnet50_2", "layer1", 128, 1),
        ("wide_resnet101_2", "layer4", 1024, 1),
        ("resnet50d", "layer3", 256, 1),
    ],
)
def test_inner_width_and_groups(name: str, stage: str, width: int, groups: int) -> None:
    # inner width = planes * base_width / 64 * groups [Xie17]; the outer width stays planes * 4.
    planes = {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}[stage]
    for block in getattr(meta_model(name), stage):
        assert block.conv1.out_channels == width and block.bn1.num_features == width
        assert block.conv2.groups == groups
        assert tuple(block.conv2.weight.shape) == (width, width // groups, 3, 3)
        assert tuple(block.conv3.weight.shape) == (planes * 4, width, 1, 1)


def test_grouped_conv_keeps_groups_apart() -> None:
    # Changing the input of one group changes that group's outputs and no other [Xie17 Fig. 3(c)].
    torch.manual_seed(0)
    block = Bottleneck(64, 16, groups=4, base_width=16).eval()  # width 16 = 4 groups of 4
    conv = block.conv2
    x = torch.randn(1, 16, 5, 5)
    y = x.clone()
    y[:, 4:8] += 1.0  # group 1 only
    with torch.no_grad():
        diff = (conv(x) - conv(y)).abs().amax(dim=(0, 2, 3))
    assert (diff[4:8] > 0).all()
    assert not diff[:4].any() and not diff[8:].any()


def test_groups_and_base_width_are_options_of_the_bottleneck() -> None:
    # resnext50_32x4d is resnet50 with two options; torchvision's builders work the same way.
    assert layout(meta_model("resnet50", groups=32, base_width=4)) == layout(meta_model("resnext50_32x4d"))
    assert layout(meta_model("resnet50", stem="deep", avg_down=True)) == layout(meta_model("resnet50d"))
    assert n_params(meta_model("resnet50", groups=1, base_width=64)) == 25_557_032


@pytest.mark.parametrize(("residual", "plain"), sorted(TWINS.items()))
def test_plain_twins(residual: str, plain: str) -> None:
    """The twin has the ResNet's layers without shortcuts: with option A (no projections) the
    two state dicts are the same; with projections, the twin loads everything but them."""
    assert plain == re.sub(r"resnext|resnet", "plain", residual)  # the naming rule
    res, twin = meta_model(residual), meta_model(plain)
    assert not any(b.has_shortcut for b in twin.blocks())
    assert [type(b) for b in twin.blocks()] == [type(b) for b in res.blocks()]
    projections = {k for k in res.state_dict() if ".downsample." in k}
    assert set(res.state_dict()) - projections == set(twin.state_dict())
    result = twin.load_state_dict(res.state_dict(), strict=False)
    assert result.missing_keys == [] and set(result.unexpected_keys) == projections
    option_a = meta_model(residual, shortcut="A", **({"avg_down": False} if residual in RESNET_D else {}))
    twin.load_state_dict(option_a.state_dict(), strict=True)
    assert (
        n_params(twin)
        == n_params(option_a)
        == PARAMS[residual] - sum(v.numel() for k, v in res.named_parameters() if ".downsample." in k)
    )


def test_every_imagenet_resnet_has_its_twin_registered() -> None:
    names = set(list_models())
    family = {name: row.family for name, row in load_table().items()}  # checked against the code elsewhere
    residual = [n for n in names if "plain" not in n and family[n] == "imagenet"]
    assert set(TWINS) <= set(residual)
    assert all(re.sub(r"resnext|resnet", "plain", n) in names for n in residual)


def test_deep_stem() -> None:
    model = create_model("resnet50d", in_chans=1, num_classes=10).eval()
    stem = model.conv1
    shapes = [tuple(stem[i].weight.shape) for i in (0, 3, 6)]
    assert shapes == [(32, 1, 3, 3), (32, 32, 3, 3), (64, 32, 3, 3)]
    assert [stem[i].stride for i in (0, 3, 6)] == [(2, 2), (1, 1), (1, 1)]
    assert [type(stem[i]) for i in (1, 2, 4, 5)] == [nn.BatchNorm2d, nn.ReLU] * 2
    assert model.first_conv() is stem[0]
    x = torch.randn(2, 1, 28, 28)  # Fashion-MNIST
    with torch.no_grad():
        feats = model.forward_intermediates(x)
        expected_stem = model.maxpool(
            F.relu(model.bn1(stem[6](stem[5](stem[4](stem[3](stem[2](stem[1](stem[0](x)))))))))
        )
        torch.testing.assert_close(feats[0], expected_stem, rtol=0, atol=0)
        assert [tuple(f.shape[1:]) for f in feats] == [
            (64, 7, 7),
            (256, 7, 7),
            (512, 4, 4),
            (1024, 2, 2),
            (2048, 1, 1),
        ]
        assert model(x).shape == (2, 10)
    standard = meta_model("resnet18")
    assert standard.first_conv() is standard.conv1


def test_deep_stem_features_only_and_norms() -> None:
    model = create_model("resnet18d", features_only=True, out_indices=(0, 2), norm="gn").eval()
    assert [i["num_chs"] for i in model.feature_info] == [64, 128]
    assert [i["reduction"] for i in model.feature_info] == [4, 8]
    assert isinstance(model.conv1[1], nn.GroupNorm)
    with torch.no_grad():
        assert [tuple(f.shape) for f in model(torch.randn(1, 3, 64, 64))] == [(1, 64, 16, 16), (1, 128, 8, 8)]
    bare = create_model("plain18d", norm="none")
    assert [type(m) for m in bare.conv1] == [
        nn.Conv2d,
        nn.Identity,
        nn.ReLU,
        nn.Conv2d,
        nn.Identity,
        nn.ReLU,
        nn.Conv2d,
    ]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bare.modules())


def by_hand_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """2x2/2 average over the pixels that exist: an odd edge averages 2 (or 1) pixels, not 4."""
    h, w = x.shape[-2:]
    pad = (0, w % 2, 0, h % 2)
    total = F.pad(x, pad).unfold(2, 2, 2).unfold(3, 2, 2).sum(dim=(-1, -2))
    count = F.pad(torch.ones(1, 1, h, w), pad).unfold(2, 2, 2).unfold(3, 2, 2).sum(dim=(-1, -2))
    return total / count


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(1, 17),
    width=st.integers(1, 17),
    bottleneck=st.booleans(),
    stride_in_1x1=st.booleans(),
)
def test_avg_down_shortcut_matches_the_branch_on_any_size(
    height: int, width: int, bottleneck: bool, stride_in_1x1: bool
) -> None:
    torch.manual_seed(0)
    if bottleneck:
        block = Bottleneck(32, 16, 2, avg_down=True, stride_in_1x1=stride_in_1x1).eval()
    else:
        block = BasicBlock(32, 64, 2, avg_down=True).eval()
    pool, conv, norm = block.downsample
    assert isinstance(pool, nn.AvgPool2d) and conv.stride == (1, 1) and conv.kernel_size == (1, 1)
    x = torch.randn(2, 32, height, width)
    with torch.no_grad():
        short = block.shortcut(x)
        assert short.shape == block.residual(x).shape  # ceil_mode keeps odd sizes in step
        assert short.shape[-2:] == (math.ceil(height / 2), math.ceil(width / 2))
        torch.testing.assert_close(pool(x), by_hand_avg_pool(x))  # count_include_pad=False
        torch.testing.assert_close(short, norm(conv(by_hand_avg_pool(x))))
        torch.testing.assert_close(block(x), F.relu(block.residual(x) + short))


def test_avg_down_is_an_identity_pool_at_stride_1() -> None:
    model = meta_model("resnet50d")
    assert isinstance(model.layer1[0].downsample[0], nn.Identity)  # 64 -> 256 at stride 1
    assert all(isinstance(getattr(model, f"layer{i}")[0].downsample[0], nn.AvgPool2d) for i in (2, 3, 4))
    dilated = meta_model("resnet50d", output_stride=16)  # layer4 trades its stride for dilation
    assert isinstance(dilated.layer4[0].downsample[0], nn.Identity)
    assert dilated.layer4[0].conv2.stride == (1, 1)


@pytest.mark.parametrize("name", ["resnext50_32x4d", "wide_resnet50_2", "resnet50d", "resnet18d"])
def test_analysis_interface(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, zero_init_residual=True).eval()
    blocks = model.blocks()
    assert len(blocks) == sum(len(getattr(model, s)) for s in model.stage_names)
    with torch.no_grad():
        for block in (blocks[0], model.layer2[0], model.layer2[1]):
            x = torch.rand(2, block.conv1.in_channels, 6, 6)
            torch.testing.assert_close(block(x), F.relu(block.shortcut(x)), rtol=0, atol=0)
            assert not block.residual(x).any()  # zero_init_last: the branch starts at 0
            layers = block.response_layers()
            assert all(isinstance(m, nn.BatchNorm2d) for m in layers)
            convs = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
            assert len(layers) == len(convs)


# (kwargs, a phrase the one-line error must contain)
INVALID = [
    ({"name": "resnet18", "groups": 32}, "bottleneck blocks only"),
    ({"name": "resnet34", "base_width": 128}, "bottleneck blocks only"),
    ({"name": "resnet50", "groups": 0}, "groups must be an integer >= 1"),
    ({"name": "resnet50", "base_width": 2.5}, "base_width must be an integer"),
    ({"name": "cifar_resnet", "depth": 11, "bottleneck": True, "base_width": 2}, "base_width >= 4"),
    ({"name": "resnet20", "stem": "deep"}, "CIFAR"),
    ({"name": "resnet50", "stem": "7x7"}, "default, deep"),
    ({"name": "resnet50", "avg_down": True, "shortcut": "A"}, "avg_down=False"),
    ({"name": "resnet50d", "shortcut": "none"}, "avg_down=False"),
    ({"name": "plain50d", "avg_down": True}, "projection shortcuts"),
    ({"name": "resnet50", "avg_down": 1}, "True or False"),
]


@pytest.mark.parametrize(("kwargs", "phrase"), INVALID)
def test_invalid_combinations_are_one_line_errors(kwargs: dict, phrase: str) -> None:
    with pytest.raises(ValueError) as info:
        meta_model(**kwargs)
    assert phrase in str(info.value) and "\n" not in str(info.value)
