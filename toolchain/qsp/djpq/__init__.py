"""DJPQ: differentiable joint pruning and mixed-precision quantization (Wang, Lu,
Blankevoort, ECCV 2020), down to the qsp bundle. See docs/djpq.md.

* :class:`LearnedQuantizer`: learned step and range (Uhlich et al.), bitwidth derived;
* :class:`VIBGate`: variational-information-bottleneck channel gates (Dai et al.);
* :class:`DJPQLayer`: Linear/Conv2d (depthwise/grouped too) with learned weight bits, a gate per
  output channel where the graph allows one, and an optional folded BatchNorm;
* :func:`convert` (any traceable model, via torch.fx), :class:`DJPQConfig`, :func:`param_groups`;
  :mod:`qsp.djpq.graph`: the graph walk behind gating and BOPs (:func:`layer_chain`);
* :func:`model_bops`, :class:`DJPQObjective`, :class:`BopsController`, :func:`bundle_bops`;
* :func:`export_djpq` (bundle), :class:`RemovePrunedChannels` (graph transformation).
"""
from .bops import BopsController, DJPQObjective, LayerBops, bundle_bops, fp32_bops, kl_term, model_bops, summary
from .convert import DJPQConfig, convert, layer_chain, param_groups, record_macs, set_lr_scales
from .gates import VIBGate
from .layers import DJPQLayer
from .quant import POW2_BITS, LearnedQuantizer, signed_bits, snap_pow2_bits
from .transforms import RemovePrunedChannels
from .export import djpq_report, export_djpq, format_report  # noqa: E402  (registers the exporters)

__all__ = ["LearnedQuantizer", "VIBGate", "DJPQLayer", "DJPQConfig", "convert", "layer_chain", "param_groups",
           "record_macs", "set_lr_scales", "model_bops", "fp32_bops", "kl_term", "summary", "LayerBops", "BopsController",
           "DJPQObjective", "bundle_bops", "RemovePrunedChannels", "export_djpq", "djpq_report", "format_report",
           "POW2_BITS", "signed_bits", "snap_pow2_bits"]
