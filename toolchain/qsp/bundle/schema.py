"""The bundle: the contract between training and every later stage.

A bundle is a directory::

    qspec.json        this schema (graph of typed nodes, formats, task, metrics)
    weights.npz       "<node>.weight", "<node>.bias": on their fixed-point grid, pruned = 0
    masks.npz         "<node>.mask": activation masks (0/1), one input's shape (NCHW, no batch)
    state_dict.npz    the float model's state_dict (factory + kwargs rebuild it, no pickle)
    test_data.npz     "x", "y": preprocessed test inputs (float32) and targets
    model.onnx        the quantized model as ONNX (Q/DQ-equivalent nodes at every point)
    metrics.json, config.yaml, train_log.csv

The graph is a list of nodes in execution order (sequential models). Every node knows its
input and output shape without the batch dimension, in PyTorch's layout (NCHW).
See docs/bundle.md.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar

from ..errors import BundleError
from ..fixedpoint import FixedFormat

SCHEMA_VERSION = 1


@dataclass
class WeightFormat:
    """Weight quantization: one fraction-bit count per tensor, or one per output channel."""

    bits: int
    frac: int | list[int]
    signed: bool = True
    rounding: str = "convergent"

    @property
    def per_channel(self) -> bool:
        return isinstance(self.frac, list)

    def formats(self) -> list[FixedFormat]:
        fr = self.frac if self.per_channel else [self.frac]
        return [FixedFormat(self.bits, int(f), self.signed, self.rounding) for f in fr]

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(int(d["bits"]), d["frac"] if isinstance(d["frac"], list) else int(d["frac"]),
                   bool(d.get("signed", True)), d.get("rounding", "convergent"))


# ----------------------------------------------------------------------------- nodes
NODE_TYPES: dict[str, type] = {}


def node_type(op):
    def deco(cls):
        cls.op = op
        NODE_TYPES[op] = cls
        return cls
    return deco


@dataclass
class Node:
    name: str
    in_shape: list[int]
    out_shape: list[int]
    source: str = ""  # module path in the training model
    op: ClassVar[str] = "node"

    def to_dict(self) -> dict:
        d = {"op": self.op}
        for k, v in asdict(self).items():
            if isinstance(getattr(self, k), (FixedFormat, WeightFormat)):
                v = getattr(self, k).to_dict()
            d[k] = v
        return d


@node_type("quantize")
@dataclass
class QuantNode(Node):
    """Quantize to ``format`` (round + saturate). The first node quantizes the input."""

    format: FixedFormat = None


@node_type("linear")
@dataclass
class LinearNode(Node):
    in_features: int = 0
    out_features: int = 0
    weight: WeightFormat = None
    bias: FixedFormat | None = None
    weight_sparsity: float = 0.0
    nonzeros: int = 0
    kept_outputs: list[int] | None = None  # structured pruning (DJPQ): kept unit indices


@node_type("conv2d")
@dataclass
class Conv2dNode(Node):
    in_channels: int = 0
    out_channels: int = 0
    kernel_size: list[int] = field(default_factory=lambda: [1, 1])
    stride: list[int] = field(default_factory=lambda: [1, 1])
    padding: list[int] = field(default_factory=lambda: [0, 0])
    weight: WeightFormat = None
    bias: FixedFormat | None = None
    weight_sparsity: float = 0.0
    nonzeros: int = 0
    kept_outputs: list[int] | None = None


@node_type("relu")
@dataclass
class ReluNode(Node):
    pass


@node_type("mask")
@dataclass
class MaskNode(Node):
    """Multiply by a static 0/1 mask of ``in_shape`` (stored in masks.npz as
    ``<name>.mask``)."""

    sparsity: float = 0.0


@node_type("maxpool2d")
@dataclass
class MaxPool2dNode(Node):
    kernel_size: list[int] = field(default_factory=lambda: [2, 2])
    stride: list[int] = field(default_factory=lambda: [2, 2])


@node_type("avgpool2d")
@dataclass
class AvgPool2dNode(Node):
    kernel_size: list[int] = field(default_factory=lambda: [2, 2])
    stride: list[int] = field(default_factory=lambda: [2, 2])


@node_type("flatten")
@dataclass
class FlattenNode(Node):
    pass


@node_type("pixel_shuffle")
@dataclass
class PixelShuffleNode(Node):
    factor: int = 1


def node_from_dict(d: dict, where: str = "graph") -> Node:
    d = dict(d)
    op = d.pop("op", None)
    if op not in NODE_TYPES:
        raise BundleError(f"{where}: unknown node op {op!r}; known: {sorted(NODE_TYPES)}")
    cls = NODE_TYPES[op]
    names = set(cls.__dataclass_fields__)
    unknown = set(d) - names
    if unknown:
        raise BundleError(f"{where} ({op} {d.get('name')!r}): unknown keys {sorted(unknown)}")
    for req in ("name", "in_shape", "out_shape"):
        if req not in d:
            raise BundleError(f"{where} ({op}): missing key {req!r}")
    try:
        if "format" in d and d["format"] is not None:
            d["format"] = FixedFormat.from_dict(d["format"])
        if "weight" in d and d["weight"] is not None:
            d["weight"] = WeightFormat.from_dict(d["weight"])
        if "bias" in d and d["bias"] is not None:
            d["bias"] = FixedFormat.from_dict(d["bias"])
        return cls(**d)
    except (TypeError, ValueError, KeyError) as e:
        raise BundleError(f"{where} ({op} {d.get('name')!r}): {e}") from None


# ----------------------------------------------------------------------------- qspec
@dataclass
class TaskInfo:
    name: str
    kind: str  # "classification" | "super-resolution" | "regression"
    metric: str  # "accuracy" | "psnr" | ...
    input_shape: list[int]
    output_shape: list[int]
    num_classes: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class ModelRef:
    factory: str  # "package.module:function"
    kwargs: dict = field(default_factory=dict)


@dataclass
class QSpec:
    task: TaskInfo
    model: ModelRef
    graph: list[Node]
    method: str = "qsparse"
    plan: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # e.g. order trials (auto), DJPQ reports
    schema_version: int = SCHEMA_VERSION
    qsp_version: str = ""

    # convenience
    def node(self, name: str) -> Node:
        for n in self.graph:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def input_format(self) -> FixedFormat | None:
        n = self.graph[0] if self.graph else None
        return n.format if isinstance(n, QuantNode) else None

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "qsp_version": self.qsp_version,
            "method": self.method,
            "task": asdict(self.task),
            "model": asdict(self.model),
            "plan": self.plan,
            "graph": [n.to_dict() for n in self.graph],
            "metrics": self.metrics,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "QSpec":
        if not isinstance(d, dict):
            raise BundleError("qspec.json: top level must be an object")
        v = d.get("schema_version")
        if v != SCHEMA_VERSION:
            raise BundleError(f"qspec.json: schema_version {v!r} is not supported (this qsp reads {SCHEMA_VERSION})")
        known = {"schema_version", "qsp_version", "method", "task", "model", "plan", "graph", "metrics", "extra"}
        unknown = set(d) - known
        if unknown:
            raise BundleError(f"qspec.json: unknown keys {sorted(unknown)}")
        for req in ("task", "model", "graph"):
            if req not in d:
                raise BundleError(f"qspec.json: missing key {req!r}")
        try:
            task = TaskInfo(**d["task"])
            model = ModelRef(**d["model"])
        except TypeError as e:
            raise BundleError(f"qspec.json: bad task/model entry: {e}") from None
        graph = [node_from_dict(n, f"graph[{i}]") for i, n in enumerate(d["graph"])]
        names = [n.name for n in graph]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise BundleError(f"qspec.json: duplicate node names {sorted(dup)}")
        return cls(task=task, model=model, graph=graph, method=d.get("method", "qsparse"),
                   plan=d.get("plan", {}), metrics=d.get("metrics", {}), extra=d.get("extra", {}),
                   schema_version=v, qsp_version=d.get("qsp_version", ""))
