"""qsp's own HLS layers, registered with hls4ml 1.3.0's extension mechanism.

Five layers, each a torch module (an ``HLS4MLModule``, so hls4ml's tracer keeps it a
leaf), a parser for hls4ml's PyTorch frontend, an IR layer, config/function templates for
the Vivado and Vitis backends and a C++ header in ``hls/`` (array overload for
io_parallel, ``hls::stream`` overload for io_stream):

* ``QspMask``: elementwise constant 0/1 activation mask (``hls/nnet_qsp_mask.h``);
* ``QspRequant``: a standalone re-quantization (a cast to the layer's ``result`` type,
  for a quantize node that cannot fold into the layer before it);
* ``QspDepthToSpace``: PyTorch's PixelShuffle (``hls/nnet_qsp_depth_to_space.h``);
* ``QspScaleShift``: per-channel ``x * scale + shift`` (``hls/nnet_qsp_elementwise.h``);
* ``QspClip``: ``min(max(x, lo), hi)`` (ReLU6, Hardtanh; ``hls/nnet_qsp_elementwise.h``).

* ``QspGlobalAvgPool2d`` / ``QspGlobalAvgPool1d``: an average pooling whose window is the
  whole map (``AdaptiveAvgPool2d(1)``, ``x.mean((2, 3))``), as hls4ml's own
  ``global_pooling2d_cl`` / ``global_pooling1d_cl`` (``nnet_pooling.h`` and
  ``nnet_pooling_stream.h``: one ``accum_t`` accumulator per channel, no window buffer); the
  IR layers are hls4ml's ``GlobalPooling2D`` / ``GlobalPooling1D`` keeping the ``[C, 1, 1]``
  / ``[C, 1]`` shape of the bundle node (hls4ml's own is ``[C]``, which its channels-last
  pass cannot flatten), so the layers after it are as with the windowed ``Pooling2D``.

Two more torch modules only need a parser, mapping to hls4ml's own IR layers:

* ``QspDepthwiseConv2d`` -> hls4ml's ``DepthwiseConv2D``;
* ``QspGroupedConv2d`` -> hls4ml's ``Conv2D`` with a block-diagonal weight.

Exactness rules for each, and for hls4ml's native add / concat / LeakyReLU / average
pooling: ``docs/hls4ml-ops.md``.

hls4ml's channels-last conversion only transposes tensors named like ``weight``, so the
mask is handed to hls4ml already in the channels-last (H, W, C) order: ``mask_hls``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import hls4ml
from hls4ml.backends.template import FunctionCallTemplate, LayerConfigTemplate
from hls4ml.model.attributes import Attribute, WeightAttribute
from hls4ml.model.layers import GlobalPooling1D, GlobalPooling2D, Layer, register_layer
from hls4ml.model.types import IntegerPrecisionType
from hls4ml.utils.torch import HLS4MLModule

from ..resources import data_dir, data_file

#: the folder with our C++ headers: qsp/_data/hls of an installed wheel, else <repo>/hls
#: (qsp.resources; None when neither exists, and registering the layers then says so)
HLS_DIR = data_dir("hls", required=False)
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


class QspDepthwiseConv2d(HLS4MLModule):
    """Depthwise 2-D convolution (groups = channels, depth multiplier 1), NCHW, zero padding.

    Maps to hls4ml's own ``DepthwiseConv2D`` (the layer the Keras frontend produces);
    precision keys ``weight``, ``bias``, ``accum``, ``result``. Grouped convolution with
    1 < groups < channels is not supported (refused here)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None = None, stride=(1, 1), padding=(0, 0)):
        super().__init__()
        w = np.asarray(weight, np.float32)
        if w.ndim != 4 or w.shape[1] != 1:
            raise ValueError(f"QspDepthwiseConv2d: weight must be (C, 1, kh, kw), got {w.shape} "
                             "(grouped convolution with 1 < groups < C is not supported)")
        self.channels = int(w.shape[0])
        self.kernel_size = (int(w.shape[2]), int(w.shape[3]))
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        # hls4ml's PyTorch frontend checks these two on every class whose name contains
        # "Conv" (groups != 1 is refused there); the grouping lives in self.channels
        self.padding_mode = "zeros"
        self.groups = 1
        self.register_buffer("weight", torch.as_tensor(w))
        if bias is not None:
            b = np.asarray(bias, np.float32).reshape(-1)
            if b.shape != (self.channels,):
                raise ValueError(f"QspDepthwiseConv2d: bias must be ({self.channels},), got {b.shape}")
            self.register_buffer("bias", torch.as_tensor(b))
        else:
            self.bias = None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, groups=self.channels)


class QspGroupedConv2d(HLS4MLModule):
    """Grouped 2-D convolution (any ``groups`` dividing both channel counts; depthwise with a
    depth multiplier included), NCHW, zero padding.

    Maps to hls4ml's plain ``Conv2D`` with a block-diagonal (zero-filled) dense weight:
    exact, since the zero weights add exact zeros (their multipliers are constants 0: vendor
    synthesis and distributed arithmetic drop them; Latency/Resource keep the array).
    Precision keys ``weight``, ``bias``, ``accum``, ``result``."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None = None, stride=(1, 1), padding=(0, 0),
                 groups: int = 1):
        super().__init__()
        w = np.asarray(weight, np.float32)
        g = int(groups)
        if w.ndim != 4 or g < 1 or w.shape[0] % g:
            raise ValueError(f"QspGroupedConv2d: weight {w.shape} (C_out, C_in/groups, kh, kw) with groups={g}")
        self.groups_ = g
        self.out_channels = int(w.shape[0])
        self.in_channels = int(w.shape[1]) * g
        self.kernel_size = (int(w.shape[2]), int(w.shape[3]))
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.padding_mode = "zeros"
        self.groups = 1  # see QspDepthwiseConv2d; the real group count is groups_
        self.register_buffer("weight", torch.as_tensor(w))
        self.register_buffer("bias", None if bias is None else torch.as_tensor(np.asarray(bias, np.float32).reshape(-1)))

    def dense_weight(self) -> np.ndarray:
        """The equivalent (C_out, C_in, kh, kw) weight, zero outside each group's block."""
        w = self.weight.numpy()
        g, co, ci = self.groups_, self.out_channels, self.in_channels
        dense = np.zeros((co, ci) + self.kernel_size, np.float32)
        cog, cig = co // g, ci // g
        for k in range(g):
            dense[k * cog:(k + 1) * cog, k * cig:(k + 1) * cig] = w[k * cog:(k + 1) * cog]
        return dense

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, groups=self.groups_)


class QspScaleShift(HLS4MLModule):
    """Per-channel ``x * scale[c] + shift[c]`` over (N, C, H, W), (N, C, L) or (N, C) inputs
    (a BatchNorm with no weight layer before it). Precision keys ``scale``, ``bias`` (the
    shift), ``result``; the product and the sum are exact (full width), one cast to result."""

    def __init__(self, scale: np.ndarray, shift: np.ndarray):
        super().__init__()
        sc = np.asarray(scale, np.float32).reshape(-1)
        sh = np.asarray(shift, np.float32).reshape(-1)
        if sc.shape != sh.shape:
            raise ValueError(f"QspScaleShift: scale {sc.shape} and shift {sh.shape} differ")
        self.register_buffer("scale", torch.as_tensor(sc))
        self.register_buffer("shift", torch.as_tensor(sh))

    def forward(self, x):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.view(shape) + self.shift.view(shape)


class QspGlobalAvgPool2d(HLS4MLModule):
    """Average pooling over the whole (H, W) map, NCHW -> (N, C, 1, 1)."""

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, 1)


class QspGlobalAvgPool1d(HLS4MLModule):
    """Average pooling over the whole length, NCL -> (N, C, 1)."""

    def forward(self, x):
        return F.adaptive_avg_pool1d(x, 1)


class QspAdd(HLS4MLModule):
    """``a + b``; parsed into hls4ml's own ``Merge`` (add) layer, named after the module
    (a functional ``+`` would be named by torch.fx, not by qsp). Precision key ``result``."""

    def forward(self, a, b):
        return a + b


class QspConcat(HLS4MLModule):
    """``torch.cat([a, b], dim=1)`` (channels); parsed into hls4ml's own ``Concatenate``."""

    def forward(self, a, b):
        return torch.cat([a, b], dim=1)


class QspClip(HLS4MLModule):
    """``min(max(x, lo), hi)`` (ReLU6, Hardtanh, clamp); precision key ``result``. ``lo`` /
    ``hi`` may be -inf / inf (no bound on that side); finite ones must be dyadic (exact in
    a fixed-point type)."""

    def __init__(self, lo: float, hi: float):
        super().__init__()
        self.lo, self.hi = float(lo), float(hi)
        if not self.lo <= self.hi:
            raise ValueError(f"QspClip: lo={lo} > hi={hi}")
        for v in (self.lo, self.hi):
            if np.isfinite(v):
                _dyadic_format(v)  # raises if not representable

    def forward(self, x):
        return torch.clamp(x, self.lo if np.isfinite(self.lo) else None, self.hi if np.isfinite(self.hi) else None)


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


def _dyadic_format(*values: float, max_frac: int = 48) -> tuple[int, int]:
    """(W, I) of the smallest signed ap_fixed that holds every value exactly."""
    frac = 0
    for v in values:
        f = 0
        while v * 2.0 ** f != np.round(v * 2.0 ** f):
            f += 1
            if f > max_frac:
                raise ValueError(f"{v!r} is not a fixed-point value with <= {max_frac} fraction bits")
        frac = max(frac, f)
    mag = max([abs(int(np.round(v * 2.0 ** frac))) for v in values] + [1])
    width = mag.bit_length() + 1
    return width, width - frac


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


def _parse_depthwise(operation, layer_name, input_names, input_shapes, node, class_object, data_reader, config):
    _, c, h, w = input_shapes[0]
    kh, kw = class_object.kernel_size
    sh, sw = class_object.stride
    ph, pw = class_object.padding
    oh = (h + 2 * ph - kh) // sh + 1
    ow = (w + 2 * pw - kw) // sw + 1
    layer = {"class_name": "DepthwiseConv2D", "name": layer_name, "inputs": input_names,
             "data_format": "channels_first",
             # (C, 1, kh, kw); hls4ml's channels-last pass transposes it to (kh, kw, 1, C)
             "depthwise_data": class_object.weight.numpy().copy(),
             "bias_data": None if class_object.bias is None else class_object.bias.numpy().copy(),
             "in_height": h, "in_width": w, "n_chan": c, "n_filt": c, "depth_multiplier": 1,
             "filt_height": kh, "filt_width": kw, "stride_height": sh, "stride_width": sw, "dilation": 1,
             "pad_top": ph, "pad_bottom": ph, "pad_left": pw, "pad_right": pw,
             "out_height": oh, "out_width": ow}
    return layer, [input_shapes[0][0], c, oh, ow]


def _parse_grouped(operation, layer_name, input_names, input_shapes, node, class_object, data_reader, config):
    _, c, h, w = input_shapes[0]
    if c != class_object.in_channels:
        raise ValueError(f"{layer_name}: QspGroupedConv2d expects {class_object.in_channels} channels, input {c}")
    kh, kw = class_object.kernel_size
    sh, sw = class_object.stride
    ph, pw = class_object.padding
    oh = (h + 2 * ph - kh) // sh + 1
    ow = (w + 2 * pw - kw) // sw + 1
    layer = {"class_name": "Conv2D", "name": layer_name, "inputs": input_names, "data_format": "channels_first",
             "weight_data": class_object.dense_weight(),
             "bias_data": None if class_object.bias is None else class_object.bias.numpy().copy(),
             "in_height": h, "in_width": w, "n_chan": c, "n_filt": class_object.out_channels,
             "filt_height": kh, "filt_width": kw, "stride_height": sh, "stride_width": sw, "dilation": 1,
             "pad_top": ph, "pad_bottom": ph, "pad_left": pw, "pad_right": pw,
             "out_height": oh, "out_width": ow}
    return layer, [input_shapes[0][0], class_object.out_channels, oh, ow]


def _parse_scale_shift(operation, layer_name, input_names, input_shapes, node, class_object, data_reader, config):
    shape = list(input_shapes[0])
    c = shape[1]
    if class_object.scale.numel() != c:
        raise ValueError(f"{layer_name}: QspScaleShift has {class_object.scale.numel()} channels, input {shape}")
    layer = {"class_name": "QspScaleShiftHLS", "name": layer_name, "inputs": input_names,
             "n_in": int(np.prod(shape[1:])), "n_chan": c,
             "scale_data": class_object.scale.numpy().astype(np.float64),
             "bias_data": class_object.shift.numpy().astype(np.float64)}
    return layer, shape


def _parse_clip(operation, layer_name, input_names, input_shapes, node, class_object, data_reader, config):
    lo, hi = class_object.lo, class_object.hi
    finite = [v for v in (lo, hi) if np.isfinite(v)] or [0.0]
    width, integer = _dyadic_format(*finite)
    layer = {"class_name": "QspClipHLS", "name": layer_name, "inputs": input_names,
             "n_in": int(np.prod(input_shapes[0][1:])),
             "has_lo": int(np.isfinite(lo)), "has_hi": int(np.isfinite(hi)),
             "lo": repr(lo if np.isfinite(lo) else 0.0), "hi": repr(hi if np.isfinite(hi) else 0.0),
             "bound_type": f"ap_fixed<{width},{integer}>"}
    return layer, list(input_shapes[0])


def _parse_gap2d(operation, layer_name, input_names, input_shapes, node, class_object, data_reader, config):
    _, c, h, w = input_shapes[0]
    layer = {"class_name": "QspGlobalPool2D", "name": layer_name, "inputs": input_names,
             "data_format": "channels_first", "in_height": h, "in_width": w, "n_filt": c, "pool_op": "Average"}
    return layer, [input_shapes[0][0], c, 1, 1]


def _parse_gap1d(operation, layer_name, input_names, input_shapes, node, class_object, data_reader, config):
    _, c, n = input_shapes[0]
    layer = {"class_name": "QspGlobalPool1D", "name": layer_name, "inputs": input_names,
             "data_format": "channels_first", "n_in": n, "n_filt": c, "pool_op": "Average"}
    return layer, [input_shapes[0][0], c, 1]


# ============================================================================ IR layers
class QspGlobalPool2D(GlobalPooling2D):
    """hls4ml's GlobalPooling2D (its accum/reuse attributes and C++), output ``[C, 1, 1]``
    (channels first, like Pooling2D; hls4ml's channels-last pass makes it ``[1, 1, C]``)."""

    def initialize(self):
        self.add_output_variable([self.attributes["n_filt"], 1, 1])
        self.set_attr("pool_op", "Average")


class QspGlobalPool1D(GlobalPooling1D):
    """hls4ml's GlobalPooling1D, output ``[C, 1]`` (channels last: ``[1, C]``)."""

    def initialize(self):
        self.add_output_variable([self.attributes["n_filt"], 1])
        self.set_attr("pool_op", "Average")

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


class QspScaleShiftHLS(Layer):
    _expected_attributes = [Attribute("n_in"), Attribute("n_chan"), WeightAttribute("scale"),
                            WeightAttribute("bias")]

    def initialize(self):
        self.add_output_variable(self.get_input_variable().shape)
        self.add_weights_variable(name="scale", var_name="s{index}")
        self.add_weights_variable(name="bias", var_name="b{index}")


class QspClipHLS(Layer):
    _expected_attributes = [Attribute("n_in"), Attribute("has_lo"), Attribute("has_hi"),
                            Attribute("lo", value_type=str), Attribute("hi", value_type=str),
                            Attribute("bound_type", value_type=str)]

    def initialize(self):
        self.add_output_variable(self.get_input_variable().shape)


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

_SS_CONFIG = """struct config{index} : nnet::qsp_scale_shift_config {{
    static const unsigned n_in = {n_in};
    static const unsigned n_chan = {n_chan};
    typedef {scale_t.name} scale_t;
    typedef {bias_t.name} bias_t;
}};\n"""
_SS_CALL = "nnet::qsp_scale_shift<{input_t}, {output_t}, {config}>({input}, {output}, {scale}, {bias});"
_CLIP_CONFIG = """struct config{index} : nnet::qsp_clip_config {{
    static const unsigned n_in = {n_in};
    static const bool has_lo = {has_lo};
    static const bool has_hi = {has_hi};
    typedef {bound_type} bound_t;
    static bound_t lo() {{ return bound_t({lo}); }}
    static bound_t hi() {{ return bound_t({hi}); }}
}};\n"""
_CLIP_CALL = "nnet::qsp_clip<{input_t}, {output_t}, {config}>({input}, {output});"


# hls4ml's global pooling config (backends/vivado/passes/pooling_templates.py) with the
# window and output sizes spelled out: the C++ asserts pool = stride, and the io_parallel
# ALLOCATION limit reads out_height x out_width; no padding, the pooling op, reuse and accum_t
_GP_TAIL = """    static const unsigned pad_left = 0;
    static const unsigned pad_right = 0;
    static const nnet::Pool_Op pool_op = nnet::{pool_op};
    static const unsigned reuse_factor = {reuse};
    typedef {accum_t.name} accum_t;
}};\n"""
_GP2D_CONFIG = """struct config{index} : nnet::pooling2d_config {{
    static const unsigned in_height = {in_height};
    static const unsigned in_width = {in_width};
    static const unsigned n_filt = {n_filt};
    static const unsigned pool_height = in_height;
    static const unsigned pool_width = in_width;
    static const unsigned stride_height = in_height;
    static const unsigned stride_width = in_width;
    static const unsigned out_height = 1;
    static const unsigned out_width = 1;
    static const unsigned pad_top = 0;
    static const unsigned pad_bottom = 0;
""" + _GP_TAIL
_GP2D_CALL = "nnet::global_pooling2d_{data_format}<{input_t}, {output_t}, {config}>({input}, {output});"
_GP1D_CONFIG = """struct config{index} : nnet::pooling1d_config {{
    static const unsigned n_in = {n_in};
    static const unsigned n_filt = {n_filt};
    static const unsigned pool_width = n_in;
    static const unsigned stride_width = n_in;
    static const unsigned n_out = 1;
""" + _GP_TAIL
_GP1D_CALL = "nnet::global_pooling1d_{data_format}<{input_t}, {output_t}, {config}>({input}, {output});"
_POOL_HEADERS = ["nnet_utils/nnet_pooling.h", "nnet_utils/nnet_pooling_stream.h"]


def _global_pool_templates(layer_cls, config, call):
    class _C(LayerConfigTemplate):
        def __init__(self):
            super().__init__(layer_cls)

        def format(self, node):
            return config.format(**self._default_config_params(node))

    class _F(FunctionCallTemplate):
        def __init__(self):
            super().__init__(layer_cls, include_header=_POOL_HEADERS)

        def format(self, node):
            params = self._default_function_params(node)
            params["data_format"] = "cf" if node.get_attr("data_format") == "channels_first" else "cl"
            return call.format(**params)

    _C.__name__ = f"{layer_cls.__name__}ConfigTemplate"
    _F.__name__ = f"{layer_cls.__name__}FunctionTemplate"
    return _C, _F


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
    ("QspScaleShift", _parse_scale_shift, QspScaleShiftHLS, _SS_CONFIG, _SS_CALL, "nnet_qsp_elementwise.h",
     ("scale", "bias")),
    ("QspClip", _parse_clip, QspClipHLS, _CLIP_CONFIG, _CLIP_CALL, "nnet_qsp_elementwise.h", ()),
]
def _parse_add(operation, layer_name, input_names, input_shapes, node, class_object, data_reader, config):
    layer = {"class_name": "Merge", "name": layer_name, "op": "add", "inputs": input_names}
    return layer, list(input_shapes[0])


def _parse_concat(operation, layer_name, input_names, input_shapes, node, class_object, data_reader, config):
    rank = len(input_shapes[0][1:])
    layer = {"class_name": "Concatenate", "name": layer_name, "op": f"concatenate{rank}d", "axis": 1,
             "inputs": input_names}
    out = list(input_shapes[0])
    out[1] += input_shapes[1][1]
    return layer, out


#: torch class, parser, IR class (hls4ml's layer, qsp's shape), config, call (hls4ml's C++)
_GLOBAL_POOLS = [("QspGlobalAvgPool2d", _parse_gap2d, QspGlobalPool2D, _GP2D_CONFIG, _GP2D_CALL),
                 ("QspGlobalAvgPool1d", _parse_gap1d, QspGlobalPool1D, _GP1D_CONFIG, _GP1D_CALL)]
#: torch classes whose parser maps to one of hls4ml's own IR layers (no templates of ours)
_NATIVE = [("QspAdd", _parse_add), ("QspConcat", _parse_concat), ("QspDepthwiseConv2d", _parse_depthwise), ("QspGroupedConv2d", _parse_grouped)]
_registered = False


def register() -> None:
    """Register qsp's layers with hls4ml (idempotent: hls4ml raises on a second registration)."""
    global _registered
    if _registered:
        return
    for torch_name, parser, ir_cls, _c, _f, _h, _w in _LAYERS:
        hls4ml.converters.register_pytorch_layer_handler(torch_name, parser)
        register_layer(ir_cls.__name__, ir_cls)
    for torch_name, parser in _NATIVE:
        hls4ml.converters.register_pytorch_layer_handler(torch_name, parser)
    for torch_name, parser, ir_cls, _c, _f in _GLOBAL_POOLS:
        hls4ml.converters.register_pytorch_layer_handler(torch_name, parser)
        register_layer(ir_cls.__name__, ir_cls)
    for backend_name in BACKENDS:
        backend = hls4ml.backends.get_backend(backend_name)
        for _t, _p, ir_cls, cfg, call in _GLOBAL_POOLS:
            for tmpl in _global_pool_templates(ir_cls, cfg, call):
                backend.register_template(tmpl)
        for _t, _p, ir_cls, cfg, call, header, weights in _LAYERS:
            backend.register_template(_config_template(ir_cls, cfg))
            backend.register_template(_call_template(ir_cls, call, header, weights))
        for header in sorted({h for *_x, h, _w in _LAYERS}):
            backend.register_source(data_file("hls", header))
    _registered = True
