"""Deployment: fold_bn, ONNX/.pt2 export with verified parity, int8 on real Fashion-MNIST, eval and
predict on exported files, and every error path of `resnetlab export` leaving nothing behind."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image
from torch import nn

from resnetlab import create_model
from resnetlab.cli import main
from resnetlab.data import load_dataset
from resnetlab.export import count_bn, fold_bn
from resnetlab.export.onnx_export import export_onnx
from resnetlab.models import ResNet, ResNetOptions
from resnetlab.models.blocks import Bottleneck
from resnetlab.weights.exported import OnnxModel

pytestmark = pytest.mark.xdist_group("export")  # one worker: the exporter's warm-up is paid once

TINY_RUN = [
    "--model", "cifar_resnet", "--model-kwargs", "depth=8", "--train-subset", "4096", "--val-size", "500",
    "--eval-splits", "val", "--batch-size", "128", "--epochs", "3", "--ema-decay", "0.9", "--no-progress",
    "--amp", "none",  # bf16 is emulated, 7.6x slower, on CPUs without AVX512-BF16
]  # fmt: skip


def _small_imagenet(**options: object) -> nn.Module:
    # An ImageNet bottleneck net at one block per stage: the same stem, blocks and shortcuts.
    return ResNet(
        Bottleneck,
        [1, 1, 1, 1],
        widths=[64, 128, 256, 512],
        family="imagenet",
        options=ResNetOptions(**options),
    )


FAMILIES = {
    "cifar-basic-A": (lambda: create_model("cifar_resnet", depth=8), 32),
    "imagenet-basic": (lambda: create_model("resnet18"), 64),
    "imagenet-bottleneck": (_small_imagenet, 64),
    "resnext-32x4d": (lambda: _small_imagenet(groups=32, base_width=4), 64),
    "resnet-d": (lambda: _small_imagenet(stem="deep", avg_down=True), 64),
    "preact": (lambda: create_model("cifar_resnet", depth=8, preact=True, shortcut="B"), 32),
    "wide": (lambda: create_model("cifar_resnet", depth=14, width=2, preact=True, shortcut="B"), 32),
    "preact-bottleneck": (lambda: create_model("cifar_resnet", depth=11, preact=True, bottleneck=True), 32),
}


def randomised_bn(model: nn.Module) -> nn.Module:
    """Non-trivial statistics and affine terms, so folding and export have something to get wrong."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own errors (a bad choice) exit from parse_args
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- fold_bn


@pytest.mark.parametrize(
    "family", ["cifar-basic-A", "imagenet-bottleneck", "resnet-d", "preact", "preact-bottleneck"]
)
def test_fold_bn_matches_eval_mode_and_leaves_only_the_preactivation_bns(family):
    build, size = FAMILIES[family]
    model = randomised_bn(build())
    folded = fold_bn(model)
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
    before = count_bn(model)
    if model.preact:
        # One BN per unit reads the block input (the sum of two paths), plus the final BN [He16].
        assert count_bn(folded) == len(model.blocks()) + 1
    else:
        assert count_bn(folded) == 0
        assert all(m.bias is not None for m in folded.modules() if isinstance(m, nn.Conv2d))
    assert count_bn(model) == before > count_bn(folded)  # the original is untouched


def test_fold_bn_keeps_groupnorm_and_frozen_bn_folds():
    gn = randomised_bn(create_model("cifar_resnet", depth=8, norm="gn"))
    assert fold_bn(gn).state_dict().keys() == gn.state_dict().keys()
    frozen = create_model("cifar_resnet", depth=8, norm="frozen_bn").eval()
    with torch.no_grad():
        for m in frozen.modules():
            if hasattr(m, "running_var"):
                m.running_var.uniform_(0.5, 2.0)
    folded = fold_bn(frozen)
    x = torch.randn(2, 3, 16, 16)
    assert count_bn(folded) == 0
    torch.testing.assert_close(folded(x), frozen(x), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- ONNX parity, every family


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_export_at_batch_2_runs_at_batch_1_and_7_like_eager(family, tmp_path):
    build, size = FAMILIES[family]
    model = randomised_bn(build())
    path = tmp_path / "m.onnx"
    facts = export_onnx(fold_bn(model), torch.randn(2, 3, size, size), path, dynamic=True)
    assert facts["opset"] >= 18
    runner = OnnxModel(path, threads=1)
    assert runner.batch is None  # the batch axis stayed symbolic
    for batch in (1, 7):
        x = torch.randn(batch, 3, size, size)
        with torch.no_grad():
            ref = model(x)
        out = runner(x)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4)  # torchvision's rtol [REFERENCE.md]
        assert torch.equal(out.argmax(1), ref.argmax(1))


def test_a_fixed_batch_graph_runs_other_batch_sizes_in_padded_chunks(tmp_path):
    model = randomised_bn(create_model("cifar_resnet", depth=8))
    path = tmp_path / "m.onnx"
    export_onnx(model, torch.randn(4, 3, 32, 32), path, dynamic=False)
    runner = OnnxModel(path, threads=1)
    assert runner.batch == 4
    x = torch.randn(7, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(runner(x), model(x), rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------- the CLI on a trained model


# Session scope: pytest-xdist may run other modules between these tests on the same worker, which
# would tear a module-scoped fixture down and make (train, export) again.
@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A small net trained on real Fashion-MNIST (4,096 images, 3 epochs) through the CLI."""
    run_dir = tmp_path_factory.mktemp("export") / "run"
    assert main(["train", *TINY_RUN, "--out", str(run_dir)]) == 0
    return run_dir


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory):
    """fp32 ONNX, int8 ONNX and .pt2 of the trained run, with what the export printed."""
    folder = tmp_path_factory.mktemp("exported")
    files, logs = {}, {}
    for key, extra in (("onnx", []), ("int8", ["--int8", "--calibration-images", "256"]), ("pt2", [])):
        files[key] = folder / ("r.pt2" if key == "pt2" else f"r-{key}.onnx")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(["export", str(trained), "--out", str(files[key]), *extra]) == 0
        logs[key] = printed.getvalue()
    return files, logs


def test_export_prints_parity_and_writes_a_sidecar(exported, trained):
    files, logs = exported
    assert re.search(
        r"parity on 256 fashion-mnist test images, batch 256, 1, 7: max \|diff\| \S+ \(tolerance \S+\), "
        r"top-1 agreement 100.00%",
        logs["onnx"],
    )
    assert "fold_bn: 7 -> 0 batch-norm layers" in logs["onnx"]
    side = json.loads((files["onnx"].parent / "r-onnx.onnx.json").read_text())
    assert side["model"] == "cifar_resnet" and side["classes"][0] == "T-shirt/top" and side["in_chans"] == 1
    ex = side["export"]
    assert ex["format"] == "onnx" and ex["batch"] == "dynamic" and ex["fold_bn"] is True
    assert re.fullmatch(r"[0-9a-f]{64}", ex["source_sha256"]) and ex["versions"]["onnxruntime"]
    assert ex["parity"]["within_tolerance"] and ex["parity"]["top1_agreement"] == 1.0
    assert ex["parity"]["max_abs_diff"] < 1e-3
    assert re.search(r"parity on .* top-1 agreement 100.00%", logs["pt2"])
    # The .pt2 loads with torch alone and computes the same logits as the run.
    program = torch.export.load(str(files["pt2"])).module()
    from resnetlab.weights import load

    model, _ = load(trained)
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x), rtol=1e-3, atol=1e-4)


INT8_LINE = re.compile(r"accuracy on fashion-mnist test \(10,000 images\): fp32 ([\d.]+)%, int8 ([\d.]+)%")


def test_int8_accuracy_is_measured_on_the_real_test_split(exported):
    files, logs = exported
    line = INT8_LINE.search(logs["int8"])
    assert line, logs["int8"]
    fp32, int8 = map(float, line.groups())
    assert fp32 > 65  # a trained net, not chance (10%)
    # This 3-epoch net on 4,096 images is far from converged, which makes it touchier than a
    # trained one: here we hold it to the export's own refusal bound (1 point); the 0.3-point
    # bound of a trained resnet20 is the slow test below.
    assert abs(fp32 - int8) <= 1.0
    acc = json.loads((files["int8"].parent / "r-int8.onnx.json").read_text())["export"]["accuracy"]
    assert acc["images"] == 10_000 and round(100 * acc["int8"], 2) == int8
    assert files["int8"].stat().st_size < 0.5 * files["onnx"].stat().st_size  # int8 weights


def _shipped(tag: str) -> bool:
    from resnetlab.weights import list_weights

    return any(entry.shipped for entry in list_weights(tag))


@pytest.mark.slow
@pytest.mark.skipif(not _shipped("resnet20.fmnist"), reason="resnet20.fmnist is not shipped in this checkout")
def test_int8_of_the_shipped_resnet20_is_within_0_3_points_of_fp32(capsys, tmp_path):
    code, out, err = run(capsys, "export", "resnet20.fmnist", "--int8", "--out", str(tmp_path / "r20.onnx"))
    assert code == 0, err
    fp32, int8 = map(float, INT8_LINE.search(out).groups())
    assert fp32 > 90 and abs(fp32 - int8) <= 0.3


@pytest.fixture(scope="session")
def run_eval(trained, tmp_path_factory):
    """`resnetlab eval RUN_DIR --split val` (500 held-out training images): what the files must match."""
    figure = tmp_path_factory.mktemp("eval") / "c.png"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        # --amp none: the exported files are the fp32 model, so compare with it in fp32 (by default
        # eval repeats the run's own autocast)
        assert main(["eval", str(trained), "--split", "val", "--amp", "none", "--figure", str(figure)]) == 0
    return printed.getvalue()


@pytest.mark.parametrize("key", ["onnx", "int8", "pt2"])
def test_eval_of_an_exported_file_matches_the_run(exported, run_eval, capsys, key):
    files, _ = exported
    run_out = run_eval
    code, out, err = run(capsys, "eval", str(files[key]), "--split", "val")
    assert code == 0, err
    assert not (files[key].parent / "confusion-val.png").exists()  # not a run: no figure unasked
    headline = re.compile(r"top-1 error ([\d.]+)%")
    run_err, file_err = (float(headline.search(text).group(1)) for text in (run_out, out))
    if key == "int8":
        assert abs(run_err - file_err) <= 1.0  # 500 images: one image is 0.2 points
    else:
        assert run_err == file_err
        assert out.split("\n\n")[1] == run_out.split("\n\n")[1]  # the per-class table too


def test_predict_on_an_exported_file_matches_the_run(exported, trained, capsys, tmp_path):
    files, _ = exported
    test = load_dataset("fashion-mnist", "test")
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(test.images[i, 0].numpy()).save(paths[-1])
    _, want, _ = run(capsys, "predict", str(trained), *map(str, paths), "--top-k", "2")
    for key in ("onnx", "pt2"):
        code, got, err = run(capsys, "predict", str(files[key]), *map(str, paths), "--top-k", "2")
        assert code == 0, err
        assert got == want
    code, got, _ = run(capsys, "predict", str(files["int8"]), *map(str, paths), "--top-k", "1")
    assert [line.split(": ")[1].rsplit(" ", 1)[0] for line in got.splitlines()] == [
        line.split(": ")[1].split(",")[0].rsplit(" ", 1)[0] for line in want.splitlines()
    ]


# ---------------------------------------------------------------- error paths: one line, exit 2, nothing left


def assert_refused(capsys, folder, *argv: str, match: str) -> None:
    before = sorted(p.name for p in folder.iterdir())
    code, out, err = run(capsys, "export", *argv)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and re.search(match, err), err
    assert sorted(p.name for p in folder.iterdir()) == before  # no file, no sidecar, no temporary


def test_export_errors(capsys, tmp_path, trained):
    out = tmp_path / "m.onnx"
    assert_refused(
        capsys, tmp_path, str(trained), "--format", "tflite", "--out", str(out), match="invalid choice"
    )
    assert_refused(
        capsys, tmp_path, str(trained), "--out", str(tmp_path / "m.bin"), match="give a .onnx or .pt2"
    )
    assert_refused(
        capsys, tmp_path, str(trained), "--format", "pt2", "--out", str(out), match="must end in .pt2"
    )
    assert_refused(
        capsys, tmp_path, str(trained), "--out", str(tmp_path / "no" / "m.onnx"), match="does not exist"
    )
    assert_refused(
        capsys, tmp_path, "/dev/null", "--out", str(out), match="not a readable safetensors|resnetlab"
    )
    assert_refused(capsys, tmp_path, str(tmp_path / "missing"), "--out", str(out), match="does not exist")
    assert_refused(capsys, tmp_path, "resnet20", "--int8", "--out", str(out), match="--calibration-data")
    assert_refused(
        capsys,
        tmp_path,
        str(trained),
        "--int8",
        "--format",
        "pt2",
        "--out",
        str(tmp_path / "m.pt2"),
        match="--format onnx",
    )
    assert_refused(
        capsys, tmp_path, str(trained), "--batch", "0", "--out", str(out), match="positive integer"
    )
    # A damaged checkpoint: the weights file cut in half.
    broken = tmp_path / "broken.safetensors"
    data = sorted(trained.glob("checkpoint-*/ema.safetensors"))[-1].read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    assert_refused(capsys, tmp_path, str(broken), "--out", str(out), match="truncated or corrupt")


def test_export_refuses_what_the_exporter_cannot_handle_and_a_failed_parity(
    capsys, tmp_path, trained, monkeypatch
):
    def unsupported(*args, **kwargs):
        raise RuntimeError("aten::weird_op is not supported\nlong traceback")

    with monkeypatch.context() as m:
        m.setattr(torch.onnx, "export", unsupported)
        assert_refused(
            capsys,
            tmp_path,
            str(trained),
            "--out",
            str(tmp_path / "m.onnx"),
            match="cannot export this model: aten::weird_op",
        )
    import resnetlab.export.pipeline as pipeline

    monkeypatch.setattr(pipeline, "PARITY_REL", 0.0)
    monkeypatch.setattr(pipeline, "PARITY_FLOOR", 0.0)
    assert_refused(
        capsys,
        tmp_path,
        str(trained),
        "--format",
        "pt2",
        "--out",
        str(tmp_path / "m.pt2"),
        match="does not match eager",
    )


def test_a_missing_extra_is_one_line_saying_what_to_install(capsys, tmp_path, monkeypatch):
    import importlib

    import resnetlab.weights.exported as runtime

    real = importlib.import_module

    def without_onnx(name, *args):
        if name.split(".")[0] in ("onnx", "onnxruntime", "onnxscript"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(runtime.importlib, "import_module", without_onnx)
    assert_refused(
        capsys,
        tmp_path,
        "resnet20",
        "--out",
        str(tmp_path / "m.onnx"),
        match=r'pip install "resnetlab\[export\]"',
    )


def test_import_resnetlab_never_imports_the_export_extra():
    code = (
        "import sys, resnetlab, resnetlab.export, resnetlab.cli; resnetlab.cli.build_parser(); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'onnxscript')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
