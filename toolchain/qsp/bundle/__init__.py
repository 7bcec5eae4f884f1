"""The bundle: what training hands to the compiler and the estimator."""
from .io import Bundle, BundleWarning, read_bundle
from .schema import (GRAPH_INPUT, NODE_TYPES, SCHEMA_VERSION, AddNode, AvgPool2dNode, ClipNode, ConcatNode,
                     Conv2dNode, FlattenNode, LeakyReluNode, LinearNode, MaskNode, MaxPool2dNode, ModelRef, Node,
                     PixelShuffleNode, QSpec, QuantNode, ReluNode, ScaleShiftNode, TaskInfo, WeightFormat,
                     consumers, producers)

__all__ = ["Bundle", "BundleWarning", "read_bundle", "SCHEMA_VERSION", "GRAPH_INPUT", "QSpec", "TaskInfo", "ModelRef", "Node",
           "QuantNode", "LinearNode", "Conv2dNode", "ReluNode", "MaskNode", "MaxPool2dNode",
           "AvgPool2dNode", "FlattenNode", "PixelShuffleNode", "AddNode", "ConcatNode", "ClipNode",
           "ScaleShiftNode", "LeakyReluNode", "WeightFormat", "NODE_TYPES", "consumers", "producers"]
