"""Generated constructor arguments: every valid combination builds and runs, every invalid one
raises a ValueError that names the option and says what is valid."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resnetlab import create_model
from resnetlab.models import ResNet

FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def cifar_kwargs(draw: st.DrawFn) -> dict:
    bottleneck = draw(st.booleans())
    n = draw(st.integers(1, 2))
    shortcut = draw(st.sampled_from(["A", "B", "C", "none"]))
    residual = shortcut != "none"
    kwargs = {
        "depth": (9 if bottleneck else 6) * n + 2,
        "bottleneck": bottleneck,
        "preact": draw(st.booleans()),
        "width": draw(st.integers(1, 2)),
        "shortcut": shortcut,
        "norm": draw(st.sampled_from(["bn", "frozen_bn", "gn", "none"])),
        "in_chans": draw(st.integers(1, 4)),
        "num_classes": draw(st.integers(0, 12)),
        "zero_init_residual": residual and draw(st.booleans()),
        "drop_path_rate": draw(st.floats(0.0, 0.9)) if residual else 0.0,
        "stride_in_1x1": bottleneck and draw(st.booleans()),
        "output_stride": draw(st.sampled_from([None, 1, 2, 4])),
        "avg_down": shortcut in ("B", "C") and draw(st.booleans()),
    }
    if bottleneck:  # ResNeXt / wide bottlenecks [Xie17]; 4 channels per group at planes 16 at least
        kwargs["groups"] = draw(st.sampled_from([1, 2, 4]))
        kwargs["base_width"] = draw(st.sampled_from([16, 32, 64, 128]))
    if draw(st.booleans()):
        kwargs["features_only"] = True
        kwargs["out_indices"] = tuple(sorted(draw(st.sets(st.integers(0, 3), min_size=1))))
    return kwargs


@FAST
@given(kwargs=cifar_kwargs(), train=st.booleans())
def test_valid_cifar_arguments_build_and_run(kwargs: dict, train: bool) -> None:
    model = create_model("cifar_resnet", **kwargs).train(train)
    x = torch.randn(2, kwargs["in_chans"], 8, 8)
    out = model(x)
    if kwargs.get("features_only"):
        assert [f.shape[1] for f in out] == [i["num_chs"] for i in model.feature_info]
        assert [8 // i["reduction"] for i in model.feature_info] == [f.shape[-1] for f in out]
    else:
        width = model.num_features if kwargs["num_classes"] == 0 else kwargs["num_classes"]
        assert out.shape == (2, width)
        out.sum().backward()
    assert all(torch.isfinite(f).all() for f in (out if isinstance(out, list) else [out]))


@settings(max_examples=8, deadline=None)
@given(
    name=st.sampled_from(["resnet18", "plain18", "resnet18d", "plain18d"]),
    norm=st.sampled_from(["bn", "gn", "none"]),
    output_stride=st.sampled_from([None, 8, 16]),
    in_chans=st.integers(1, 4),
    size=st.integers(17, 40),  # odd sizes too: ResNet-D's ceil_mode pools must keep up
)
def test_valid_imagenet_arguments_build_and_run(
    name: str, norm: str, output_stride: int | None, in_chans: int, size: int
) -> None:
    model = create_model(name, norm=norm, output_stride=output_stride, in_chans=in_chans, num_classes=4)
    assert isinstance(model, ResNet)
    assert model.first_conv().in_channels == in_chans
    feats = model.forward_intermediates(torch.randn(2, in_chans, size, size))
    assert [f.shape[1] for f in feats] == [i["num_chs"] for i in model.feature_info]
    assert model.forward_head(model.forward_features(torch.randn(2, in_chans, size, size))).shape == (2, 4)


# (option, invalid value, a word the message must contain to say what is valid)
INVALID = [
    ("norm", "batchnorm", "frozen_bn"),
    ("norm", None, "gn"),
    ("shortcut", "a", "none"),
    ("shortcut", "D", "C"),
    ("num_classes", -1, ">= 0"),
    ("num_classes", 2.5, "integer"),
    ("in_chans", 0, ">= 1"),
    ("zero_init_residual", "yes", "True or False"),
    ("drop_path_rate", 1.0, "[0, 1)"),
    ("drop_path_rate", -0.1, "[0, 1)"),
    ("output_stride", 3, "16"),
    ("output_stride", 32, "4, 2, 1"),  # a CIFAR net's native output stride is 4
    ("stride_in_1x1", True, "bottleneck"),
    ("out_indices", (1, 2), "features_only"),
    ("groups", 32, "bottleneck"),  # these nets have basic blocks
    ("base_width", 4, "bottleneck"),
    ("groups", 0, ">= 1"),
    ("stem", "deep", "CIFAR"),
    ("stem", "3x3", "default, deep"),
    ("avg_down", True, "avg_down=False"),  # option A has no projection to average into
    ("dropout", 0.5, "valid options"),
]


@FAST
@given(case=st.sampled_from(INVALID), name=st.sampled_from(["resnet20", "plain20", "preact_resnet110"]))
def test_invalid_arguments_raise_a_helpful_value_error(case: tuple, name: str) -> None:
    option, value, hint = case
    with pytest.raises(ValueError, match=option) as info:
        create_model(name, **{option: value})
    message = str(info.value)
    assert hint in message
    assert "\n" not in message


@FAST
@given(depth=st.integers(-5, 400).filter(lambda d: d < 8 or (d - 2) % 6))
def test_cifar_depth_not_6n_plus_2_lists_valid_depths(depth: int) -> None:
    with pytest.raises(ValueError, match=r"6n\+2 \(8, 14, 20, 26, 32, 38, 44, \.\.\., 110, 1202\)") as info:
        create_model("cifar_resnet", depth=depth)
    assert f"got {depth}" in str(info.value)


@FAST
@given(depth=st.integers(0, 400).filter(lambda d: d < 11 or (d - 2) % 9))
def test_bottleneck_depth_not_9n_plus_2_is_refused(depth: int) -> None:
    with pytest.raises(ValueError, match=r"9n\+2 \(11, 20, 29, .*164, 1001\)"):
        create_model("cifar_resnet", depth=depth, bottleneck=True)


@pytest.mark.parametrize(
    ("kwargs", "hint"),
    [
        ({"shortcut": "none", "zero_init_residual": True}, "needs a shortcut"),
        ({"shortcut": "none", "drop_path_rate": 0.2}, "needs a shortcut"),
        ({"features_only": True, "out_indices": (0, 4)}, "0..3"),
        ({"features_only": True, "out_indices": ()}, "non-empty"),
        ({"width": 0}, "width"),
        ({"preact": 1}, "preact"),
        ({"depth": "20"}, "6n+2"),
    ],
)
def test_invalid_combinations(kwargs: dict, hint: str) -> None:
    with pytest.raises(ValueError, match=hint.replace("+", r"\+").replace(".", r"\.")):
        create_model("cifar_resnet", **kwargs)


def test_unknown_model_lists_close_matches() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet21'; did you mean .*resnet20"):
        create_model("resnet21")
    with pytest.raises(ValueError, match="wrn28_10"):
        create_model("wrn28-10")


def test_reset_classifier_rejects_negative_sizes() -> None:
    model = create_model("resnet20")
    with pytest.raises(ValueError, match=">= 0"):
        model.reset_classifier(-3)
