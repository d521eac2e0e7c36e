"""`export_model`: source -> (BN folded) -> exported file (-> int8) -> verified -> kept.

Every flag, the source and the data are checked before any export work. Every export checks
itself before it is kept: the exported file runs (ONNX Runtime for .onnx, the loaded program for
.pt2) on real images of the model's data set and is compared with the eager model. fp32 must be
within `PARITY_REL` of the eager logits' spread (their std over the verification batch) and
agree on every top-1 that such a difference cannot flip; int8 is judged by its test accuracy
against fp32's. The file is written under a temporary name and renamed into place only after
that, then its sidecar (which holds the file's sha256, so a pair from two exports is refused
when it is opened); a failed export leaves nothing behind, and a killed one's temporaries are
removed by the next export to the same name.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from resnetlab.atomic import fsync_dir, write_atomic
from resnetlab.data import ImageArrays, load_dataset, make_loader
from resnetlab.errors import Error
from resnetlab.export.fold import count_bn, fold_bn
from resnetlab.models import create_model, list_models
from resnetlab.models.gpt import LANGUAGE_MODELS
from resnetlab.weights import Preprocessing, load
from resnetlab.weights.cache import sha256sum
from resnetlab.weights.exported import OnnxModel, ProgramModel, is_exported, require_extra
from resnetlab.weights.sidecar import sidecar_bytes, sidecar_path

FORMATS = {"onnx": ".onnx", "pt2": ".pt2"}
# Allowed max |exported - eager| as a fraction of the eager logits' std. An absolute bound
# ignores scale: fp32 reordering measures 2.0-2.1e-6 of the std at every depth (resnet18
# 3.2e-6 of 1.6, resnet50 5.1e-5 of 25, resnet152 84 of 3.9e7 at random init), so 1e-4 leaves
# 50x headroom, while one BN's variance off by 1% in the fold is caught.
PARITY_REL = 1e-4
PARITY_FLOOR = 1e-6  # absolute, for logits with no spread
INT8_MAX_DROP = 1.0  # top-1 points int8 may lose against fp32 on the test split before we refuse
# Random-weight models (for timing) have no data set; they get these inputs and statistics.
_IMAGENET = {
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "image_size": 224,
    "resize_size": 256,
}
_CIFAR = {"mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 32, "resize_size": 32}


@dataclass
class ExportOptions:
    format: str  # "onnx" or "pt2"
    out: str | Path  # the exported file; its sidecar is OUT.json
    int8: bool = False  # post-training static quantisation (ONNX Runtime QDQ), onnx only
    calibration_data: str | None = None  # data set for calibration; default: the model's own
    calibration_images: int = 512  # training images the int8 ranges are measured on
    batch: int | None = None  # fixed batch size of the exported graph; None = dynamic
    fold_bn: bool = True  # fold each conv -> BN pair before exporting
    verify_images: int = 256  # test images the exported file is compared with eager on
    data_dir: str | None = None  # where the data set files are


@dataclass
class ExportReport:
    path: Path
    sidecar: Path
    export: dict[str, Any] = field(default_factory=dict)  # what the sidecar's "export" block holds


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def load_source(
    source: str, device: str = "cpu"
) -> tuple[nn.Module, Preprocessing, dict[str, Any], Path | None]:
    """(eager model in eval mode, its preprocessing, its metadata, the weights file or None) for
    any SOURCE `weights.load` takes, or a registered model name (random weights, for timing)."""
    if is_exported(source):
        raise Error(f"{source} is already an exported file; export the run or weights it came from")
    if not Path(source).exists() and source in list_models():
        if source in LANGUAGE_MODELS:
            raise Error(f"{source} is a byte-level language model; export takes image classifiers")
        torch.manual_seed(0)
        model = create_model(source).eval()
        family = getattr(model, "family", "imagenet")
        defaults = _IMAGENET if family == "imagenet" else _CIFAR
        if family == "mlp":  # a fixed input size: the one it was built for
            defaults = {**_CIFAR, "image_size": model.image_size, "resize_size": model.image_size}
        preprocessing = Preprocessing(
            **{k: v[: model.in_chans] if isinstance(v, list) else v for k, v in defaults.items()},
            in_chans=model.in_chans,
            classes=tuple(str(i) for i in range(model.num_classes)),
        )
        meta = {
            "model": source,
            "model_kwargs": {},
            "num_classes": model.num_classes,
            **preprocessing.meta(),
            "data": None,
            "tag": None,
            "source": None,
        }
        return model, preprocessing, meta, None
    model, preprocessing = load(source, device=device)
    meta = {**model.pretrained_cfg, **preprocessing.meta()}
    local = Path(meta.get("source") or "")
    return model, preprocessing, meta, local if local.is_file() else None


def _images(
    preprocessing: Preprocessing,
    meta: dict[str, Any],
    data: str,
    split: str,
    count: int,
    data_dir: str | None,
) -> Tensor:
    """`count` images of `split` (training images drawn at random by the run's seed; test images
    in order), fed as the model's evaluation inputs: (count, C, S, S) float."""
    x, _ = _images_and_labels(preprocessing, meta, data, split, count, data_dir)
    return x


def _images_and_labels(
    preprocessing: Preprocessing,
    meta: dict[str, Any],
    data: str,
    split: str,
    count: int | None,
    data_dir: str | None,
) -> tuple[Tensor, Tensor]:
    seed = meta.get("seed", 0)
    dataset = load_dataset(data, split, data_dir=data_dir, val_size=meta.get("val_size", 0), seed=seed)
    # The model's own normalisation (and a folder's crop), whatever data set --calibration-data names.
    dataset = preprocessing.feed(dataset) if dataset.in_chans == preprocessing.in_chans else dataset
    if dataset.in_chans != preprocessing.in_chans or dataset.image_size != preprocessing.image_size:
        raise Error(
            f"{data} has {dataset.in_chans}x{dataset.image_size}px images, but {meta['model']} takes "
            f"{preprocessing.in_chans}x{preprocessing.image_size}px; pick a matching data set"
        )
    if count is not None and count < len(dataset) and isinstance(dataset, ImageArrays):
        if split == "train":
            index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
        else:
            index = torch.arange(count)
        dataset = dataset.subset(index)
    xs, ys, seen = [], [], 0
    for batch in make_loader(dataset, batch_size=256, train=False, device="cpu"):
        xs.append(batch[0])  # a folder's batches also carry the file paths
        ys.append(batch[1])
        seen += len(batch[1])
        if count is not None and seen >= count:  # a folder is read in order, only as far as needed
            break
    return torch.cat(xs)[:count], torch.cat(ys)[:count]


def _parity(runner: nn.Module, eager: nn.Module, x: Tensor, sizes: list[int]) -> dict[str, Any]:
    """Max |exported - eager| over logits against the tolerance (`PARITY_REL` of the eager
    logits' std), top-1 agreement, and the agreement on the images whose eager top-2 margin is
    over twice the tolerance (where a difference within it cannot flip the top-1), with `x` run
    in batches of each size of `sizes`."""
    with torch.inference_mode():
        ref = eager(x)
    # Random weights of the deepest nets (resnet1202, preact_resnet1001) overflow in eval mode to
    # inf/NaN logits: those must come out the same, and the rest is compared in float64.
    ref64 = ref.double()
    finite = torch.isfinite(ref64)
    spread = float(ref64[finite].std()) if int(finite.sum()) > 1 else 0.0
    tolerance = max(PARITY_REL * spread, PARITY_FLOOR)
    top2 = ref.topk(min(2, ref.shape[1]), dim=1).values
    decided = (
        (top2[:, 0] - top2[:, -1]) > 2 * tolerance
        if ref.shape[1] > 1
        else torch.ones(len(ref), dtype=torch.bool)
    )
    worst, agree, agree_decided = 0.0, 1.0, 1.0
    for size in sizes:
        out = torch.cat([runner(part) for part in torch.split(x, size)])
        out64 = out.double()
        same_overflow = bool(((out64 == ref64) | (out64.isnan() & ref64.isnan()))[~finite].all())
        diff = (out64 - ref64).abs()[finite]
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0, 0.0 if same_overflow else math.inf)
        same = out.argmax(1) == ref.argmax(1)
        agree = min(agree, float(same.float().mean()))
        agree_decided = min(agree_decided, float(same[decided].float().mean()) if decided.any() else 1.0)
    return {
        "max_abs_diff": worst,
        "tolerance": tolerance,
        "within_tolerance": worst <= tolerance,
        "top1_agreement": agree,
        "top1_agreement_decided": agree_decided,
        "non_finite_logits": int((~finite).sum()),
        "batch_sizes": sizes,
    }


@torch.inference_mode()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 500) -> float:
    hits = sum(
        int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(batch), y.split(batch), strict=True)
    )
    return hits / len(y)


@contextlib.contextmanager
def _temporary(path: Path) -> Iterator[Path]:
    """A hidden temporary name next to `path`, removed on the way out whatever happens."""
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        yield tmp
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".data")):
            leftover.unlink(missing_ok=True)


def _check_out(out: Path, fmt: str) -> None:
    if out.suffix != FORMATS[fmt]:
        raise Error(f"--out {out}: a {fmt} file must end in {FORMATS[fmt]}")
    if out.is_dir():
        raise Error(f"--out {out} is a directory; give a file name ending in {FORMATS[fmt]}")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise Error(f"--out {out}: folder {folder} does not exist")
    probe = folder / f".{out.name}.probe"
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise Error(f"--out {out}: cannot write in {folder} ({exc.strerror})") from None


def _remove_leftovers(out: Path) -> None:
    """Delete the temporaries a killed export to `out` left (the names `_temporary` and
    `write_atomic` use), so they do not pile up as hidden files beside it."""
    fp32 = out.with_name(out.stem + ".fp32" + out.suffix)
    patterns = (f".{out.name}.tmp*", f".{fp32.name}.tmp*", f".{sidecar_path(out).name}.*tmp")
    for pattern in patterns:
        for leftover in out.parent.glob(pattern):
            leftover.unlink(missing_ok=True)


def export_model(
    source: str | Path, options: ExportOptions, log: Callable[[str], None] = print
) -> ExportReport:
    """Export `source` as `options` says, verify the file, then keep it with its sidecar.
    Every flag, the source and every data set it names are checked before the export starts."""
    o = options
    if o.format not in FORMATS:
        raise Error(f"unknown format {o.format!r}; choose onnx or pt2")
    out = Path(o.out)
    _check_out(out, o.format)
    if o.batch is not None and o.batch < 1:
        raise Error("--batch must be a positive integer or 'dynamic'")
    if o.int8 and o.format != "onnx":
        raise Error("--int8 quantises with ONNX Runtime; use it with --format onnx")
    if o.int8 and o.calibration_images < 1:
        raise Error("--calibration-images must be at least 1")
    if o.verify_images < 1:
        raise Error("verify_images must be at least 1")
    if o.format == "onnx":
        for name in ("onnx", "onnxruntime", "onnxscript"):
            require_extra(name)

    eager, preprocessing, meta, weights = load_source(str(source))
    data = meta.get("data")
    calibration_data = o.calibration_data or data
    if o.int8 and not calibration_data:
        raise Error(
            f"--int8 needs calibration images and {source} has no data set of its own; "
            "give --calibration-data DATA"
        )
    shape = (preprocessing.in_chans, preprocessing.image_size, preprocessing.image_size)
    if data:
        x_test, y_test = _images_and_labels(preprocessing, meta, data, "test", None, o.data_dir)
        verify, verify_from = (
            x_test[: o.verify_images],
            f"{min(o.verify_images, len(x_test))} {data} test images",
        )
    else:
        x_test = y_test = None
        verify = torch.randn((16, *shape), generator=torch.Generator().manual_seed(0))
        verify_from = f"16 random inputs ({source} has no data set)"
    calib = None
    if o.int8:  # read before the fp32 export, so a bad --calibration-data fails at once
        calib = _images(preprocessing, meta, calibration_data, "train", o.calibration_images, o.data_dir)
    _remove_leftovers(out)

    model = fold_bn(eager) if o.fold_bn else eager
    if o.fold_bn:
        log(f"fold_bn: {count_bn(eager)} -> {count_bn(model)} batch-norm layers")
    dynamic = o.batch is None
    example = verify[:2] if dynamic else verify[:1].expand(o.batch, *shape).contiguous()
    facts: dict[str, Any] = {
        "format": o.format,
        "file": out.name,
        "fold_bn": o.fold_bn,
        "int8": o.int8,
        "batch": "dynamic" if dynamic else o.batch,
        "input_shape": ["batch" if dynamic else o.batch, *shape],
        "layout": "NCHW",
        "dtype": "float32",
        "preprocess": "RGB or L; short side to resize_size, centre crop image_size; /255; (x - mean) / std",
        "source_sha256": sha256sum(weights) if weights is not None else None,
        "source_file": str(weights) if weights is not None else None,
        "versions": {p: _version(p) for p in ("torch", "onnx", "onnxruntime", "onnxscript", "resnetlab")},
    }
    sizes = [len(verify), 1, 7] if dynamic else [o.batch]
    with _temporary(out) as tmp, _temporary(out.with_name(out.stem + ".fp32" + out.suffix)) as tmp_fp32:
        if o.format == "pt2":
            facts.update(_export_pt2(model, example, tmp, dynamic))
            runner: nn.Module = ProgramModel(tmp)
        else:
            from resnetlab.export.onnx_export import export_onnx

            facts.update(export_onnx(model, example, tmp_fp32 if o.int8 else tmp, dynamic=dynamic))
            if o.int8:
                from resnetlab.export.int8 import quantize_onnx

                log(f"int8: calibrating on {len(calib)} {calibration_data} training images")
                facts.update(quantize_onnx(tmp_fp32, tmp, calib, facts["input"]))
                facts["calibration_data"] = calibration_data
            runner = OnnxModel(tmp)
        parity = _parity(runner, eager, verify, sizes)
        facts["parity"] = {"images": verify_from, "relative_to_std": PARITY_REL, **parity}
        log(
            f"parity on {verify_from}, batch {', '.join(map(str, sizes))}: max |diff| "
            f"{parity['max_abs_diff']:.2e} (tolerance {parity['tolerance']:.2e}), "
            f"top-1 agreement {100 * parity['top1_agreement']:.2f}%"
        )
        if o.int8:
            if x_test is not None:
                fp32_acc, int8_acc = _accuracy(eager, x_test, y_test), _accuracy(runner, x_test, y_test)
                drop = 100 * (fp32_acc - int8_acc)
                facts["accuracy"] = {
                    "data": data,
                    "split": "test",
                    "images": len(y_test),
                    "fp32": fp32_acc,
                    "int8": int8_acc,
                }
                log(
                    f"accuracy on {data} test ({len(y_test):,} images): fp32 {100 * fp32_acc:.2f}%, "
                    f"int8 {100 * int8_acc:.2f}% ({-drop:+.2f} points)"
                )
                if drop > INT8_MAX_DROP:
                    raise Error(
                        f"int8 loses {drop:.2f} top-1 points against fp32 (more than {INT8_MAX_DROP}); "
                        "calibrate on more images (--calibration-images) or keep fp32"
                    )
        elif not (parity["within_tolerance"] and parity["top1_agreement_decided"] == 1.0):
            raise Error(
                f"the exported file does not match eager PyTorch (max |diff| {parity['max_abs_diff']:.2e}, "
                f"tolerance {parity['tolerance']:.2e}, top-1 agreement "
                f"{100 * parity['top1_agreement']:.2f}%); nothing was written"
            )
        facts["sha256"] = sha256sum(tmp)
        side = sidecar_path(out)
        # The file first, then its sidecar: a crash between the two leaves the old sidecar, whose
        # sha256 no longer matches, and opening the pair says so.
        os.replace(tmp, out)
        fsync_dir(out.parent)
        write_atomic(side, sidecar_bytes(meta, facts))
    return ExportReport(out, side, facts)


def _export_pt2(model: nn.Module, example: Tensor, path: Path, dynamic: bool) -> dict[str, Any]:
    from resnetlab.export.pt2 import export_pt2

    return export_pt2(model, example, path, dynamic=dynamic)
