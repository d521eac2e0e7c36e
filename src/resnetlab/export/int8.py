"""int8 post-training static quantisation of an ONNX file with ONNX Runtime's `quantize_static`.

QDQ format, per-channel int8 weights and uint8 activations (U8S8, the layout x86 VNNI and AMX
kernels take), MinMax ranges from real calibration images. ONNX Runtime then fuses each
DequantizeLinear -> Conv -> QuantizeLinear into an integer conv.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import Tensor

from resnetlab.weights.exported import require_extra

CALIBRATION_BATCH = 32  # images per calibration run; only the min/max of each tensor is kept


def quantize_onnx(fp32: Path, out: Path, calibration: Tensor, input_name: str) -> dict[str, object]:
    """Write the int8 version of the fp32 ONNX file `fp32` to `out`.

    calibration: (N, C, H, W) float, normalised exactly as the model's inputs are.
    """
    quant = require_extra("onnxruntime.quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [
        {input_name: part.contiguous().numpy()} for part in torch.split(calibration, CALIBRATION_BATCH)
    ]

    class Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self) -> dict | None:
            return next(self.items, None)

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quant.quantize_static(
            str(prepared),
            str(out),
            Reader(),
            quant_format=quant.QuantFormat.QDQ,
            per_channel=True,
            activation_type=quant.QuantType.QUInt8,
            weight_type=quant.QuantType.QInt8,
            calibrate_method=quant.CalibrationMethod.MinMax,
        )
    return {
        "quantizer": "onnxruntime.quantization.quantize_static",
        "quant_format": "QDQ",
        "per_channel": True,
        "activations": "uint8",
        "weights": "int8",
        "calibration_method": "MinMax",
        "calibration_images": len(calibration),
    }
