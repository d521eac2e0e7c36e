"""The seed's third reason and Fig. 7, measured: input recoverability, the information
experiment's findings, and the responses experiment's BN-scale bookkeeping."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from resnetlab.cli import main
from resnetlab.experiments import information, responses
from resnetlab.experiments.measures import input_recoverability, linear_recoverability
from resnetlab.models import create_model


def split(features: torch.Tensor, inputs: torch.Tensor, n_fit: int) -> float:
    return linear_recoverability(features[:n_fit], inputs[:n_fit], features[n_fit:], inputs[n_fit:])


# ---------------------------------------------------------------- linear recoverability


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    dims=st.sampled_from([(5, 5), (20, 20), (20, 60), (40, 300)]),  # (input, feature) widths
    n_fit=st.sampled_from([50, 120]),
)
def test_an_invertible_linear_feature_map_keeps_everything(seed: int, dims: tuple, n_fit: int) -> None:
    """R^2 = 1 whether the features are narrower than the examples are many (the width x width
    eigenproblem) or wider (the N x N one), for any well-conditioned injective linear map."""
    g = torch.Generator().manual_seed(seed)
    p, d = dims
    x = torch.randn(n_fit + 80, p, generator=g) + 3  # an offset: the intercept is fitted too
    q, _ = torch.linalg.qr(torch.randn(d, p, generator=g))  # orthonormal columns: injective
    scale = 0.5 + 1.5 * torch.rand(p, generator=g)
    assert split((x * scale) @ q.T, x, n_fit) == pytest.approx(1.0, abs=1e-6)


def test_features_independent_of_the_input_recover_nothing() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 30, generator=g)
    for width in (50, 2000):
        assert abs(split(torch.randn(600, width, generator=g), x, 400)) < 0.02


def test_recoverability_falls_with_noise_and_is_nan_for_a_broken_signal() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 30, generator=g)
    r2 = [split(x + s * torch.randn(600, 30, generator=g), x, 400) for s in (0.1, 1.0, 3.0)]
    assert 1 > r2[0] > r2[1] > r2[2] > 0
    assert r2[1] == pytest.approx(0.5, abs=0.05)  # x + noise of equal variance: R^2 = 1/2
    assert math.isnan(split(torch.full((600, 30), math.inf), x, 400))
    assert split(torch.ones(600, 30), x, 400) == pytest.approx(0.0, abs=0.01)  # constant: the mean


def test_token_inputs_are_recovered_from_a_distinct_embedding_of_each_byte() -> None:
    # every byte occurs in the fitting half: one never seen there cannot be read out
    tokens = torch.randint(0, 40, (16, 64), generator=torch.Generator().manual_seed(0))
    distinct = torch.eye(40)[tokens] @ torch.randn(40, 48)  # (B, T, width): injective on the bytes
    assert input_recoverability(distinct, tokens) == pytest.approx(1.0, abs=1e-6)
    assert abs(input_recoverability(torch.randn(16, 64, 48), tokens)) < 0.05


# ---------------------------------------------------------------- information findings


def summary_of(r2: dict[tuple[str, int], float], std: float = 0.01) -> dict:
    out = {}
    for (arch, depth), v in r2.items():
        entry = {"arch": arch, "depth": depth, "test_error": 10.0, "test_error_std": 1.0}
        for when in information.WHEN:
            entry[f"{when}_input_r2"] = [0.9, 0.8, 0.7, v]
            entry[f"{when}_input_r2_std"] = [std] * 4
            entry[f"{when}_effective_rank"] = [50.0] * 4
            entry[f"{when}_effective_rank_std"] = [1.0] * 4
        out[f"{arch}-{depth}"] = entry
    return out


def test_information_findings_say_which_net_keeps_more() -> None:
    cfg = information.InformationConfig(depths=(20, 56), seeds=3)
    keeps = summary_of({("plain", 20): 0.6, ("resnet", 20): 0.7, ("plain", 56): 0.3, ("resnet", 56): 0.65})
    text = information.findings(keeps, cfg)
    assert "the residual net keeps more of the input at every depth" in text[0]
    assert "falls by 0.300 in the plain net and by 0.050 in the residual net" in text[2]
    assert "depth destroys more of the input without the shortcut" in text[2]

    loses = summary_of({("plain", 20): 0.7, ("resnet", 20): 0.6, ("plain", 56): 0.7, ("resnet", 56): 0.5})
    text = information.findings(loses, cfg)
    assert "the plain net keeps more of the input at every depth: the claim does not hold" in text[0]
    assert "depth costs the residual net as much or more" in text[2]

    with_preact = {**keeps, **summary_of({("preact", 20): 0.75, ("preact", 56): 0.72})}
    text = information.findings(with_preact, dataclasses.replace(cfg, archs=("plain", "resnet", "preact")))
    assert (
        "The pre-activation ResNet's last-stage input R^2 (init), by depth: 20: 0.750 vs 0.700 (resnet); "
        in text[2]
    )

    close = summary_of({("plain", 20): 0.6, ("resnet", 20): 0.61, ("plain", 56): 0.3, ("resnet", 56): 0.6})
    assert (
        "at 20 the two are within their spread; at 56 the residual net keeps more"
        in (information.findings(close, cfg)[0])
    )


# ---------------------------------------------------------------- responses: BN scales


def test_bn_scales_are_the_rms_gamma_of_each_response_layer() -> None:
    torch.manual_seed(0)
    model = create_model("cifar_resnet", depth=8, shortcut="A", num_classes=10, in_chans=1)
    bn = model.blocks()[1].bn2
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([3.0, -4.0] * (len(bn.weight) // 2)))
    scales = responses.bn_scales(model)
    assert len(scales) == 6 and scales[3] == pytest.approx(math.sqrt(12.5))
    assert scales[:3] == [1.0, 1.0, 1.0]


def responses_nets(scale: float) -> dict:
    return {
        f"{arch}-{d}": {"arch": arch, "depth": d, "std": [s] * 4, "bn_scale": [1.0, scale] * 2}
        for arch, d, s in (("plain", 20, 1.2), ("resnet", 20, 1.0), ("resnet", 56, 0.9))
    }


def test_responses_findings_say_when_the_run_is_too_short_to_move_the_scales() -> None:
    cfg = responses.ResponsesConfig(plain_depths=(20,), resnet_depths=(20, 56))
    text = " ".join(responses.findings(responses_nets(1.02), cfg))
    assert "responses are smaller than the plain ones" in text
    assert "falls with every step in depth" in text
    assert "ResNets' BN scales at most 0.010 from their init of 1" in text
    assert "400 steps are too short to show [He15]'s trend (--preset full trains 2000)" in text
    assert "median std / scale over each net's layers: plain-20 1.19, resnet-20 0.99, resnet-56 0.89" in text
    # a plain net whose scales moved says nothing about the ResNets' depth trend
    nets = responses_nets(1.02) | {"plain-20": {**responses_nets(0.5)["plain-20"], "arch": "plain"}}
    assert "too short" in " ".join(responses.findings(nets, cfg))
    text = " ".join(responses.findings(responses_nets(0.5), cfg))
    assert "up to 0.250 from their init of 1" in text and "too short" not in text


@pytest.mark.parametrize(
    "flags",
    [
        ["--archs", "resnet"],
        ["--archs", "plain,resnet,densenet"],
        ["--depths", "21"],
        ["--fit-examples", "3"],
    ],
)
def test_bad_information_flags_are_one_line_errors(flags: list[str], capsys: pytest.CaptureFixture) -> None:
    assert main(["experiment", "information", *flags, "--out", "/nonexistent/never-made"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnetlab: error:") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flags", [["--workers", "-1"], ["--resnet-depths", "21"], ["--steps", "0"]])
def test_bad_responses_flags_are_one_line_errors(flags: list[str], capsys: pytest.CaptureFixture) -> None:
    assert main(["experiment", "responses", *flags, "--out", "/nonexistent/never-made"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnetlab: error:") and len(err.strip().splitlines()) == 1
