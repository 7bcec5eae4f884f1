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
node then reads the one before it. Schema 3 adds ``checksums`` (sha256 of every array) and
the trained model's outputs on the test inputs (test_data.npz ``model_out``).

Reading is strict (:func:`parse_json`, :func:`check_spec_dict`): JSON types exactly as
written by qsp (a bool is ``true``/``false``, an integer field holds a JSON integer), formats
in range, node names safe identifiers in every backend, shapes as each op implies. See
docs/bundle.md.
"""
from __future__ import annotations

import json
import keyword
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

from ..errors import BundleError
from ..fixedpoint import ROUNDING_MODES, FixedFormat

SCHEMA_VERSION = 3
#: versions this qsp reads (1: sequential, upgraded on load; 1 and 2 have no checksums and
#: no trained-model outputs: they load with a warning, qsp-compile skips that check)
READABLE_VERSIONS = (1, 2, 3)
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
        """From a dict already checked by :func:`check_spec_dict` (exact types)."""
        return cls(d["bits"], list(d["frac"]) if isinstance(d["frac"], list) else d["frac"], d["signed"],
                   d["rounding"])


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


@node_type("conv1d")
@dataclass
class Conv1dNode(Conv2dNode):
    """A 1-D convolution on ``[C, L]`` (groups 1; weight shape ``[out, in, k]``). Every
    stage computes it as the ``conv2d`` of height 1 (:func:`conv_as_2d`)."""

    kernel_size: list[int] = field(default_factory=lambda: [1])
    stride: list[int] = field(default_factory=lambda: [1])
    padding: list[int] = field(default_factory=lambda: [0])


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


@node_type("maxpool1d")
@dataclass
class MaxPool1dNode(MaxPool2dNode):
    """Max pooling on ``[C, L]`` (the ``maxpool2d`` of height 1)."""

    kernel_size: list[int] = field(default_factory=lambda: [2])
    stride: list[int] = field(default_factory=lambda: [2])


@node_type("avgpool1d")
@dataclass
class AvgPool1dNode(AvgPool2dNode):
    """Average pooling on ``[C, L]`` (the ``avgpool2d`` of height 1)."""

    kernel_size: list[int] = field(default_factory=lambda: [2])
    stride: list[int] = field(default_factory=lambda: [2])


#: 1-D node types: each is its 2-D parent with height 1
ONE_D = {"conv1d": "conv2d", "maxpool1d": "maxpool2d", "avgpool1d": "avgpool2d"}


def as_2d_lists(n: Node) -> dict:
    """The 2-D ``kernel_size`` / ``stride`` / ``padding`` of a 1-D or 2-D conv/pool node
    (height 1, no padding along it for a 1-D node)."""
    one_d = n.op in ONE_D
    out = {}
    for k, fill in (("kernel_size", 1), ("stride", 1), ("padding", 0)):
        v = getattr(n, k, None)
        if v is not None:
            out[k] = [fill, int(v[0])] if one_d else [int(v[0]), int(v[1])]
    return out


def as_2d(n: Node) -> Node:
    """The 2-D node a 1-D one is (``conv1d`` -> ``conv2d`` on ``[C, 1, L]``, kernel
    ``(1, k)``, ...); any other node unchanged. For stages that compute 1-D ops with their
    2-D code."""
    if n.op not in ONE_D:
        return n
    parent = NODE_TYPES[ONE_D[n.op]]
    d = {f.name: getattr(n, f.name) for f in fields(parent)}
    i, o = n.in_shape, n.out_shape
    d.update(as_2d_lists(n), in_shape=[i[0], 1, i[1]], out_shape=[o[0], 1, o[1]])
    return parent(**d)


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


def node_from_dict(d: dict, where: str = "graph", version: int = SCHEMA_VERSION) -> Node:
    """A node from its JSON dict (checked by :func:`check_node_dict` first)."""
    check_node_dict(d, where, version)
    d = dict(d)
    cls = NODE_TYPES[d.pop("op")]
    for key in ("format", "param", "bias"):
        if d.get(key) is not None:
            d[key] = FixedFormat.from_dict(d[key])
    if d.get("weight") is not None:
        d["weight"] = (FixedFormat.from_dict(d["weight"]) if cls is ScaleShiftNode
                       else WeightFormat.from_dict(d["weight"]))
    return cls(**d)


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
    #: file -> array key -> sha256 (:func:`qsp.bundle.io.array_digest`), filled by Bundle.write
    checksums: dict = field(default_factory=dict)

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
            "checksums": self.checksums,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "QSpec":
        """From parsed qspec.json: every type and range checked first (:func:`check_spec_dict`);
        a schema-1 graph is upgraded (each node reads the one before it)."""
        v = check_spec_dict(d)
        task = TaskInfo(**d["task"])
        model = ModelRef(**d["model"])
        graph = [node_from_dict(n, f"graph[{i}]", v) for i, n in enumerate(d["graph"])]
        if v == 1:  # sequential: each node reads the one before it
            for i, n in enumerate(graph):
                n.inputs = [graph[i - 1].name if i else GRAPH_INPUT]
        check_graph(graph)
        return cls(task=task, model=model, graph=graph, method=d.get("method", "qsparse"), plan=d.get("plan", {}),
                   metrics=d.get("metrics", {}), extra=d.get("extra", {}), schema_version=SCHEMA_VERSION,
                   qsp_version=d.get("qsp_version", ""), checksums=d.get("checksums", {}))


def check_graph(graph: list[Node]) -> None:
    """Names safe and unique, inputs name earlier nodes (or the graph input), arity
    respected, each node's fields consistent (:func:`node_problem`)."""
    seen = {GRAPH_INPUT}
    if not graph:
        raise BundleError("qspec.json: the graph has no nodes")
    for i, n in enumerate(graph):
        label = f"qspec.json: graph[{i}] ({n.op} {n.name!r})"
        check_name(n.name, label)
        _check_shape(n.in_shape, f"{label}: in_shape")
        _check_shape(n.out_shape, f"{label}: out_shape")
        wrong = node_problem(n)
        if wrong:
            raise BundleError(f"{label}: {wrong}")
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


# ----------------------------------------------------------------------------- strict reading
#: qspec.json larger than this is refused before parsing
MAX_JSON_BYTES = 64 * 2 ** 20
#: nesting depth of qspec.json (objects and lists)
MAX_JSON_DEPTH = 64
#: formats in a bundle: bits and |frac| within these
MAX_BITS, MAX_FRAC = 32, 128
#: every dimension of a node shape, and the number of elements of one tensor
MAX_DIM, MAX_ELEMENTS = 2 ** 20, 2 ** 28
#: a node name: a safe identifier in C++ (hls4ml's layer and type names), ONNX and Python;
#: names hls4ml would rewrite (``a.b``, ``d"x``) are refused rather than silently renamed
NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}\Z")
CPP_KEYWORDS = frozenset("""alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t
char16_t char32_t class compl concept const consteval constexpr constinit const_cast continue co_await co_return
co_yield decltype default delete do double dynamic_cast else enum explicit export extern false float for friend
goto if inline int long mutable namespace new noexcept not not_eq nullptr operator or or_eq private protected public
register reinterpret_cast requires return short signed sizeof static static_assert static_cast struct switch
template this thread_local throw true try typedef typeid typename union unsigned using virtual void volatile wchar_t
while xor xor_eq""".split())
TOP_KEYS = ("schema_version", "qsp_version", "method", "task", "model", "plan", "graph", "metrics", "extra",
            "checksums")
TASK_KINDS = ("classification", "super-resolution", "regression")


def parse_json(data: bytes, where: str = "qspec.json"):
    """Parse qspec.json bytes strictly: UTF-8, no NaN/Infinity, no duplicate keys, bounded
    size and depth. Raises BundleError naming the problem."""
    if len(data) > MAX_JSON_BYTES:
        raise BundleError(f"{where}: {len(data)} bytes is larger than the {MAX_JSON_BYTES} bytes qsp reads")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BundleError(f"{where}: not UTF-8 text (byte {e.start}): not a qspec.json") from None

    def pairs(kv):
        d = {}
        for k, v in kv:
            if k in d:
                raise BundleError(f"{where}: key {k!r} appears twice in one object")
            d[k] = v
        return d

    def constant(c):
        raise BundleError(f"{where}: {c} is not a JSON number (qsp writes finite numbers only)")

    try:
        obj = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except RecursionError:
        raise BundleError(f"{where}: nested deeper than Python's parser can follow") from None
    except ValueError as e:
        raise BundleError(f"{where}: not valid JSON ({e})") from None
    stack = [(obj, 1)]
    while stack:
        o, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise BundleError(f"{where}: nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(o, dict):
            stack.extend((v, depth + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, depth + 1) for v in o)
    return obj


def _jtype(v) -> str:
    """How a JSON value reads to a user ("'false' (a string)")."""
    names = {bool: "a bool", int: "an integer", float: "a number with a fraction", str: "a string",
             list: "a list", dict: "an object", type(None): "null"}
    r = repr(v)
    return f"{r if len(r) <= 40 else r[:37] + '...'} ({names.get(type(v), type(v).__name__)})"


def _conforms(v, t) -> bool:
    """``v`` (parsed JSON) has exactly the type ``t`` (a field annotation)."""
    if t is bool:
        return type(v) is bool
    if t is int:
        return type(v) is int
    if t is float:
        return type(v) in (int, float) and math.isfinite(v)
    if t is str:
        return type(v) is str
    if t in (dict, list):
        return type(v) is t
    if t is type(None):
        return v is None
    if t in (FixedFormat, WeightFormat):
        return type(v) is dict
    origin = typing.get_origin(t)
    if origin is list:
        (arg,) = typing.get_args(t)
        return type(v) is list and all(_conforms(x, arg) for x in v)
    if origin in (types.UnionType, typing.Union):
        return any(_conforms(v, a) for a in typing.get_args(t))
    raise TypeError(f"no JSON rule for {t!r}")  # a field type qsp does not know: a qsp bug


def _describe(t) -> str:
    names = {bool: "a JSON bool (true/false)", int: "a JSON integer", float: "a finite JSON number",
             str: "a string", dict: "an object", list: "a list", type(None): "null", FixedFormat: "a format object",
             WeightFormat: "a weight format object"}
    if t in names:
        return names[t]
    if typing.get_origin(t) is list:
        return f"a list of {_describe(typing.get_args(t)[0]).replace('a ', '', 1)}s"
    if typing.get_origin(t) in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in typing.get_args(t))
    return str(t)


def _check_fields(d: dict, cls, where: str, required, skip=()) -> None:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known - {"op"})
    if unknown:
        raise BundleError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    for k in required:
        if k not in d:
            raise BundleError(f"{where}: missing key {k!r}")
    for k, v in d.items():
        if k == "op" or k in skip:
            continue
        if not _conforms(v, hints[k]):
            raise BundleError(f"{where}: key {k!r} must be {_describe(hints[k])}, got {_jtype(v)}")


def check_format_dict(d, where: str, weight: bool = False) -> None:
    """A format object: ``bits`` (JSON integer in [1, 32]), ``frac`` (integer in [-128, 128];
    for a weight also a list of them, one per output channel), ``signed`` (JSON bool),
    ``rounding`` (a known mode); all four keys."""
    if type(d) is not dict:
        raise BundleError(f"{where}: must be a format object {{bits, frac, signed, rounding}}, got {_jtype(d)}")
    _check_fields(d, WeightFormat if weight else FixedFormat, where, ("bits", "frac", "signed", "rounding"))
    if not 1 <= d["bits"] <= MAX_BITS:
        raise BundleError(f"{where}: key 'bits' = {d['bits']} is out of range [1, {MAX_BITS}]")
    fr = d["frac"] if isinstance(d["frac"], list) else [d["frac"]]
    if not fr or any(not -MAX_FRAC <= f <= MAX_FRAC for f in fr):
        raise BundleError(f"{where}: key 'frac' = {d['frac']} must be integer(s) in [-{MAX_FRAC}, {MAX_FRAC}]")
    if d["rounding"] not in ROUNDING_MODES:
        raise BundleError(f"{where}: key 'rounding' = {d['rounding']!r} is not one of {sorted(ROUNDING_MODES)}")


def check_name(name, where: str) -> None:
    """A node name that every backend keeps as is (see :data:`NAME_RE`)."""
    if not isinstance(name, str) or not NAME_RE.match(name) or "__" in name or name in CPP_KEYWORDS \
            or keyword.iskeyword(name):
        raise BundleError(f"{where}: node name {name!r} is not a safe identifier: a letter, then letters, digits "
                          "and single underscores (at most 63 characters), not a C++ or Python keyword; hls4ml "
                          "would rename it and lose qsp's settings for it")


def check_node_dict(d, where: str, version: int = SCHEMA_VERSION) -> None:
    """One node's JSON: a known op, its keys only, every value of exactly its type."""
    if type(d) is not dict:
        raise BundleError(f"qspec.json: {where} must be a node object, got {_jtype(d)}")
    op = d.get("op")
    if type(op) is not str or op not in NODE_TYPES:
        raise BundleError(f"qspec.json: {where}: unknown node op {op!r}; known: {sorted(NODE_TYPES)}")
    cls = NODE_TYPES[op]
    label = f"qspec.json: {where} ({op} {d.get('name')!r})"
    names = [f.name for f in fields(cls)]
    required = ("name", "in_shape", "out_shape") if version < 3 else names
    if version == 1 and "inputs" in d:
        raise BundleError(f"{label}: schema_version 1 has no 'inputs'")
    formats = ("format", "param", "weight", "bias")
    _check_fields(d, cls, label, required, skip=formats)
    for k in formats:
        if k not in d:
            continue
        optional = typing.get_type_hints(cls)[k]
        if d[k] is None and _conforms(None, optional):
            continue
        check_format_dict(d[k], f"{label}: key {k!r}", weight=(k == "weight" and cls is not ScaleShiftNode))
    check_name(d["name"], label)


def check_spec_dict(d) -> int:
    """Every type and range of parsed qspec.json (the graph's semantics are checked by
    :func:`check_graph`). Returns the schema version."""
    if type(d) is not dict:
        raise BundleError(f"qspec.json: the top level must be an object, got {_jtype(d)}")
    v = d.get("schema_version")
    if type(v) is not int or v not in READABLE_VERSIONS:
        raise BundleError(f"qspec.json: schema_version {v!r} is not supported (this qsp reads "
                          f"{list(READABLE_VERSIONS)}); re-export the bundle with this qsp: "
                          "qsp-train --resume on its run directory, or qsp-train again")
    allowed = TOP_KEYS if v >= 3 else TOP_KEYS[:-1]
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise BundleError(f"qspec.json: unknown key(s) {unknown} for schema_version {v}")
    for req in (allowed if v >= 3 else ("task", "model", "graph")):
        if req not in d:
            raise BundleError(f"qspec.json: missing key {req!r}")
    for key, t in (("qsp_version", str), ("method", str), ("task", dict), ("model", dict), ("plan", dict),
                   ("graph", list), ("metrics", dict), ("extra", dict), ("checksums", dict)):
        if key in d and not _conforms(d[key], t):
            raise BundleError(f"qspec.json: key {key!r} must be {_describe(t)}, got {_jtype(d[key])}")
    _check_fields(d["task"], TaskInfo, "qspec.json: task", [f.name for f in fields(TaskInfo)] if v >= 3
                  else ("name", "kind", "metric", "input_shape", "output_shape"))
    if d["task"]["kind"] not in TASK_KINDS:
        raise BundleError(f"qspec.json: task: kind {d['task']['kind']!r} is not one of {list(TASK_KINDS)}")
    for k in ("input_shape", "output_shape"):
        _check_shape(d["task"][k], f"qspec.json: task: key {k!r}")
    nc = d["task"].get("num_classes")
    if nc is not None and nc < 1:
        raise BundleError(f"qspec.json: task: num_classes {nc} must be at least 1")
    _check_fields(d["model"], ModelRef, "qspec.json: model", ("factory",) if v < 3 else ("factory", "kwargs"))
    if not d["graph"]:
        raise BundleError("qspec.json: 'graph' is empty (a bundle has at least its input quantizer)")
    for i, n in enumerate(d["graph"]):
        check_node_dict(n, f"graph[{i}]", v)
    for fname, sums in d.get("checksums", {}).items():
        if type(sums) is not dict or not all(type(h) is str and re.fullmatch(r"[0-9a-f]{64}", h)
                                             for h in sums.values()):
            raise BundleError(f"qspec.json: checksums[{fname!r}] must map array names to sha256 hex digests")
    return v


def _check_shape(s, where: str) -> None:
    if not isinstance(s, (list, tuple)) or not 1 <= len(s) <= 3 or \
            not all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= MAX_DIM for x in s) or \
            math.prod(s) > MAX_ELEMENTS:
        raise BundleError(f"{where}: shape {s!r} must be 1 to 3 positive integers (no batch dimension)")


def _pair_ok(v, low: int, n: int = 2) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == n and all(
        isinstance(x, int) and not isinstance(x, bool) and low <= x <= MAX_DIM for x in v)


def node_problem(n: Node) -> str:
    """'' when the node's own fields agree with each other (the output shape its op implies
    from its input shape, formats in range, per-channel lists as long as the channels);
    else what is wrong. Inputs are checked by :func:`input_shapes_ok`."""
    i, o = list(n.in_shape), list(n.out_shape)
    for fmt_key in ("format", "param", "bias"):
        f = getattr(n, fmt_key, None)
        if f is not None and (not 1 <= f.bits <= MAX_BITS or not -MAX_FRAC <= f.frac <= MAX_FRAC):
            return f"{fmt_key} {f} is outside bits [1, {MAX_BITS}], frac [-{MAX_FRAC}, {MAX_FRAC}]"
    if isinstance(n, (QuantNode,)) and n.format is None:
        return "has no format"
    if isinstance(n, LeakyReluNode) and n.param is None:
        return "has no param format"
    if n.op in ("quantize", "relu", "mask", "clip", "leaky_relu", "scale_shift", "add"):
        if o != i:
            return f"output shape {o} must equal its input shape {i}"
    if isinstance(n, (LinearNode, Conv2dNode)):
        w = n.weight
        if w is None:
            return "has no weight format"
        fr = w.frac if w.per_channel else [w.frac]
        if isinstance(w.bits, bool) or not isinstance(w.bits, int) or not 1 <= w.bits <= MAX_BITS \
                or not fr or any(isinstance(f, bool) or not isinstance(f, int) or not -MAX_FRAC <= f <= MAX_FRAC
                                 for f in fr) or w.rounding not in ROUNDING_MODES or not isinstance(w.signed, bool):
            return f"weight format {w} is outside bits [1, {MAX_BITS}], frac [-{MAX_FRAC}, {MAX_FRAC}]"
        if w.per_channel and len(w.frac) != o[0]:
            return f"has {len(w.frac)} per-channel fraction bits for {o[0]} output channels"
        if not isinstance(n.nonzeros, int) or n.nonzeros < 0:
            return f"nonzeros {n.nonzeros!r} must be a non-negative integer"
        if not 0 <= n.weight_sparsity <= 1:
            return f"weight_sparsity {n.weight_sparsity!r} must lie in [0, 1]"
        k = n.kept_outputs
        if k is not None and (len(set(k)) != len(k) or any(x < 0 for x in k)):
            return f"kept_outputs {k} must be distinct non-negative indices"
    if isinstance(n, LinearNode):
        if len(i) != 1 or len(o) != 1 or n.in_features != i[0] or n.out_features != o[0]:
            return (f"in_features {n.in_features} / out_features {n.out_features} must be the sizes of its "
                    f"1-D input {i} and output {o}")
    elif isinstance(n, Conv2dNode):
        nd = 1 if n.op in ONE_D else 2
        if len(i) != nd + 1 or len(o) != nd + 1:
            return f"input {i} and output {o} must be {'[C, L]' if nd == 1 else '[C, H, W]'}"
        if not (_pair_ok(n.kernel_size, 1, nd) and _pair_ok(n.stride, 1, nd) and _pair_ok(n.padding, 0, nd)):
            return (f"kernel_size {n.kernel_size} / stride {n.stride} / padding {n.padding} must be "
                    f"{'one integer each' if nd == 1 else 'integer pairs'}")
        g = n.groups
        if not isinstance(g, int) or g < 1 or n.in_channels != i[0] or n.out_channels != o[0] or i[0] % g or o[0] % g:
            return (f"in_channels {n.in_channels}, out_channels {n.out_channels}, groups {g} do not fit its input "
                    f"{i} and output {o}")
        if nd == 1 and g != 1:
            return f"groups {g}: a conv1d has groups 1"
        want = [o[0]] + [(i[d + 1] + 2 * n.padding[d] - n.kernel_size[d]) // n.stride[d] + 1 for d in range(nd)]
        if want != o:
            return f"output shape {o} is not the {want} its input {i}, kernel, stride and padding give"
    elif isinstance(n, (MaxPool2dNode, AvgPool2dNode)):
        nd = 1 if n.op in ONE_D else 2
        if len(i) != nd + 1 or not (_pair_ok(n.kernel_size, 1, nd) and _pair_ok(n.stride, 1, nd)):
            return (f"input {i} must be {'[C, L]' if nd == 1 else '[C, H, W]'}, kernel_size {n.kernel_size} and "
                    f"stride {n.stride} {'one integer each' if nd == 1 else 'integer pairs'}")
        want = [i[0]] + [(i[d + 1] - n.kernel_size[d]) // n.stride[d] + 1 for d in range(nd)]
        if want != o or min(want) < 1:
            return f"output shape {o} is not the {want} its input {i}, kernel and stride give"
    elif isinstance(n, FlattenNode):
        if o != [math.prod(i)]:
            return f"output shape {o} must be [{math.prod(i)}] (its input {i} flattened)"
    elif isinstance(n, PixelShuffleNode):
        f = n.factor
        if not isinstance(f, int) or f < 1 or len(i) != 3 or i[0] % (f * f) or \
                o != [i[0] // (f * f), i[1] * f, i[2] * f]:
            return f"factor {f!r} does not turn its input {i} into its output {o}"
    elif isinstance(n, ClipNode):
        if not (math.isfinite(n.lo) and math.isfinite(n.hi) and n.lo <= n.hi):
            return f"bounds lo {n.lo} / hi {n.hi} must be finite with lo <= hi"
    elif isinstance(n, ScaleShiftNode):
        if n.weight is None or n.bias is None or n.channels != i[0]:
            return f"needs scale and shift formats and channels == {i[0]} (its input {i})"
    elif isinstance(n, MaskNode):
        if not 0 <= n.sparsity <= 1:
            return f"sparsity {n.sparsity!r} must lie in [0, 1]"
    own = getattr(n, "problem", None)  # a node type defined with its op (qsp.ops) checks itself
    return own() if callable(own) else ""
