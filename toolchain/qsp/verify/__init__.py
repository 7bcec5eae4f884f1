"""Verification references: the integer-exact emulation of a bundle (``qsp.verify.emulate``).

Kept free of hls4ml/onnx imports; the ONNX path lives in :mod:`qsp.export.onnx`.
"""
from .emulate import Fixed, Step, TensorInfo, analyze, avgpool_frac, emulate, fake_quant_forward

__all__ = ["emulate", "fake_quant_forward", "analyze", "avgpool_frac", "TensorInfo", "Step", "Fixed"]
