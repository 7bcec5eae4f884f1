"""qsp's own HLS layers, registered with hls4ml 1.3.0's extension mechanism.

Three layers, each a torch module (an ``HLS4MLModule``, so hls4ml's tracer keeps it a
leaf), a parser for hls4ml's PyTorch frontend, an IR layer, config/function templates for
the Vivado and Vitis backends and a C++ header in ``hls/`` (array overload for
io_parallel, ``hls::stream`` overload for io_stream):

* ``QspMask``: elementwise constant 0/1 activation mask (``hls/nnet_qsp_mask.h``);
* ``QspRequant``: a standalone re-quantization (a cast to the layer's ``result`` type,
  for a quantize node that cannot fold into the layer before it);
* ``QspDepthToSpace``: PyTorch's PixelShuffle (``hls/nnet_qsp_depth_to_space.h``).

hls4ml's channels-last conversion only transposes tensors named like ``weight``, so the
mask is handed to hls4ml already in the channels-last (H, W, C) order: ``mask_hls``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import hls4ml
from hls4ml.backends.template import FunctionCallTemplate, LayerConfigTemplate
from hls4ml.model.attributes import Attribute, WeightAttribute
from hls4ml.model.layers import Layer, register_layer
from hls4ml.model.types import IntegerPrecisionType
from hls4ml.utils.torch import HLS4MLModule

#: the folder with our C++ headers (repository root / hls)
HLS_DIR = Path(__file__).resolve().parents[3] / "hls"
BACKENDS = ("Vivado", "Vitis", "VivadoAccelerator")


def channels_last(a: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W, C) (1-D and 2-D (C, L) arrays handled likewise)."""
    a = np.asarray(a)
    if a.ndim == 3:
        return a.transpose(1, 2, 0)
    if a.ndim == 2:
        return a.transpose(1, 0)
    return a


# ============================================================================ torch side
class QspMask(HLS4MLModule):
    """x * mask, the mask of one input (no batch dimension), NCHW."""

    def __init__(self, mask: np.ndarray):
        super().__init__()
        self.register_buffer("mask", torch.as_tensor(np.asarray(mask, np.float32)))
        self.mask_hls = channels_last(np.asarray(mask, np.float32)).reshape(-1)

    def forward(self, x):
        return x * self.mask


class QspRequant(HLS4MLModule):
    """Identity in floating point; in HLS a cast to the layer's ``result`` type (qsp sets it
    to the quantize node's format, rounding mode and AP_SAT)."""

    def forward(self, x):
        return x


class QspDepthToSpace(HLS4MLModule):
    def __init__(self, factor: int):
        super().__init__()
        self.factor = int(factor)

    def forward(self, x):
        return F.pixel_shuffle(x, self.factor)


# ============================================================================ parsers
def _parse_mask(operation, layer_name, input_names, input_shapes, node, class_object, data_reader, config):
    layer = {"class_name": "QspMaskHLS", "name": layer_name, "inputs": input_names,
             "n_in": int(np.prod(input_shapes[0][1:])), "mask_data": class_object.mask_hls.copy()}
    return layer, list(input_shapes[0])


def _parse_requant(operation, layer_name, input_names, input_shapes, node, class_object, data_reader, config):
    layer = {"class_name": "QspRequantHLS", "name": layer_name, "inputs": input_names,
             "n_in": int(np.prod(input_shapes[0][1:]))}
    return layer, list(input_shapes[0])


def _parse_d2s(operation, layer_name, input_names, input_shapes, node, class_object, data_reader, config):
    _, c, h, w = input_shapes[0]
    r = class_object.factor
    layer = {"class_name": "QspDepthToSpaceHLS", "name": layer_name, "inputs": input_names,
             "in_height": h, "in_width": w, "n_chan_in": c, "n_chan_out": c // (r * r), "factor": r}
    return layer, [input_shapes[0][0], c // (r * r), h * r, w * r]


# ============================================================================ IR layers
class QspMaskHLS(Layer):
    _expected_attributes = [Attribute("n_in"), WeightAttribute("mask")]

    def initialize(self):
        inp = self.get_input_variable()
        self.add_output_variable(inp.shape)
        self.add_weights_variable(name="mask", var_name="m{index}",
                                  precision=IntegerPrecisionType(width=1, signed=False))


class QspRequantHLS(Layer):
    _expected_attributes = [Attribute("n_in")]

    def initialize(self):
        self.add_output_variable(self.get_input_variable().shape)


class QspDepthToSpaceHLS(Layer):
    _expected_attributes = [Attribute("in_height"), Attribute("in_width"), Attribute("n_chan_in"),
                            Attribute("n_chan_out"), Attribute("factor")]

    def initialize(self):
        r = self.get_attr("factor")
        # PyTorch order; hls4ml's channels-last pass moves the channel axis last
        self.add_output_variable([self.get_attr("n_chan_out"), self.get_attr("in_height") * r,
                                  self.get_attr("in_width") * r])


# ============================================================================ templates
_MASK_CONFIG = """struct config{index} : nnet::qsp_mask_config {{
    static const unsigned n_in = {n_in};
    typedef {mask_t.name} mask_t;
}};\n"""
_MASK_CALL = "nnet::qsp_mask<{input_t}, {output_t}, {config}>({input}, {output}, {mask});"
_REQ_CONFIG = """struct config{index} : nnet::qsp_requant_config {{
    static const unsigned n_in = {n_in};
}};\n"""
_REQ_CALL = "nnet::qsp_requant<{input_t}, {output_t}, {config}>({input}, {output});"
_D2S_CONFIG = """struct config{index} : nnet::qsp_depth_to_space_config {{
    static const unsigned in_height = {in_height};
    static const unsigned in_width = {in_width};
    static const unsigned n_chan_in = {n_chan_in};
    static const unsigned n_chan_out = {n_chan_out};
    static const unsigned factor = {factor};
}};\n"""
_D2S_CALL = "nnet::qsp_depth_to_space<{input_t}, {output_t}, {config}>({input}, {output});"


def _config_template(layer_cls, text):
    class _T(LayerConfigTemplate):
        def __init__(self):
            super().__init__(layer_cls)
            self.template = text

        def format(self, node):
            return self.template.format(**self._default_config_params(node))

    _T.__name__ = f"{layer_cls.__name__}ConfigTemplate"
    return _T


def _call_template(layer_cls, text, header, weights=()):
    class _T(FunctionCallTemplate):
        def __init__(self):
            super().__init__(layer_cls, include_header=[f"nnet_utils/{header}"])
            self.template = text

        def format(self, node):
            params = self._default_function_params(node)
            for w in weights:
                params[w] = node.get_weights(w).name
            return self.template.format(**params)

    _T.__name__ = f"{layer_cls.__name__}FunctionTemplate"
    return _T


_LAYERS = [
    # torch class, parser, IR class, config, call, header, weights
    ("QspMask", _parse_mask, QspMaskHLS, _MASK_CONFIG, _MASK_CALL, "nnet_qsp_mask.h", ("mask",)),
    ("QspRequant", _parse_requant, QspRequantHLS, _REQ_CONFIG, _REQ_CALL, "nnet_qsp_mask.h", ()),
    ("QspDepthToSpace", _parse_d2s, QspDepthToSpaceHLS, _D2S_CONFIG, _D2S_CALL, "nnet_qsp_depth_to_space.h", ()),
]
_registered = False


def register() -> None:
    """Register qsp's layers with hls4ml (idempotent: hls4ml raises on a second registration)."""
    global _registered
    if _registered:
        return
    for torch_name, parser, ir_cls, _c, _f, _h, _w in _LAYERS:
        hls4ml.converters.register_pytorch_layer_handler(torch_name, parser)
        register_layer(ir_cls.__name__, ir_cls)
    for backend_name in BACKENDS:
        backend = hls4ml.backends.get_backend(backend_name)
        for _t, _p, ir_cls, cfg, call, header, weights in _LAYERS:
            backend.register_template(_config_template(ir_cls, cfg))
            backend.register_template(_call_template(ir_cls, call, header, weights))
        for header in sorted({h for *_x, h, _w in _LAYERS}):
            backend.register_source(HLS_DIR / header)
    _registered = True
