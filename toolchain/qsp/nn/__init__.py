"""qsp.nn: training operators for joint quantization and pruning of weights and activations."""
from .convert import ACTIVATIONS, LAYER_KEYS, ORDERS, LayerOverride, Plan, Schedule, convert, layer_settings, qsp_modules
from .layers import QLayer, QScaleShift, prune, quantize
from .ops import ActivationPruner, ActivationQuantizer, Quantizer, WeightPruner
from .state import prune_count, zhu_gupta

__all__ = ["quantize", "prune", "convert", "Plan", "Schedule", "QLayer", "QScaleShift", "Quantizer",
           "ActivationQuantizer", "WeightPruner", "ActivationPruner", "zhu_gupta", "prune_count",
           "ORDERS", "ACTIVATIONS", "qsp_modules", "LayerOverride", "layer_settings"]
