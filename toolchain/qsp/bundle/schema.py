"""The bundle: the contract between training and every later stage.

A bundle is a directory::

    qspec.json        this schema (graph of typed nodes, formats, task, metrics)
    weights.npz       "<node>.weight", "<node>.bias": on their fixed-point grid, pruned = 0
    masks.npz         "<node>.mask": activation masks (0/1), one input's shape (NCHW, no batch)
    state_dict.npz    the float model's state_dict (factory + kwargs rebuild it, no pickle)
    test_data.npz     "x", "y": preprocessed test inputs (float32) and targets
    model.onnx        the quantized model as ONNX (Q/DQ-equivalent nodes at every point)
    metrics.json, config.yaml, train_log.csv

The graph (schema 2) is a list of nodes in a topological order; each node names its inputs
(earlier nodes, or ``"input"`` for the graph input) and the last node is the graph output.
Every node knows its first input's shape and its output shape without the batch dimension,
in PyTorch's layout (NCHW). Schema-1 bundles (sequential chains, no ``inputs``) load: each
node then reads the one before it. See docs/bundle.md.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar

from ..errors import BundleError
from ..fixedpoint import FixedFormat

SCHEMA_VERSION = 2
#: versions this qsp reads (1: sequential, upgraded on load)
READABLE_VERSIONS = (1, 2)
#: the name by which nodes refer to the graph input
GRAPH_INPUT = "input"


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
    inputs: list[str] = field(default_factory=list)  # producer node names ("input": the graph input)
    op: ClassVar[str] = "node"
    #: how many inputs the op takes (None: two or more)
    arity: ClassVar[int | None] = 1

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
    groups: int = 1  # in_channels: depthwise; weight shape [out, in/groups, kh, kw]

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels


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


@node_type("clip")
@dataclass
class ClipNode(Node):
    """min(max(x, lo), hi): ReLU6 (0, 6), Hardtanh (lo, hi). ``lo``/``hi`` are exact binary
    fractions (checked against the input grid by the emulator)."""

    lo: float = 0.0
    hi: float = 6.0


@node_type("leaky_relu")
@dataclass
class LeakyReluNode(Node):
    """``x`` for ``x >= 0``, ``slope * x`` below: exact (fraction bits of the input plus
    those of ``param``). ``slope`` lies on the grid of ``param`` (qsp.convert puts a
    LeakyReLU's slope there for training too)."""

    slope: float = 0.01
    param: FixedFormat = None


@node_type("scale_shift")
@dataclass
class ScaleShiftNode(Node):
    """Per-channel ``x * scale[c] + shift[c]`` (a BatchNorm with no weight layer before it).
    ``<name>.weight`` holds the scale (C,), ``<name>.bias`` the shift (C,), on their grids."""

    channels: int = 0
    weight: FixedFormat = None
    bias: FixedFormat = None


@node_type("add")
@dataclass
class AddNode(Node):
    """Elementwise sum of two or more inputs of the same shape (exact: fraction bits of the
    finest input, integer bits widened by ceil(log2 n))."""

    arity: ClassVar[int | None] = None


@node_type("concat")
@dataclass
class ConcatNode(Node):
    """Concatenation of two or more inputs along the channel axis (axis 0 without batch)."""

    arity: ClassVar[int | None] = None


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
        if "param" in d and d["param"] is not None:
            d["param"] = FixedFormat.from_dict(d["param"])
        if "weight" in d and d["weight"] is not None:
            d["weight"] = (FixedFormat.from_dict(d["weight"]) if cls is ScaleShiftNode
                           else WeightFormat.from_dict(d["weight"]))
        if "bias" in d and d["bias"] is not None:
            d["bias"] = FixedFormat.from_dict(d["bias"])
        if cls is ScaleShiftNode and d.get("weight") is not None and isinstance(d["weight"], WeightFormat):
            d["weight"] = d["weight"].formats()[0]
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
        if v not in READABLE_VERSIONS:
            raise BundleError(f"qspec.json: schema_version {v!r} is not supported (this qsp reads "
                              f"{list(READABLE_VERSIONS)}); re-export the bundle with this qsp: "
                              "qsp-train --resume on its run directory, or qsp-train again")
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
        if not isinstance(d["graph"], list):
            raise BundleError("qspec.json: 'graph' must be a list of nodes")
        graph = [node_from_dict(n, f"graph[{i}]") for i, n in enumerate(d["graph"])]
        if v == 1:  # sequential: each node reads the one before it
            for i, n in enumerate(graph):
                if n.inputs:
                    raise BundleError(f"qspec.json: schema_version 1 has no 'inputs' (node {n.name!r})")
                n.inputs = [graph[i - 1].name if i else GRAPH_INPUT]
            v = SCHEMA_VERSION
        check_graph(graph)
        return cls(task=task, model=model, graph=graph, method=d.get("method", "qsparse"),
                   plan=d.get("plan", {}), metrics=d.get("metrics", {}), extra=d.get("extra", {}),
                   schema_version=v, qsp_version=d.get("qsp_version", ""))


def check_graph(graph: list[Node]) -> None:
    """Names unique, inputs name earlier nodes (or the graph input), arity respected."""
    seen = {GRAPH_INPUT}
    for i, n in enumerate(graph):
        if n.name in seen:
            raise BundleError(f"qspec.json: graph[{i}]: node name {n.name!r} is "
                              + ("reserved for the graph input" if n.name == GRAPH_INPUT else "used twice"))
        if not isinstance(n.inputs, list) or not n.inputs or not all(isinstance(x, str) for x in n.inputs):
            raise BundleError(f"qspec.json: graph[{i}] ({n.op} {n.name!r}): 'inputs' must be a non-empty list "
                              "of node names")
        for x in n.inputs:
            if x not in seen:
                raise BundleError(f"qspec.json: graph[{i}] ({n.op} {n.name!r}): input {x!r} is not an earlier "
                                  "node (nodes are listed in execution order)")
        if n.arity is not None and len(n.inputs) != n.arity:
            raise BundleError(f"qspec.json: graph[{i}] ({n.op} {n.name!r}) takes {n.arity} input(s), "
                              f"names {len(n.inputs)}")
        if n.arity is None and len(n.inputs) < 2:
            raise BundleError(f"qspec.json: graph[{i}] ({n.op} {n.name!r}) takes two or more inputs")
        seen.add(n.name)


def producers(graph: list[Node]) -> dict[str, Node]:
    return {n.name: n for n in graph}


def consumers(graph: list[Node]) -> dict[str, list[Node]]:
    """node name (and ``"input"``) -> the nodes reading it, in graph order."""
    out: dict[str, list[Node]] = {GRAPH_INPUT: []}
    for n in graph:
        out.setdefault(n.name, [])
    for n in graph:
        for x in n.inputs:
            out.setdefault(x, []).append(n)
    return out


def sequential_inputs(graph: list[Node]) -> list[Node]:
    """Fill empty ``inputs`` of a chain (each node reads the one before): for graphs built
    in code the sequential way. Returns the graph."""
    for i, n in enumerate(graph):
        if not n.inputs:
            n.inputs = [graph[i - 1].name if i else GRAPH_INPUT]
    return graph


def input_shapes_ok(n: Node, shapes: list[list[int]]) -> str:
    """'' when ``shapes`` (the producers' output shapes) fit node ``n``; else what is wrong."""
    shapes = [list(s) for s in shapes]
    if n.op == "add":
        if any(s != list(n.out_shape) for s in shapes):
            return f"adds inputs of shapes {shapes} into {n.out_shape}: shapes must be equal"
        return ""
    if n.op == "concat":
        if len({len(s) for s in shapes}) != 1 or any(s[1:] != list(n.out_shape)[1:] for s in shapes) \
                or sum(s[0] for s in shapes) != n.out_shape[0]:
            return f"concatenates inputs of shapes {shapes} into {n.out_shape} along channels: shapes do not agree"
        if list(n.in_shape) != shapes[0]:
            return f"expects first input {n.in_shape} but it is {shapes[0]}"
        return ""
    if shapes[0] != list(n.in_shape):
        return f"expects input {n.in_shape} but {n.inputs[0]!r} produces {shapes[0]}"
    return ""


def drop_nodes(graph: list[Node], names) -> list[Node]:
    """The graph without the single-input nodes ``names``; their consumers read their
    inputs instead (for exact identities a transformation removes)."""
    names = set(names)
    src = {}
    for n in graph:
        if n.name in names:
            if len(n.inputs) != 1:
                raise BundleError(f"node {n.name!r} ({n.op}) reads {len(n.inputs)} inputs and cannot be bypassed")
            src[n.name] = src.get(n.inputs[0], n.inputs[0])
    out = [n for n in graph if n.name not in names]
    for n in out:
        n.inputs = [src.get(x, x) for x in n.inputs]
    return out
