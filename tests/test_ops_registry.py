"""One IR, one rule object per op (qsp.ops): every bundle op has exactly one rule with every
facet; a new op is one module (its schema node and its rule) and reaches the emulator, the
compiler's precision plan, the estimator's counts/resources/footprint and (with one glue
function) ONNX; the stage drivers hold no per-op dispatch tables."""
from __future__ import annotations

import ast
import inspect
import re
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from qsp import ops
from qsp.bundle.schema import NODE_TYPES
from qsp.ops.base import OpRule
from tests.graphs import linear, make, quant, random_codes

ROOT = Path(__file__).resolve().parents[1] / "toolchain" / "qsp"

#: facets every op defines itself (no meaningful default in OpRule)
OWN = ("infer", "run", "torch_forward")
#: facets with a default that fits value-preserving ops (counts: zeros stay zeros; types:
#: the input's type; resources: free)
DEFAULTED = ("types", "counts", "resources", "latency_only", "pool_window", "hls_class_of", "weight_resources",
             "kernel_constants", "stream_words", "stream_resources", "stream_weight_resources")
WEIGHT_FACETS = ("weight_count", "bias_count", "weight_nonzeros")
DATA = ("op", "multi_input", "hls_class", "casting", "commuting", "producer", "transparent", "strategy", "weighted",
        "host_reshape", "post_sensitive", "unrolled", "reuse_at_most_n_in", "per_unit", "elementwise")


# ----------------------------------------------------------------------------- (i) one rule per op
def test_every_schema_op_has_exactly_one_rule_with_every_facet():
    assert set(ops.RULES) == set(NODE_TYPES), "a schema op without a rule, or a rule without a schema op"
    assert len({id(r) for r in ops.RULES.values()}) == len(ops.RULES)
    for op, r in ops.RULES.items():
        assert isinstance(r, OpRule) and r.op == op
        assert type(r).__module__.startswith("qsp.ops."), f"{op}: its rule lives outside qsp.ops"
        for facet in OWN:
            assert getattr(type(r), facet) is not getattr(OpRule, facet), f"{op}: no {facet} of its own"
        for facet in OWN + DEFAULTED:
            assert callable(getattr(r, facet)), f"{op}: facet {facet} missing"
        for attr in DATA:
            assert hasattr(r, attr)
        assert r.hls_class, f"{op}: no HLS mapping"
        if r.weighted:
            for facet in WEIGHT_FACETS:
                assert getattr(type(r), facet) is not getattr(OpRule, facet) or facet == "weight_nonzeros", \
                    f"{op}: weight layer without {facet}"


def test_ops_package_imports_downward_only():
    """qsp.ops is shared base: numpy, qsp.fixedpoint, the schema, qsp.errors only."""
    allowed = {"__future__", "math", "dataclasses", "numpy", "typing", "collections"}
    for path in sorted((ROOT / "ops").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only (torch is passed in, never imported)
            if isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level == 0:
                    assert mod.split(".")[0] in allowed, f"{path.name}: imports {mod}"
                elif node.level == 2:
                    assert mod in ("fixedpoint", "errors", "bundle.schema"), f"{path.name}: imports ..{mod}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    assert a.name.split(".")[0] in allowed, f"{path.name}: imports {a.name}"


def _imports(path: Path, stage: str) -> bool:
    return bool(re.search(rf"from \.\.{stage}\b|from qsp\.{stage}\b|import qsp\.{stage}\b", path.read_text()))


def test_stages_import_downward_only():
    """estimate never imports compile; compile (its library modules) never imports estimate:
    the board check is passed in (CompileOptions.fit); only qsp-compile's command line,
    which composes the stages, names the estimator."""
    for path in sorted((ROOT / "estimate").glob("*.py")) + sorted((ROOT / "ops").glob("*.py")):
        assert not _imports(path, "compile"), path.name
    for path in sorted((ROOT / "compile").glob("*.py")):
        if path.name != "cli.py":
            assert not _imports(path, "estimate"), path.name
    assert _imports(ROOT / "compile" / "cli.py", "estimate")  # the check can fail


# ----------------------------------------------------------------------------- (ii) a toy op, one module
TOY_MODULE = '''
"""``neg``: y = -x, exact on the codes (its schema node and its rule, nothing else)."""
from dataclasses import dataclass

import numpy as np

from qsp.bundle.schema import Node, node_type
from qsp.fixedpoint import format_for_codes
from qsp.ops.base import Fixed, LayerTypes, OpRule, TensorInfo, elementwise, need_info
from qsp.ops.registry import register


@node_type("neg")
@dataclass
class NegNode(Node):
    def problem(self) -> str:
        return "" if list(self.out_shape) == list(self.in_shape) else "output shape must equal its input shape"


@register
class Neg(OpRule):
    op = "neg"
    hls_class = "QspNeg"
    casting = True

    def infer(self, ctx, node, info):
        info = need_info(node, info)
        return TensorInfo(info.frac, info.bound, True), {}

    def run(self, step, x):
        return Fixed(-x.codes, x.frac)

    def torch_forward(self, node, t, bundle, torch, F):
        return -t

    def types(self, bundle, node, ins, post):
        c = ins[0]
        return LayerTypes(format_for_codes(-c.int_max, -c.int_min, c.frac))

    def resources(self, n):
        return elementwise(n, 1)
'''


@pytest.fixture
def toy_op():
    mod = types.ModuleType("qsp_toy_neg")
    exec(compile(textwrap.dedent(TOY_MODULE), "qsp_toy_neg.py", "exec"), mod.__dict__)
    sys.modules[mod.__name__] = mod
    try:
        yield mod
    finally:
        ops.unregister("neg")
        NODE_TYPES.pop("neg", None)
        sys.modules.pop(mod.__name__, None)


def _toy_bundle(mod, seed=0):
    rng = np.random.default_rng(seed)
    nodes = [quant("input_quant", [12], 6, 3), mod.NegNode(name="neg1", in_shape=[12], out_shape=[12]),
             linear("dense1", 12, 5, 5, 4, 8, 6)]
    w = {"dense1.weight": random_codes(rng, (5, 12), 5) / 16, "dense1.bias": random_codes(rng, (5,), 8) / 64}
    b = make(nodes, w)
    b.test_x = rng.uniform(-5, 5, (32, 12)).astype(np.float32)
    return b


def test_a_new_op_is_one_module(toy_op, tmp_path):
    from qsp.bundle import read_bundle
    from qsp.bundle.footprint import footprint
    from qsp.compile.precision import derive
    from qsp.estimate import estimate
    from qsp.estimate.counts import count_graph
    from qsp.verify.emulate import analyze, emulate, fake_quant_forward

    assert "neg" in ops.RULES and "neg" in NODE_TYPES
    b = _toy_bundle(toy_op)
    x = b.test_x

    # emulation: exact, and equal to the float32 forward (all codes far below 2**24)
    tr = emulate(b, x, trace=True)
    q = b.graph[0].format.quantize_np(x.astype(np.float64))
    assert np.array_equal(tr["neg1"], -q)
    assert np.array_equal(emulate(b, x), fake_quant_forward(b, x))
    st = {s.node.name: s for s in analyze(b)}
    assert st["neg1"].out_info.frac == 3 and st["neg1"].out_info.signed

    # the precision plan: the rule's types (-x of a signed 6-bit value needs 7 bits) and its
    # HLS mapping; a quantize after it would fold into its cast
    plan = derive(b)
    lp = plan.by_name()["neg1"]
    assert (lp.result.bits, lp.result.frac, lp.result.signed) == (7, 3, True)
    assert "QspNeg" in plan.table()
    assert plan.by_name()["dense1"].input_format == lp.result

    # the estimator: counts (0 MACs, alive map passed through), resources from the rule, footprint
    c = {n.name: n for n in count_graph(b).nodes}
    assert c["neg1"].weight is None and c["neg1"].out_nonzero == 12 and c["dense1"].weight.macs_dense == 60
    est = estimate(b, "pynq-z2").to_dict()
    assert est["totals"]["macs_dense"] == 60
    assert footprint(b).weights == 60

    # the bundle round-trips through the strict schema (the node type is the op module's)
    b.write(tmp_path / "bundle")
    again = read_bundle(tmp_path / "bundle")
    assert [n.op for n in again.graph] == ["quantize", "neg", "linear"]
    assert np.array_equal(emulate(again, x), emulate(b, x))


def test_a_new_op_reaches_onnx_with_one_glue_function(toy_op):
    """ONNX node builders are stage glue keyed by op; the rule's Step (formats, params) is
    what they read. One function makes the toy op exportable, bit-exact."""
    from qsp.export import onnx as qonnx_export
    from qsp.verify.emulate import emulate

    def _neg(b, st, x, bundle):
        return qonnx_export._T(b.op("Neg", [x.name]), x.double, st.out_info)

    qonnx_export._HANDLERS["neg"] = _neg
    try:
        b = _toy_bundle(toy_op, seed=1)
        model = qonnx_export.build_onnx(b)
        got = qonnx_export.run_onnx(model, b.test_x)
        assert np.array_equal(np.asarray(got, np.float64), emulate(b, b.test_x))
    finally:
        qonnx_export._HANDLERS.pop("neg", None)


def test_an_op_without_a_rule_is_refused_by_every_driver(toy_op):
    from qsp.compile.precision import derive
    from qsp.errors import UnsupportedLayerError
    from qsp.estimate.counts import count_graph
    from qsp.verify.emulate import analyze

    b = _toy_bundle(toy_op)
    ops.unregister("neg")
    for fn in (analyze, derive, count_graph):
        with pytest.raises(UnsupportedLayerError, match="neg"):
            fn(b)


# ----------------------------------------------------------------------------- (iii) drivers, not tables
DRIVERS = ["verify/emulate.py", "compile/precision.py", "estimate/counts.py", "estimate/resources.py",
           "estimate/stream.py", "bundle/footprint.py", "hardware.py"]


def _op_literals(tree: ast.AST) -> list[str]:
    """Per-op dispatch in a module: a decorator called with an op name, a dict literal keyed
    by op names, or a comparison of ``.op`` against op-name literals."""
    names = set(NODE_TYPES) - {"neg"}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            for d in node.decorator_list:
                if isinstance(d, ast.Call) and any(isinstance(a, ast.Constant) and a.value in names for a in d.args):
                    found.append(f"decorator on {node.name}")
        if isinstance(node, ast.Dict):
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
            if sum(k in names for k in keys) >= 2:
                found.append(f"dict keyed by ops at line {node.lineno}")
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute) and node.left.attr == "op":
            for c in node.comparators:
                consts = [c] if isinstance(c, ast.Constant) else list(getattr(c, "elts", []))
                if any(isinstance(e, ast.Constant) and e.value in names for e in consts):
                    found.append(f".op compared with an op name at line {node.lineno}")
        if isinstance(node, (ast.Set, ast.Tuple, ast.List)):
            vals = [e.value for e in node.elts if isinstance(e, ast.Constant)]
            if sum(v in names for v in vals) >= 2:
                found.append(f"a collection of op names at line {node.lineno}")
    return found


@pytest.mark.parametrize("rel", DRIVERS)
def test_stage_drivers_hold_no_per_op_tables(rel):
    assert _op_literals(ast.parse((ROOT / rel).read_text())) == []


def test_the_table_check_can_fail():
    src = '@reg("relu")\ndef f(): pass\nT = {"linear": 1, "conv2d": 2}\nif n.op == "mask": pass\nS = ("add", "concat")\n'
    assert len(_op_literals(ast.parse(src))) == 4


def test_rules_agree_with_the_stage_views():
    """The stage-facing views are read off the rules, not kept beside them."""
    from qsp import hardware
    from qsp.compile.precision import HLS_CLASS

    assert hardware.STRATEGY_OPS == tuple(op for op, r in ops.RULES.items() if r.strategy)
    assert all(HLS_CLASS[op] == r.hls_class for op, r in ops.RULES.items())
    assert inspect.getmodule(ops.RULES["avgpool2d"]).avgpool_frac(3, 3, 5) == 6 + 2
