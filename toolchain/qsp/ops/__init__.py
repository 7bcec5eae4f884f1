"""One rule object per bundle op, every facet of the op defined once, next to the op.

The bundle graph (:mod:`qsp.bundle.schema`) is the one IR; passes annotate it (the range
analysis :func:`qsp.verify.emulate.analyze` gives each node a :class:`Step`; the compiler's
precision plan, the estimator's counts and resources read the same rules). A stage is a
driver: it walks the graph and calls :func:`rule` ``(node.op)``. Adding an op is one module
here (a decorated :class:`OpRule` subclass) plus its schema node; see docs/ir.md.

Shared base: imports numpy, :mod:`qsp.fixedpoint`, :mod:`qsp.bundle.schema`,
:mod:`qsp.errors` only; no stage, no hls4ml/onnx/torch at import time.
"""
from __future__ import annotations

from .base import (Alive, CountOut, Fixed, InferCtx, LayerTypes, OpRule, Resources, Step, TensorInfo,  # noqa: F401
                   WeightInfo)
from .registry import RULES, register, rule, unregister  # noqa: F401
from . import act, join, mask, pool, quantize, reshape, scale_shift, weight  # noqa: F401,E402 - registers the ops
from .quantize import REQUANT  # noqa: F401,E402


__all__ = ["Alive", "CountOut", "Fixed", "InferCtx", "LayerTypes", "OpRule", "Resources", "Step", "TensorInfo",
           "WeightInfo", "RULES", "REQUANT", "register", "rule", "unregister", "ops", "required",
           # the op modules
           "act", "join", "mask", "pool", "quantize", "reshape", "scale_shift", "weight"]


def ops() -> dict[str, OpRule]:
    """Every registered op's rule."""
    return dict(RULES)


def required(op: str, stage: str) -> OpRule:
    """The rule of ``op``, or :class:`~qsp.errors.UnsupportedLayerError` naming ``stage``."""
    from ..errors import UnsupportedLayerError

    r = RULES.get(op)
    if r is None:
        raise UnsupportedLayerError(f"op {op!r} is not supported by {stage} (no rule in qsp.ops; "
                                    f"supported: {sorted(RULES)})")
    return r
