"""Deployment: BN folding, ONNX and torch.export (.pt2) files that verify themselves, int8.

>>> from resnetlab.export import fold_bn, export_model, ExportOptions
>>> export_model("runs/r20", ExportOptions(format="onnx", out="r20.onnx", int8=True))

onnx, onnxruntime and onnxscript are the `export` extra (`pip install "resnetlab[export]"`);
nothing here imports them until an ONNX file is written or run, so `import resnetlab` never does.
"""

from resnetlab.export.fold import count_bn, fold_bn
from resnetlab.export.pipeline import ExportOptions, export_model

__all__ = [
    "ExportOptions",
    "count_bn",
    "export_model",
    "fold_bn",
]
