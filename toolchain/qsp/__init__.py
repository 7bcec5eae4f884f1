"""qsp: joint quantization and pruning, from PyTorch training to bit-exact fixed-point HLS.

``import qsp`` loads only the training side (torch, numpy); the compile stage (hls4ml,
onnx) is imported by ``qsp.compile`` on demand.
"""
from .errors import QspError
from .nn import Plan, QLayer, convert, prune, quantize

__version__ = "0.1.0"
__all__ = ["quantize", "prune", "convert", "Plan", "QLayer", "QspError", "__version__"]
