"""Interchange formats of a bundle. ``qsp.export.onnx`` (imports onnx) builds the ONNX
model with quantization nodes at every quantization point; import it explicitly."""
