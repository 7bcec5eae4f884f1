"""The bundle: what training hands to the compiler and the estimator."""
from .io import Bundle, BundleWarning, read_bundle
from .schema import (GRAPH_INPUT, NODE_TYPES, SCHEMA_VERSION, AddNode, AvgPool1dNode, AvgPool2dNode, ClipNode,
                     ConcatNode, Conv1dNode, Conv2dNode, FlattenNode, LeakyReluNode, LinearNode, MaskNode,
                     MaxPool1dNode, MaxPool2dNode, ModelRef, Node,
                     PixelShuffleNode, QSpec, QuantNode, ReluNode, ScaleShiftNode, TaskInfo, WeightFormat,
                     consumers, producers)

__all__ = ["Bundle", "BundleWarning", "read_bundle", "SCHEMA_VERSION", "GRAPH_INPUT", "QSpec", "TaskInfo", "ModelRef", "Node",
           "QuantNode", "LinearNode", "Conv2dNode", "ReluNode", "MaskNode", "MaxPool2dNode",
           "AvgPool2dNode", "FlattenNode", "PixelShuffleNode", "AddNode", "ConcatNode", "ClipNode",
           "ScaleShiftNode", "LeakyReluNode", "Conv1dNode", "MaxPool1dNode", "AvgPool1dNode", "WeightFormat", "NODE_TYPES", "consumers", "producers"]
