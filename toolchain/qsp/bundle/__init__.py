"""The bundle: what training hands to the compiler and the estimator."""
from .io import Bundle, read_bundle
from .schema import (NODE_TYPES, SCHEMA_VERSION, AvgPool2dNode, Conv2dNode, FlattenNode, LinearNode,
                     MaskNode, MaxPool2dNode, ModelRef, Node, PixelShuffleNode, QSpec, QuantNode,
                     ReluNode, TaskInfo, WeightFormat)

__all__ = ["Bundle", "read_bundle", "SCHEMA_VERSION", "QSpec", "TaskInfo", "ModelRef", "Node",
           "QuantNode", "LinearNode", "Conv2dNode", "ReluNode", "MaskNode", "MaxPool2dNode",
           "AvgPool2dNode", "FlattenNode", "PixelShuffleNode", "WeightFormat", "NODE_TYPES"]
