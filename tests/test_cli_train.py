"""`resnetlab train`, `eval` and `predict` as a user runs them, on real Fashion-MNIST."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from resnetlab.cli import build_parser, main
from resnetlab.data import load_dataset, make_loader
from resnetlab.train import TrainConfig, get_recipe
from resnetlab.train.commands import config_from_args
from resnetlab.train.rundir import read_metrics
from resnetlab.weights import load
from resnetlab.weights.checkpoint import MODEL_FILE, STATE_FILE, latest_checkpoint

TINY_FLAGS = [
    "--model", "cifar_resnet", "--model-kwargs", "depth=8", "--train-subset", "1024", "--val-size", "500",
    "--eval-splits", "val", "--batch-size", "64", "--epochs", "1", "--ema-decay", "0.9",
]  # fmt: skip


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run made through the CLI, shared by the eval, predict and error-path tests."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY_FLAGS, "--out", str(run_dir)]) == 0
    return run_dir


def test_train_writes_a_run_and_reports(trained, capsys):
    assert (trained / "config.json").is_file() and (trained / "curves.png").is_file()
    assert latest_checkpoint(trained).name == "checkpoint-00000016"
    assert read_metrics(trained)[-1]["kind"] == "eval"
    # a finished run resumes to the same place and writes nothing new
    code, out, _ = run(capsys, "train", "--resume", str(trained), "--no-progress")
    assert code == 0 and "final: val accuracy" in out and "min from process start" in out
    assert latest_checkpoint(trained).name == "checkpoint-00000016"


def test_eval_reports_errors_per_class_and_draws_the_confusion_matrix(trained, capsys):
    code, out, _ = run(capsys, "eval", str(trained), "--split", "val", "--tta", "none")
    assert code == 0
    assert "fashion-mnist val (500 images): top-1 error" in out
    for name in load_dataset("fashion-mnist", "test").classes:
        assert name in out
    png = trained / "confusion-val.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    weights = latest_checkpoint(trained) / MODEL_FILE  # a bare weights file works too
    code, out, _ = run(capsys, "eval", str(weights), "--split", "val", "--figure", str(trained / "c.png"))
    assert code == 0 and (trained / "c.png").is_file()
    code, out, _ = run(capsys, "eval", str(trained), "--split", "val", "--tta", "flip")
    assert code == 0 and "fashion-mnist val (500 images, flip TTA): top-1 error" in out
    assert "without test-time augmentation (one view): top-1 error" in out


def test_eval_scores_with_the_runs_own_test_time_augmentation_by_default(tmp_path, capsys):
    run_dir = tmp_path / "speedrun"
    flags = [*TINY_FLAGS, "--val-size", "500", "--eval-splits", "val", "--out", str(run_dir)]
    code, out, _ = run(capsys, "train", "--recipe", "speedrun", *flags)
    records = read_metrics(run_dir)
    final, acc, one_view = records[-1], 100 * (1 - records[-1]["err"]), 100 * (1 - records[-1]["single_err"])
    assert code == 0 and [r["kind"] for r in records].count("eval") == 1 and final["kind"] == "eval"
    summary = f"val accuracy {acc:.2f}% (flip TTA; one view {one_view:.2f}%)"
    assert f"final: {summary}" in out and "min from process start" in out
    code, out, _ = run(capsys, "eval", str(run_dir), "--split", "val")  # speedrun scores flip TTA
    assert code == 0 and "fashion-mnist val (500 images, flip TTA): top-1 error" in out
    assert f"top-1 error {100 * final['err']:.2f}%" in out
    assert f"without test-time augmentation (one view): top-1 error {100 * final['single_err']:.2f}%" in out


def test_predict_matches_the_model_on_the_same_pixels(trained, capsys, tmp_path):
    test = load_dataset("fashion-mnist", "test")
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(test.images[i, 0].numpy()).save(paths[-1])
    code, out, _ = run(capsys, "predict", str(trained), *map(str, paths), "--top-k", "3")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 3 and all(line.count("%") == 3 for line in lines)
    # the same images through the evaluation pipeline give the same top class and probability
    model, _ = load(trained)
    x, _ = next(iter(make_loader(test, batch_size=3, train=False, device="cpu")))
    probs = model(x).softmax(1).detach()
    for line, p in zip(lines, probs, strict=True):
        best = int(p.argmax())
        assert line.split(": ", 1)[1].startswith(f"{test.classes[best]} {100 * float(p[best]):.1f}%")


def test_help_lists_every_config_field_and_the_recipes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for field in dataclasses.fields(TrainConfig):
        assert "--" + field.name.replace("_", "-") in out, field.name
    for recipe in ("paper-cifar", "paper-imagenet", "fast", "fast-long"):
        assert recipe in out


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", *argv])


def test_flags_override_the_recipe_and_nothing_else():
    cfg, resume = config_from_args(
        _parse(
            "--recipe",
            "paper-cifar",
            "--lr",
            "0.05",
            "--milestones",
            "0.3,0.6",
            "--no-flip",
            "--model-kwargs",
            "norm=none,zero_init_residual=true,drop_path_rate=0.1",
            "--max-steps",
            "none",
            "--out",
            "none",
        )  # fmt: skip
    )
    recipe = get_recipe("paper-cifar")
    assert not resume and cfg.out is None
    assert (cfg.lr, cfg.milestones, cfg.flip, cfg.max_steps) == (0.05, (0.3, 0.6), False, None)
    assert cfg.model_kwargs == {"norm": "none", "zero_init_residual": True, "drop_path_rate": 0.1}
    changed = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(recipe, f.name)}
    assert changed == {"lr", "milestones", "flip", "model_kwargs", "max_steps"}
    default, _ = config_from_args(_parse("--model", "resnet56"))
    assert default.out.startswith("runs/resnet56-fashion-mnist-") and default.lr == get_recipe("fast").lr


def _one_line_error(code: int, err: str, fragment: str) -> None:
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("resnetlab") and "error:" in err, err
    assert fragment in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--model", "resnet21"], "unknown model 'resnet21'; did you mean"),
        (["train", "--data", "imagefolder:/no/such/folder", "--model", "resnet20"], "/no/such/folder/train"),
        (["train", "--data-dir", "/no/such/dir"], "--data-dir /no/such/dir is not a directory"),
        (["train", "--deterministic", "--compile"], "contradict"),
        (["train", "--amp", "fp16", "--device", "cpu"], "--amp fp16 needs CUDA"),
        (["train", "--lr", "fast"], "argument --lr: expected FLOAT, got 'fast'"),
        (["train", "--amp", "fp8"], "argument --amp: invalid choice"),
        (["train", "--model-kwargs", "depth"], "expected KEY=VALUE"),
        (["train", "--recipe", "fastest"], "invalid choice: 'fastest'"),
        (["train", "--resume", "/no/such/run"], "no such run directory"),
        (["eval", "/no/such/run"], "/no/such/run does not exist"),
        (["predict", "/no/such/run", "x.png"], "/no/such/run does not exist"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code, _, err = run(capsys, *argv)
    except SystemExit as exc:  # argparse's own errors exit from inside parse_args
        code, err = exc.code, capsys.readouterr().err
    _one_line_error(code, err, fragment)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_errors_on_an_existing_run(trained, capsys, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}

    _one_line_error(*run(capsys, "train", *TINY_FLAGS, "--out", str(copy))[::2], "pass --overwrite")
    _one_line_error(*run(capsys, "train", "--resume", str(copy), "--lr", "0.2")[::2], "drop --lr")
    _one_line_error(*run(capsys, "train", "--resume", str(copy), "--overwrite")[::2], "contradict")
    _one_line_error(*run(capsys, "train", "--resume", str(copy), "--recipe", "fast")[::2], "drop --recipe")
    _one_line_error(*run(capsys, "predict", str(copy), str(tmp_path / "none.png"))[::2], "no image at")
    (tmp_path / "text.png").write_text("not an image")
    _one_line_error(*run(capsys, "predict", str(copy), str(tmp_path / "text.png"))[::2], "cannot read image")
    assert before == {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}  # nothing was touched

    checkpoint = latest_checkpoint(copy)
    (checkpoint / STATE_FILE).write_bytes(b"PK\x03\x04 truncated")
    _one_line_error(
        *run(capsys, "train", "--resume", str(copy))[::2], "corrupt or not a resnetlab train state"
    )
    (checkpoint / MODEL_FILE).write_bytes(b"\x10\x00\x00\x00")
    for ema in checkpoint.glob("ema.*"):
        ema.unlink()
    _one_line_error(*run(capsys, "eval", str(copy))[::2], "not a readable safetensors file")

    again = [*TINY_FLAGS, "--train-subset", "128", "--out", str(copy), "--overwrite"]
    code, _, _ = run(capsys, "train", *again)
    assert code == 0 and latest_checkpoint(copy).name == "checkpoint-00000002"


def test_the_installed_entry_point_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "resnetlab", "train", "--model", "resnet21", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    _one_line_error(proc.returncode, proc.stderr, "unknown model 'resnet21'")
    assert not (tmp_path / "r").exists()
