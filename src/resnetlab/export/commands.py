"""`resnetlab export SOURCE --format onnx|pt2 --out FILE`, and `--format hf --out DIR`."""

from __future__ import annotations

import argparse

from resnetlab.errors import Error


def _batch(value: str) -> int | None:
    if value == "dynamic":
        return None
    try:
        batch = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'dynamic', not {value!r}") from None
    if batch < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'dynamic', not {value!r}")
    return batch


def register(subparsers: argparse._SubParsersAction) -> None:
    ex = subparsers.add_parser(
        "export",
        help="export a model to ONNX or a torch.export program, verified against eager PyTorch",
        description=(
            "Export a run directory, weights file, registry tag or model name (random weights, for "
            "timing) as ONNX (ONNX Runtime) or a torch.export .pt2 program. BN is folded into the convs; "
            "the file is run on real test images and compared with eager PyTorch before it is kept, "
            "with a sidecar FILE.json (classes, preprocessing, checksums, parity figures). --format hf "
            "writes a folder in the Hugging Face Hub layout timm loads (weights, config.json, model card)."
        ),
        epilog=(
            "examples:\n"
            "  resnetlab export runs/r20 --format onnx --out r20.onnx\n"
            "  resnetlab export runs/r20 --format onnx --int8 --out r20-int8.onnx\n"
            "  resnetlab export resnet50 --format pt2 --batch 1 --out r50.pt2\n"
            "  resnetlab export runs/photos --format hf --out my-model"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument(
        "source", metavar="SOURCE", help="run directory, .safetensors file, registry tag or model name"
    )
    ex.add_argument(
        "--format", choices=("onnx", "pt2", "hf"), help="file format (default: from --out's suffix)"
    )
    ex.add_argument(
        "--out", required=True, metavar="FILE", help="exported file (.onnx or .pt2), or folder (hf)"
    )
    ex.add_argument("--int8", action="store_true", help="int8 static quantisation (ONNX Runtime QDQ)")
    ex.add_argument(
        "--calibration-data", metavar="DATA", help="data set for int8 calibration (default: the model's own)"
    )
    ex.add_argument(
        "--calibration-images", type=int, default=512, metavar="N", help="calibration images (default: 512)"
    )
    ex.add_argument(
        "--batch",
        type=_batch,
        default=None,
        metavar="N|dynamic",
        help="batch size of the graph (default: dynamic)",
    )
    ex.add_argument("--no-fold-bn", action="store_true", help="keep the BN layers instead of folding them")
    ex.add_argument("--data-dir", metavar="DIR", help="where the data set files are")
    ex.set_defaults(func=run_export)


def _export_hf(args: argparse.Namespace) -> int:
    from resnetlab.export.hub import export_hf

    graph_flags = [
        flag
        for flag, given in (
            ("--int8", args.int8),
            ("--calibration-data", args.calibration_data),
            ("--batch", args.batch is not None),
            ("--no-fold-bn", args.no_fold_bn),
        )
        if given
    ]
    if graph_flags:
        raise Error(f"{', '.join(graph_flags)} apply to onnx and pt2 graphs; --format hf writes the weights")
    out = export_hf(args.source, args.out)
    print(f"wrote {out}/ (model.safetensors, config.json, README.md)")
    print(f'next: resnetlab predict {out} IMAGE...   timm.create_model("local-dir:{out}", pretrained=True)')
    return 0


def run_export(args: argparse.Namespace) -> int:
    from resnetlab.export.pipeline import FORMATS, ExportOptions, export_model

    fmt = args.format or next((f for f, suffix in FORMATS.items() if args.out.endswith(suffix)), None)
    if fmt is None:
        raise Error(f"--out {args.out}: give a .onnx or .pt2 name, or --format (hf: a folder)")
    if fmt == "hf":
        return _export_hf(args)
    options = ExportOptions(
        format=fmt,
        out=args.out,
        int8=args.int8,
        calibration_data=args.calibration_data,
        calibration_images=args.calibration_images,
        batch=args.batch,
        fold_bn=not args.no_fold_bn,
        data_dir=args.data_dir,
    )
    report = export_model(args.source, options)
    print(f"wrote {report.path} and {report.sidecar}")
    print(f"next: resnetlab eval {report.path}   resnetlab predict {report.path} IMAGE...")
    return 0
