"""Hostile and broken exported files: a `.pt2` never runs code from its archive, a sidecar never
silently disagrees with its model, a damaged file is one line, and an export's files appear
together. Each test here failed before the hostile-input battery's fixes (issue 23)."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from cli_fixtures import assert_one_line, run
from resnetlab.errors import Error
from resnetlab.export import pipeline
from resnetlab.export.pipeline import ExportOptions, export_model
from resnetlab.weights.exported import OnnxModel
from weights_fixtures import Evil

pytestmark = pytest.mark.xdist_group("export")  # one worker: the exporter's warm-up is paid once


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """resnetlab's own .pt2 (dynamic batch, so it has shape expressions) and .onnx of a
    random-weight resnet20, each with its sidecar, plus a 32 px image to predict on."""
    folder = tmp_path_factory.mktemp("exports")
    files = {"pt2": folder / "r20.pt2", "onnx": folder / "r20.onnx", "image": folder / "x.png"}
    for key in ("pt2", "onnx"):
        with contextlib.redirect_stdout(io.StringIO()):
            export_model("resnet20", ExportOptions(format=key, out=files[key]))
    Image.new("RGB", (32, 32), (120, 30, 200)).save(files["image"])
    return files


def sidecar(path: Path) -> dict:
    return json.loads(path.with_name(path.name + ".json").read_text())


def write_sidecar(path: Path, side: dict) -> None:
    path.with_name(path.name + ".json").write_text(json.dumps(side))


def tamper(source: Path, dest: Path, change) -> Path:
    """A copy of the archive `source` at `dest` with `change(relative name, bytes) -> bytes | None`
    applied to each member (None drops it), and a sidecar whose sha256 matches the copy: the
    attacker ships both, so only the archive's own check stands between it and torch."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            root, rel = info.filename.split("/", 1)
            data = change(rel, zin.read(info.filename))
            if data is not None:
                zout.writestr(info, data)
    side = sidecar(source)
    side["export"]["sha256"] = hashlib.sha256(dest.read_bytes()).hexdigest()
    write_sidecar(dest, side)
    return dest


def add_member(source: Path, dest: Path, rel: str, data: bytes) -> Path:
    tamper(source, dest, lambda name, old: old)
    with zipfile.ZipFile(source) as zin:
        root = zin.namelist()[0].split("/", 1)[0]
    with zipfile.ZipFile(dest, "a") as zout:
        zout.writestr(f"{root}/{rel}", data)
    side = sidecar(dest)
    side["export"]["sha256"] = hashlib.sha256(dest.read_bytes()).hexdigest()
    write_sidecar(dest, side)
    return dest


def evil_torch_file(marker: Path, wrap=lambda evil: ((evil,), {})) -> bytes:
    buffer = io.BytesIO()
    torch.save(wrap(Evil(marker)), buffer)
    return buffer.getvalue()


def edit_program(change):
    def edit(rel: str, data: bytes) -> bytes:
        if not rel.startswith("models/"):
            return data
        program = json.loads(data)
        change(program)
        return json.dumps(program).encode()

    return edit


# ---------------------------------------------------------------- 1. a .pt2 never runs its code


def test_own_exports_pass_the_archive_check(exports):
    from resnetlab.weights.pt2_check import check_program_archive

    check_program_archive(exports["pt2"])


def test_a_payload_in_the_example_inputs_is_refused_and_never_runs(exports, tmp_path, capsys):
    marker = tmp_path / "pwned"
    payload = evil_torch_file(marker)
    bad = tamper(
        exports["pt2"], tmp_path / "bad.pt2", lambda rel, d: payload if "sample_inputs" in rel else d
    )
    for argv in (["eval", str(bad), "--data", "fashion-mnist"], ["predict", str(bad), str(exports["image"])]):
        line = assert_one_line(capsys, *argv, match="is a pickle that needs code to load")
        assert "sample_inputs/model.pt" in line and "io.open" in line
    assert not marker.exists()


def test_a_payload_in_a_pickled_weight_is_refused(exports, tmp_path, capsys):
    marker = tmp_path / "pwned"
    payload = evil_torch_file(marker, wrap=lambda evil: evil)

    def pickle_weight_0(rel: str, data: bytes) -> bytes:
        if rel.endswith("_weights_config.json"):
            config = json.loads(data)
            for entry in config["config"].values():
                if entry["path_name"] == "weight_0":
                    entry["use_pickle"] = True
            return json.dumps(config).encode()
        return payload if rel == "data/weights/weight_0" else data

    bad = tamper(exports["pt2"], tmp_path / "bad.pt2", pickle_weight_0)
    assert_one_line(capsys, "predict", str(bad), str(exports["image"]), match="needs code to load")
    assert not marker.exists()


def test_python_in_a_shape_expression_is_refused(exports, tmp_path, capsys):
    marker = tmp_path / "pwned"
    code = f"__import__('pathlib').Path('{marker}').touch()"

    def inject(program: dict) -> None:
        sizes = program["graph_module"]["graph"]["tensor_values"]["x"]["sizes"]
        sizes[0]["as_expr"]["expr_str"] = code

    bad = tamper(exports["pt2"], tmp_path / "bad.pt2", edit_program(inject))
    assert_one_line(capsys, "predict", str(bad), str(exports["image"]), match="shape expression")
    assert not marker.exists()


@pytest.mark.parametrize(
    "expression, safe",
    [
        ("Symbol('s77', positive=True, integer=True)", True),  # what torch.export writes
        ("Mul(Integer(2), Symbol('s0', integer=True)) + 1", True),
        ("2*s0 + u3", True),
        ("__import__('os').system('true')", False),
        ("Symbol('s0').__class__", False),
        ("preview(s0)", False),  # a sympy name that runs LaTeX
        ("atan2(s0, s0)", False),  # not a name torch writes
        ("s0; import os", False),
    ],
)
def test_shape_expressions_pass_only_as_arithmetic_on_symbols(expression, safe):
    from resnetlab.weights.pt2_check import _safe_expression

    assert _safe_expression(expression) is safe


def test_a_program_nested_past_pythons_stack_is_one_line(exports, tmp_path, capsys):
    deep = b"[" * 200_000 + b"]" * 200_000
    bad = tamper(
        exports["pt2"], tmp_path / "deep.pt2", lambda rel, d: deep if rel.startswith("models/") else d
    )
    assert_one_line(capsys, "predict", str(bad), str(exports["image"]), match="is not JSON")


def test_guard_code_and_calls_outside_aten_are_refused(exports, tmp_path, capsys):
    def guard(program: dict) -> None:
        program["guards_code"] = ["__import__('os').getpid() > 0"]

    def call_os(program: dict) -> None:
        program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.serialization.os.system"

    for name, change, match in (("g.pt2", guard, "guard code"), ("o.pt2", call_os, "not an ATen op")):
        bad = tamper(exports["pt2"], tmp_path / name, edit_program(change))
        assert_one_line(capsys, "predict", str(bad), str(exports["image"]), match=match)


@pytest.mark.parametrize(
    "member",
    ["data/aotinductor/model/model.so", "data/constants/custom_obj_0", "serialized_exported_program.json"],
)
def test_members_a_program_of_tensors_does_not_have_are_refused(exports, tmp_path, capsys, member):
    bad = add_member(exports["pt2"], tmp_path / "bad.pt2", member, b"\x7fELF")
    assert_one_line(capsys, "predict", str(bad), str(exports["image"]), match=f"/{member}, which is not part")


# ---------------------------------------------------------------- 6. a damaged .pt2 is one line


def test_a_damaged_pt2_is_one_line_without_torchs_logged_traceback(exports, tmp_path, capsys):
    cut = tmp_path / "cut.pt2"
    data = exports["pt2"].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    side = sidecar(exports["pt2"])
    side["export"]["sha256"] = hashlib.sha256(cut.read_bytes()).hexdigest()
    write_sidecar(cut, side)
    assert_one_line(capsys, "predict", str(cut), str(exports["image"]), match="truncated or corrupt")
    # A whole zip that lacks the program: torch.export.load logs a traceback before it raises.
    hollow = tamper(
        exports["pt2"], tmp_path / "hollow.pt2", lambda rel, d: None if rel.startswith("models/") else d
    )
    assert_one_line(capsys, "predict", str(hollow), str(exports["image"]), match="cannot load")
    empty = tamper(
        exports["pt2"], tmp_path / "empty.pt2", lambda rel, d: b"{}" if rel.startswith("models/") else d
    )
    assert_one_line(capsys, "predict", str(empty), str(exports["image"]), match="cannot load")


# ---------------------------------------------------------------- 5. the sidecar is checked against the model


@pytest.mark.parametrize("key", ["onnx", "pt2"])
def test_a_class_list_of_the_wrong_length_is_refused_in_eval_and_predict(exports, tmp_path, capsys, key):
    for count, name in ((9, "short"), (11, "long")):
        path = tmp_path / f"{name}.{key}"
        path.write_bytes(exports[key].read_bytes())
        side = sidecar(exports[key])
        side["classes"] = [str(i) for i in range(count)]
        write_sidecar(path, side)
        for argv in (
            ["eval", str(path), "--data", "fashion-mnist"],
            ["predict", str(path), str(exports["image"])],
        ):
            assert_one_line(capsys, *argv, match=f"lists {count} class names for 10 classes")


@pytest.mark.parametrize("key", ["onnx", "pt2"])
def test_a_graph_that_disagrees_with_its_sidecar_names_both_numbers(exports, tmp_path, capsys, key):
    cases = {
        "in_chans": (1, "takes 3-channel images, but r.{key}.json says 1"),
        "image_size": (28, "takes 32x32px images, but r.{key}.json says 28x28px"),
        "num_classes": (1000, "gives 10 logits, but r.{key}.json says 1000 classes"),
    }
    for field, (value, message) in cases.items():
        path = tmp_path / f"r.{key}"
        path.write_bytes(exports[key].read_bytes())
        side = sidecar(exports[key])
        side[field] = value
        write_sidecar(path, side)
        assert_one_line(capsys, "predict", str(path), str(exports["image"]), match=message.format(key=key))


def test_an_onnx_with_another_input_name_and_runtime_errors_are_one_line(exports, tmp_path, capsys):
    path = tmp_path / "r.onnx"
    path.write_bytes(exports["onnx"].read_bytes())
    side = sidecar(exports["onnx"])
    side["export"]["input"] = "pixels"
    write_sidecar(path, side)
    assert_one_line(capsys, "predict", str(path), str(exports["image"]), match="takes input 'input'")
    model = OnnxModel(exports["onnx"])
    with pytest.raises(Error, match="ONNX Runtime failed running"):
        model(torch.zeros(2, 3, 16, 16))


# ---------------------------------------------------------------- 7. parity scales with the logits


class _Scaled(torch.nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(8, 1000)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.linear(x)


@torch.no_grad()  # as the exported runners are
def test_parity_is_relative_to_the_logits_spread():
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    for scale in (1e-3, 1.0, 1e4, 1e8, 1e30):  # 1e30: resnet1202's logits at random init
        eager = _Scaled(scale).eval()
        std = float(eager(x).std())

        def exported(part: torch.Tensor, eager=eager, std=std) -> torch.Tensor:
            return eager(part) + 3e-6 * std  # fp32 reordering measures ~2e-6 of the std

        parity = pipeline._parity(exported, eager, x, [16, 1])
        assert parity["within_tolerance"] and parity["top1_agreement_decided"] == 1.0, (scale, parity)

        def wrong(part: torch.Tensor, eager=eager) -> torch.Tensor:
            return eager(part) * 1.01  # a 1% error

        assert not pipeline._parity(wrong, eager, x, [16])["within_tolerance"], scale


@torch.no_grad()
def test_logits_that_overflow_must_overflow_the_same_way():
    # resnet1202 at random init gives NaN logits in eval mode: the same NaNs pass, others do not
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    eager = _Scaled(1.0).eval()

    def overflowing(part: torch.Tensor) -> torch.Tensor:
        logits = eager(part)
        logits[:, :3] = float("nan")
        return logits

    assert pipeline._parity(overflowing, overflowing, x, [4])["within_tolerance"]
    assert not pipeline._parity(eager, overflowing, x, [4])["within_tolerance"]


def test_resnet50_with_random_weights_exports(tmp_path, capsys):
    code, out, err = run(capsys, "export", "resnet50", "--format", "pt2", "--out", str(tmp_path / "r50.pt2"))
    assert code == 0, err
    assert "top-1 agreement 100.00%" in out and (tmp_path / "r50.pt2.json").is_file()


def _every_source() -> list[str]:
    from resnetlab.models import list_models
    from resnetlab.weights import list_weights

    image_models = [n for n in list_models() if "gpt" not in n]  # the GPTs read bytes: see below
    return [*image_models, *(e.name for e in list_weights() if e.shipped)]


def test_a_language_model_is_refused_by_export_in_one_line(tmp_path, capsys):
    argv = ["export", "gpt", "--out", str(tmp_path / "g.onnx")]
    assert_one_line(capsys, *argv, match="byte-level language model")


@pytest.mark.slow
@pytest.mark.parametrize("source", _every_source())
def test_every_registered_model_exports_to_onnx_with_random_and_trained_weights(tmp_path, capsys, source):
    code, out, err = run(capsys, "export", source, "--out", str(tmp_path / "m.onnx"))
    assert code == 0, err


def test_a_fold_with_one_bn_variance_off_by_1_percent_is_caught(tmp_path, capsys, monkeypatch):
    real_fold = pipeline.fold_bn

    def wrong_fold(model: torch.nn.Module) -> torch.nn.Module:
        model = copy.deepcopy(model)
        bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        bn.running_var.mul_(1.01)
        return real_fold(model)

    monkeypatch.setattr(pipeline, "fold_bn", wrong_fold)
    before = sorted(tmp_path.iterdir())
    line = assert_one_line(
        capsys,
        "export",
        "resnet20.fmnist",
        "--format",
        "pt2",
        "--out",
        str(tmp_path / "r.pt2"),
        match="does not match",
    )
    assert "nothing was written" in line and sorted(tmp_path.iterdir()) == before


# ---------------------------------------------------------------- 8. the pair appears together


def test_a_crash_between_the_renames_leaves_a_pair_that_is_refused(exports, tmp_path, capsys, monkeypatch):
    out = tmp_path / "r.pt2"
    out.write_bytes(exports["pt2"].read_bytes())
    write_sidecar(out, sidecar(exports["pt2"]))

    def crash(*args: object) -> None:
        raise KeyboardInterrupt  # killed after the model's rename, before the sidecar's

    monkeypatch.setattr(pipeline, "write_atomic", crash)
    with pytest.raises(KeyboardInterrupt), contextlib.redirect_stdout(io.StringIO()):
        export_model("resnet56", ExportOptions(format="pt2", out=out))
    monkeypatch.undo()
    assert_one_line(capsys, "predict", str(out), str(exports["image"]), match="describes another file")


def test_a_killed_exports_temporaries_are_removed_by_the_next(tmp_path):
    out = tmp_path / "r.onnx"
    leftovers = [
        tmp_path / ".r.onnx.tmp.onnx",
        tmp_path / ".r.onnx.tmp.onnx.data",
        tmp_path / ".r.onnx.json.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"half")
    with contextlib.redirect_stdout(io.StringIO()):
        export_model("resnet20", ExportOptions(format="onnx", out=out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.onnx", "r.onnx.json"]


# ---------------------------------------------------------------- 9. flags are checked before any work


def test_a_missing_calibration_set_fails_before_the_fp32_export(tmp_path, capsys, monkeypatch):
    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("the fp32 export ran before the flags were checked")

    monkeypatch.setattr("resnetlab.export.onnx_export.export_onnx", no_export)
    assert_one_line(
        capsys,
        "export", "resnet20.fmnist", "--int8", "--calibration-data", "nosuch",
        "--out", str(tmp_path / "q.onnx"), match="unknown data set 'nosuch'",
    )  # fmt: skip
    assert list(tmp_path.iterdir()) == []
