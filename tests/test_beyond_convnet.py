"""Residual MLPs and transformers: the twins, causality, the rank measures, the text corpus, the
findings of the `mlp` and `transformer` experiments, and the tooling they share with the ResNets."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cli_fixtures import assert_one_line
from resnetlab.cli import main
from resnetlab.data.text import (
    SEPARATOR,
    batch_windows,
    eval_windows,
    load_corpus,
    split_documents,
    split_of,
)
from resnetlab.errors import Error
from resnetlab.experiments.lesion import lesioned
from resnetlab.experiments.measures import effective_rank, rank1_distance, unit_gradient_norms
from resnetlab.experiments.twins import REZERO, Arm, TwinsConfig, findings, rezero_depth, summarize
from resnetlab.models import create_model

TWINS = {"residual_mlp": "plain_mlp", "gpt": "plain_gpt"}
SMALL = {"residual_mlp": dict(depth=3, width=16), "gpt": dict(depth=2, width=16, n_head=2, context=8)}
SMALL |= {"plain_mlp": SMALL["residual_mlp"], "plain_gpt": SMALL["gpt"]}


def tiny_input(name: str) -> torch.Tensor:
    return torch.randint(0, 256, (2, 8)) if "gpt" in name else torch.randn(2, 1, 28, 28)


# ---------------------------------------------------------------- the models


@pytest.mark.parametrize("residual", sorted(TWINS))
@pytest.mark.parametrize("norm", ["ln", "none"])
def test_twins_have_equal_parameters_and_load_each_others_state_dicts(residual: str, norm: str) -> None:
    plain = create_model(TWINS[residual], norm=norm, **SMALL[residual])
    res = create_model(residual, norm=norm, **SMALL[residual])
    assert [(k, v.shape) for k, v in plain.state_dict().items()] == [
        (k, v.shape) for k, v in res.state_dict().items()
    ]
    plain.load_state_dict(res.state_dict(), strict=True)
    res.load_state_dict(plain.state_dict(), strict=True)
    assert res.has_shortcut and not plain.has_shortcut
    x = tiny_input(residual)
    assert not torch.allclose(plain(x), res(x))  # the same weights, but one adds the shortcut


@pytest.mark.parametrize("name", ["residual_mlp", "plain_mlp", "gpt", "plain_gpt"])
def test_forward_backward_reaches_the_input_layer(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, **SMALL[name])
    out = model(tiny_input(name))
    assert out.shape == ((2, 8, 256) if "gpt" in name else (2, 10)) and torch.isfinite(out).all()
    out.square().mean().backward()
    first = model.wte.weight if "gpt" in name else model.first_layer().weight
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_rezero_starts_as_the_identity_and_needs_the_shortcut() -> None:
    model = create_model("residual_mlp", norm="none", branch_scale="zero", **SMALL["residual_mlp"])
    feats = model.forward_intermediates(tiny_input("residual_mlp"))
    assert all(torch.equal(f, feats[0]) for f in feats)  # every unit is x + 0 * F(x)
    assert sum(k.endswith(".scale") for k in model.state_dict()) == 3
    with pytest.raises(Error, match="needs the shortcut"):
        create_model("plain_mlp", branch_scale="zero")
    with pytest.raises(Error, match="norm must be one of ln, none"):
        create_model("gpt", norm="bn")


@settings(max_examples=15, deadline=None)
@given(t=st.integers(0, 6), seed=st.integers(0, 2**16), shortcut=st.booleans())
def test_the_transformer_is_causal(t: int, seed: int, shortcut: bool) -> None:
    """Changing byte t+1 never changes the logits at positions <= t."""
    torch.manual_seed(seed)
    model = create_model("gpt" if shortcut else "plain_gpt", **SMALL["gpt"]).eval()
    x = torch.randint(0, 256, (1, 8))
    changed = x.clone()
    changed[0, t + 1] = (x[0, t + 1] + 1 + seed % 255) % 256
    before, after = model(x), model(changed)
    assert torch.equal(before[:, : t + 1], after[:, : t + 1])
    assert not torch.allclose(before[:, t + 1], after[:, t + 1])  # and the change is seen where it may be


def test_the_gpt_refuses_a_sequence_longer_than_its_context() -> None:
    with pytest.raises(Error, match="longer than the context of 8"):
        create_model("gpt", **SMALL["gpt"])(torch.zeros(1, 9, dtype=torch.long))


def test_new_models_are_in_the_registry_and_the_table(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "*gpt"]) == 0
    out = capsys.readouterr().out
    assert "gpt" in out and "plain_gpt" in out and "867,072" in out and "64B" in out


# ---------------------------------------------------------------- measures


def test_rank1_distance_is_zero_on_rank_one_and_known_on_a_constructed_matrix() -> None:
    u, v = torch.randn(20, 1), torch.randn(1, 7)
    assert rank1_distance(u @ v) == pytest.approx(0, abs=1e-7)
    # Singular values 4 and 3: the best rank-1 approximation leaves 3 of the norm 5.
    assert rank1_distance(torch.diag(torch.tensor([4.0, 3.0]))) == pytest.approx(0.6)
    batch = torch.stack(
        [u @ v, torch.diag(torch.tensor([4.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0]))[:2].repeat(10, 1)]
    )
    assert rank1_distance(batch) == pytest.approx((0 + 0.6) / 2)  # per sequence, then the mean
    assert math.isnan(rank1_distance(torch.full((3, 3), math.inf)))


def test_effective_rank_counts_equal_directions() -> None:
    assert effective_rank(torch.eye(5)) == pytest.approx(5)
    assert effective_rank(torch.randn(9, 1) @ torch.randn(1, 4)) == pytest.approx(1, abs=1e-6)
    # Singular values 1 and 1/3: p = (3/4, 1/4), exp(entropy) = 4 / 3^(3/4).
    assert effective_rank(torch.diag(torch.tensor([1.0, 1 / 3]))) == pytest.approx(4 / 3**0.75)


def test_unit_gradient_norms_equal_the_hand_computed_ones() -> None:
    torch.manual_seed(0)
    model = create_model("residual_mlp", **SMALL["residual_mlp"])
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])

    def loss(m: torch.nn.Module) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(m(x), y)

    norms = unit_gradient_norms(model, loss)
    loss(model).backward()
    for unit, value in zip(model.blocks(), norms, strict=True):
        assert value == pytest.approx(torch.cat([p.grad.flatten() for p in unit.parameters()]).norm().item())
    assert len(create_model("gpt", **SMALL["gpt"]).blocks()) == 4  # attention and MLP units of 2 layers


def test_lesion_deletes_units_of_any_family() -> None:
    torch.manual_seed(0)
    model = create_model("gpt", **SMALL["gpt"]).eval()
    x = torch.randint(0, 256, (2, 8))
    base = model(x)
    model.blocks()[1].zero_init_last()  # the first MLP unit's branch is now zero
    with lesioned(model, [1]) as cut:
        assert type(cut.h[0].mlp).__name__ == "Deleted"
        unchanged = cut(x)
    assert model.h[0].mlp is model.blocks()[1]  # restored
    with lesioned(model, [0]):
        changed = model(x)
    assert torch.allclose(unchanged, model(x)) and not torch.allclose(changed, model(x))
    assert not torch.allclose(base, model(x))


# ---------------------------------------------------------------- the corpus


def write_corpus(folder: Path, docs: int) -> list[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    texts = [f"document {i}\n\t-- author {i}".encode() for i in range(docs)]
    half = docs // 2
    (folder / "fortunes").write_bytes(b"\n%\n".join(texts[:half]) + b"\n%\n")
    (folder / "literature").write_bytes(b"\n%\n".join(texts[half:]) + b"\n%\n")
    (folder / "fortunes.dat").write_bytes(b"\x00binary index")
    (folder / "fortunes.u8").symlink_to("fortunes")
    return texts


def test_documents_split_on_percent_lines() -> None:
    assert split_documents(b"a\nb\n%\n\nc\n%\n%\nd %\n") == [b"a\nb", b"c", b"d %"]


def test_the_corpus_splits_by_document(tmp_path: Path) -> None:
    texts = write_corpus(tmp_path / "fortunes", 60)
    corpus = load_corpus(tmp_path)
    assert corpus.folder == tmp_path / "fortunes" and corpus.files == ("fortunes", "literature")
    assert corpus.documents == 60
    for split in ("train", "val", "test"):
        docs = bytes(corpus.split(split)).split(SEPARATOR)
        assert docs == [t for i, t in enumerate(texts) if split_of(i) == split]
    assert len(bytes(corpus.val).split(SEPARATOR)) == 3  # documents 18, 38, 58


def test_windows_come_from_seed_and_step_and_resume_exactly() -> None:
    data = torch.arange(1000) % 251
    data = data.to(torch.uint8)
    first = [batch_windows(data, batch=4, context=16, seed=7, step=s) for s in range(5)]
    again = batch_windows(data, batch=4, context=16, seed=7, step=3)  # a run resumed at step 3
    assert torch.equal(first[3][0], again[0]) and torch.equal(first[3][1], again[1])
    assert not torch.equal(first[2][0], first[3][0])
    assert not torch.equal(batch_windows(data, batch=4, context=16, seed=8, step=3)[0], again[0])
    x, y = first[0]
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one byte
    ex, ey = eval_windows(data, context=16, max_windows=3)
    assert ex.shape == (3, 16) and torch.equal(ex.flatten(), data[:48].long())
    assert torch.equal(ey.flatten(), data[1:49].long())


def test_the_real_corpus_is_english_and_its_checksum_is_recorded() -> None:
    try:
        corpus = load_corpus()
    except Error:
        pytest.skip("Debian's fortunes package is not installed (`make data` installs it)")
    assert corpus.documents > 10_000 and len(corpus.train) > 2_000_000
    assert len(corpus.sha256) == 64
    assert b" the " in bytes(corpus.val[:10_000])


def test_a_missing_corpus_is_one_line_naming_the_package(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("resnetlab.data.text.SYSTEM_DIRS", ())
    monkeypatch.delenv("RESNETLAB_DATA", raising=False)
    assert_one_line(
        capsys, "data", "fortunes", "--data-dir", str(tmp_path), match="install Debian's fortunes"
    )
    run = tmp_path / "run"
    argv = ["experiment", "transformer", "--device", "cpu", "--data-dir", str(tmp_path), "--out", str(run)]
    assert_one_line(capsys, *argv, match="apt-get install fortunes")
    assert not run.exists()  # a run that failed before writing anything leaves nothing behind


def test_data_fortunes_prints_the_corpus(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_corpus(tmp_path / "fortunes", 40)
    assert main(["data", "fortunes", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "40 documents" in out and "sha256" in out and "not the release" in out


# ---------------------------------------------------------------- findings from constructed numbers


CFG = TwinsConfig(depths=(4, 64), seeds=2, steps=100)


def constructed(plain: dict[int, float], residual: dict[int, float], rezero: float, std: float = 0.5) -> dict:
    runs = []
    for depth in plain:
        for arch, value in (("plain", plain[depth]), ("residual", residual[depth])):
            for seed, shift in enumerate((-std, std)):
                runs.append(
                    {
                        "arch": arch,
                        "norm": "ln",
                        "branch_scale": "one",
                        "depth": depth,
                        "seed": seed,
                        "metric": value + shift,
                        "final_train_loss": 1.0,
                        "diverged": False,
                        "input_r2": [0.9, 0.2 if arch == "plain" else 0.7 + shift / 10],
                    }
                )
    for seed, shift in enumerate((-std, std)):
        runs.append(
            {
                "arch": "rezero",
                "norm": "none",
                "branch_scale": "zero",
                "depth": max(plain),
                "seed": seed,
                "metric": rezero + shift,
                "final_train_loss": 1.0,
                "diverged": False,
                "input_r2": [0.9, 0.8],
            }
        )
    signal = []
    for arm in (
        Arm("plain", "ln"),
        Arm("residual", "ln"),
        Arm("plain", "none"),
        Arm("residual", "none"),
        REZERO,
    ):
        collapse = arm.arch == "plain"
        signal.append(
            {
                "arch": arm.arch,
                "norm": arm.norm,
                "depth": max(plain),
                "seed": 0,
                "grad_norm": [100.0, 1.0] if collapse else [1.0, 1.0],
                "rank1_distance": [0.8, 0.05] if collapse else [0.8, 0.7],
                "effective_rank": [20.0, 1.5] if collapse else [20.0, 18.0],
                "input_r2": [0.95, 0.1] if collapse else [0.95, 0.6],
                "rms": [1.0, 1.0],
            }
        )
    summary = summarize(runs)
    depth, fails = rezero_depth(summary, CFG)
    assert depth == 64  # the constructed ReZero runs are at the largest depth
    return {
        "metric": "test error (%)",
        "depth_noun": "units",
        "baseline": {"name": "chance", "metric": 90.0},
        "rezero_depth": depth,
        "plain_fails_at_rezero_depth": fails,
        "runs": runs,
        "summary": summary,
        "signal": signal,
    }


def test_findings_say_degradation_when_plain_worsens_with_depth_and_residual_does_not() -> None:
    text = findings(constructed({4: 12.0, 64: 30.0}, {4: 12.0, 64: 11.0}, rezero=11.5), CFG)
    assert "the degradation problem shows beyond the convnet" in text[0]
    assert "the shortcut is worth 19 in test error (%)" in text[0]
    assert "100x the last unit's in the plain twin and 1x in the residual" in text[1]
    assert "the median unit's is 50.5 against 1" in text[1]
    assert "(8% kept) and to 18.0 in the residual twin (90% kept)" in text[1]
    assert "the plain stack collapses toward rank 1 faster [Dong21]" in text[1]
    assert text[3] == (
        "Input kept by the last unit, 64 units (input R² of a ridge read-out): at initialisation "
        "0.600 ± 0.000 (residual) vs 0.100 ± 0.000 (plain): the residual twin keeps more; after 100 steps "
        "0.700 ± 0.050 (residual) vs 0.200 ± 0.000 (plain): the residual twin keeps more."
    )
    assert "ReZero at 64 units, the largest depth where the plain twin fails" in text[4]
    assert "replaces normalisation here" in text[4]


def test_findings_name_the_nets_that_learned_nothing() -> None:
    text = findings(constructed({4: 12.0, 64: 89.5}, {4: 12.0, 64: 11.0}, rezero=11.5), CFG)[0]
    assert "plain-64 (ln) is no better than chance (90): it learned nothing beyond it." in text
    assert "plain-4" not in text.split("So ")[-1]


def test_findings_say_so_when_the_claim_does_not_show() -> None:
    text = findings(constructed({4: 12.0, 64: 12.2}, {4: 12.0, 64: 12.0}, rezero=40.0), CFG)
    assert "at this scale the seed's claim does not show" in text[0]
    assert "plain twin fails at no depth here" in text[4]
    assert "it trains no better than the plain twin" in text[4]


def test_findings_tell_a_vanished_signal_from_an_overflow() -> None:
    results = constructed({4: 12.0, 64: 30.0}, {4: 12.0, 64: 11.0}, rezero=11.5)
    for s in results["signal"]:
        if s["norm"] == "none" and s["arch"] != "rezero":
            vanished = s["arch"] == "plain"
            s["rank1_distance"][-1] = s["effective_rank"][-1] = math.nan
            s["rms"][-1] = 0.0 if vanished else math.inf
    text = findings(results, CFG)[2]
    assert "the plain twin's signal vanished (its last unit outputs 0)" in text
    assert "the residual twin's signal overflowed" in text


def test_findings_name_exploding_gradients() -> None:
    results = constructed({4: 12.0, 64: 30.0}, {4: 12.0, 64: 11.0}, rezero=11.5)
    for s in results["signal"]:
        if s["norm"] == "none" and s["arch"] == "residual":
            s["grad_norm"] = [3e10, 1e10]
    text = findings(results, CFG)
    assert "The residual twin's median unit gradient is 4e+08x the plain twin's: it explodes." in text[2]
    assert "explodes" not in text[1]
    for s in results["signal"]:
        if s["norm"] == "none":
            s["grad_norm"] = [1e-9, 1e-9] if s["arch"] == "plain" else [1.0, 1.0]
    assert (
        "The residual twin's median unit gradient is 1e+09x the plain twin's: the plain twin's vanishes."
        in (findings(results, CFG)[2])
    )


def test_findings_name_a_diverged_rezero_run() -> None:
    results = constructed({4: 12.0, 64: 30.0}, {4: 12.0, 64: 11.0}, rezero=math.nan)
    assert "it does not train: it diverged" in findings(results, CFG)[4]


@settings(max_examples=20, deadline=None)
@given(
    depth=st.integers(1, 4),
    width=st.sampled_from([4, 8, 12]),
    norm=st.sampled_from(["ln", "none"]),
    scale=st.sampled_from(["one", "zero"]),
    gpt=st.booleans(),
)
def test_any_twin_pair_builds_with_the_counted_parameters(
    depth: int, width: int, norm: str, scale: str, gpt: bool
) -> None:
    """Parameters, counted by hand: a unit is its linears, its norm (2 x width) and its scale (1)."""
    per_unit_extra = (2 * width if norm == "ln" else 0) + (1 if scale == "zero" else 0)
    if gpt:
        kw = dict(depth=depth, width=width, n_head=2, context=4, norm=norm, branch_scale=scale)
        attn = 3 * width * width + 3 * width + width * width + width
        mlp = 2 * 4 * width * width + 4 * width + width
        expected = 256 * width + 4 * width + depth * (attn + mlp + 2 * per_unit_extra) + 256 * width
        names = ("gpt", "plain_gpt")
    else:
        kw = dict(depth=depth, width=width, norm=norm, branch_scale=scale, image_size=4)
        unit = 2 * 2 * width * width + 2 * width + width
        expected = (16 * width + width) + depth * (unit + per_unit_extra) + (width * 10 + 10)
        names = ("residual_mlp", "plain_mlp")
    expected += 2 * width if norm == "ln" else 0  # the final norm
    residual = create_model(names[0], **kw)
    assert sum(p.numel() for p in residual.parameters()) == expected
    if scale == "one":  # a zero-scaled branch needs the shortcut
        plain = create_model(names[1], **kw)
        assert sum(p.numel() for p in plain.parameters()) == expected


def test_train_refuses_a_language_model_in_one_line(capsys: pytest.CaptureFixture) -> None:
    assert_one_line(
        capsys, "train", "--model", "plain_gpt", "--device", "cpu", match="experiment transformer"
    )


def test_the_residual_mlp_trains_and_evaluates_through_the_image_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The MLP is an image classifier: train, eval (loading a conv-less checkpoint) and predict."""
    run = tmp_path / "run"
    argv = [
        "train",
        "--model",
        "residual_mlp",
        "--model-kwargs",
        "depth=2,width=16",
        "--max-steps",
        "2",
        "--batch-size",
        "16",
        "--train-subset",
        "64",
        "--device",
        "cpu",
        "--amp",
        "none",
        "--out",
        str(run),
    ]
    assert main(argv) == 0
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    assert "top-1" in capsys.readouterr().out


def test_a_corpus_too_small_to_split_or_foreign_bytes_are_handled(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Three documents leave val and test empty: one line. Arbitrary bytes are text to a byte model."""
    folder = tmp_path / "fortunes"
    folder.mkdir()
    (folder / "fortunes").write_bytes(b"one\n%\ntwo\n%\nthree\n")
    assert_one_line(capsys, "data", "fortunes", "--data-dir", str(tmp_path), match="holds too little text")
    (folder / "fortunes").write_bytes(b"\n%\n".join(bytes([i % 256, 0, 255]) * 7 for i in range(40)))
    corpus = load_corpus(tmp_path)
    assert corpus.documents == 40 and corpus.train.dtype == torch.uint8 and int(corpus.train.max()) == 255
