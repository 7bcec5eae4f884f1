"""Every shipped board x every strategy qsp-compile accepts or picks x both io types: the
project is written, or the combination is refused up front with a clear reason; the plans
that can be written are C-simulated bit-exactly; the estimator never proposes a plan that
cannot be built (issue 14, item 1).

Two layers, so that CI stays within budget:

1. **The write matrix** (no g++): for every board in ``boards/`` x ``--strategy`` in
   {auto, Latency, Resource, resource_unrolled, distributed_arithmetic} x ``--io-type`` in
   {io_parallel, io_stream} x three small models (the trained MLP and CNN of
   ``tests/bundles.py`` and a hand-built CNN+MLP whose layers the auto rule sends to every
   strategy, ``mixed_bundle``), :func:`compile_bundle` runs exactly as qsp-compile's CLI
   does (the board's part, clock and DSP budget; ``accelerator_board`` = the board's
   ``hls4ml_board``, so hls4ml's VivadoAccelerator project is written too) with
   ``verify=False``: conversion and project writing, ~0.1 s a cell. Each cell either writes
   both projects, with every layer's strategy and reuse factor one hls4ml accepts and keeps
   (read back from hls4ml's model), or raises a :class:`ConfigError` before hls4ml is
   called that names the board, the strategy and why (:func:`qsp.hardware.unbuildable_reason`;
   distributed_arithmetic is refused so when da4ml is not installed, and written when it is).

2. **C simulation of one representative per distinct C++ configuration** (g++, ~7 s a
   build at -O0, two builds at a time). What the generated C++ computes depends on the
   backend (Vitis for ``hls4ml_prj``; VivadoAccelerator, i.e. hls4ml's Vivado templates,
   for ``accelerator_prj``), the io type, and per Dense/Conv layer its op, strategy and
   reuse-factor regime (R = 1, 1 < R <= n_in, R > n_in: hls4ml's dense_resource has one
   code path each). It does not depend on the board: the part and clock period reach only
   the synthesis scripts (``build_prj.tcl`` / ``project.tcl``), never a C++ template, and
   the board otherwise only changes *which* strategies and reuse factors are chosen, which
   the matrix records. So the matrix collects the set of (backend, io type, op, strategy,
   regime) keys that shipped boards actually produce, and :func:`test_csim_covers_matrix`
   requires each one to be built and verified bit-exactly (hls4ml's predict against qsp's
   integer emulation) by one of :data:`CSIM`, which include the estimator's proposed plans:
   on arty-a7-35 (a shipped board where the rule's plan for ``mixed`` does not fit) and, with
   the accelerator project, on a pynq-z2 with a sixth of its LUTs (the alternative becomes
   Resource with reuse factors up to 128). Two representatives use a pynq-z2 copy with 100
   DSPs: the budget only decides which strategies the rule mixes in one plan. A new key (a rule change, a new
   board) fails that test until a representative covers it.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from qsp import hardware
from qsp.boards import all_boards, get_board
from qsp.bundle import FlattenNode
from qsp.compile.hls4ml_project import IO_TYPES, CompileOptions, buildable_strategies, rule_strategies
from qsp.compile.pipeline import compile_bundle, prepare
from qsp.errors import ConfigError, QspError
from qsp.estimate import fit_plan
from tests.graphs import conv, linear, make, quant, random_codes

BOARDS = all_boards()
STRATEGIES = ("auto",) + hardware.STRATEGIES
MODELS = ("mlp", "cnn", "mixed")
N_INPUTS = 32  # test inputs verified per C simulation


# ----------------------------------------------------------------------------- models
def mixed_bundle(seed: int = 0):
    """conv(36 weights) -> conv(144) -> flatten -> dense 288x8 (80 % pruned) -> dense 8x16 -> dense 16x4.

    On a 90-DSP board the auto rule gives each layer another strategy (Latency, Resource,
    resource_unrolled for the pruned Dense in io_parallel); on arty-a7-35 and pynq-z2 the
    rule's io_parallel plan does not fit, so the estimator's plan is compiled."""
    rng = np.random.default_rng(seed)
    nodes = [quant("input_quant", [2, 6, 6], 8, 4),
             conv("conv1", [2, 6, 6], 2, 3, 6, 4, padding=1, bbits=10, bfrac=6),
             quant("quant1", [2, 6, 6], 8, 3),
             conv("conv2", [2, 6, 6], 8, 3, 6, 4, padding=1, bbits=10, bfrac=6),
             quant("quant2", [8, 6, 6], 8, 2),
             FlattenNode(name="flatten1", in_shape=[8, 6, 6], out_shape=[288]),
             linear("dense1", 288, 8, 6, 5, bbits=10, bfrac=6),
             quant("quant3", [8], 8, 2),
             linear("dense2", 8, 16, 6, 5, bbits=10, bfrac=6),
             quant("quant4", [16], 8, 2),
             linear("dense3", 16, 4, 6, 5, bbits=10, bfrac=6)]

    def codes(shape):  # no zero weight (no dead unit for the transforms to remove)
        c = random_codes(rng, shape, 6)
        c[c == 0] = 1
        return c

    w = {"conv1.weight": codes((2, 2, 3, 3)) / 2.0 ** 4, "conv2.weight": codes((8, 2, 3, 3)) / 2.0 ** 4,
         "dense1.weight": codes((8, 288)) * (rng.random((8, 288)) < 0.2) / 2.0 ** 5,
         "dense2.weight": codes((16, 8)) / 2.0 ** 5, "dense3.weight": codes((4, 16)) / 2.0 ** 5}
    for name, n in (("conv1", 2), ("conv2", 8), ("dense1", 8), ("dense2", 16), ("dense3", 4)):
        w[f"{name}.bias"] = random_codes(rng, (n,), 10) / 2.0 ** 6
    b = make(nodes, w)
    b.test_x = (random_codes(rng, (N_INPUTS, 2, 6, 6), 8) / 2.0 ** 4).astype(np.float32)
    b.test_y = None
    return b


@pytest.fixture(scope="module")
def models(mlp_bundle, cnn_bundle, tmp_path_factory):
    return {"mlp": mlp_bundle, "cnn": cnn_bundle,
            "mixed": mixed_bundle().write(tmp_path_factory.mktemp("mixed") / "bundle")}


def cli_options(board, strategy: str, io_type: str, **kw) -> CompileOptions:
    """CompileOptions as qsp-compile's CLI makes them for ``board`` (compile/cli.py)."""
    from qsp.estimate import fit_plan

    return CompileOptions(io_type=io_type, strategy=strategy, part=board.part,
                          clock_period_ns=round(1000.0 / board.clock_mhz, 3), dsp_budget=board.dsp, board=board,
                          fit=fit_plan, **kw)


def _regime(s: hardware.LayerStrategy, n_in: int) -> str:
    return "R=1" if s.reuse_factor == 1 else ("R<=n_in" if s.reuse_factor <= n_in else "R>n_in")


def cpp_keys(graph, strategies, io_type: str, backends) -> set[tuple]:
    """(backend, io type, op, strategy, reuse regime) of every Dense/Conv layer: what the
    generated C++ depends on (module docstring)."""
    facts = {f.name: f for f in hardware.layer_facts(graph)}
    return {(be, io_type, facts[n].op, s.strategy, _regime(s, facts[n].n_in))
            for n, s in strategies.items() for be in backends}


# ----------------------------------------------------------------------------- 1. the write matrix
@pytest.fixture(scope="module")
def matrix(models, tmp_path_factory):
    """{(board, strategy, io_type, model): ("ok", C++ keys, strategies) | ("refused", None, message) |
    ("crash", None, message)}, every cell written with verify=False."""
    root = tmp_path_factory.mktemp("matrix")
    out = {}
    t0 = time.perf_counter()
    for board in BOARDS:
        for strategy in STRATEGIES:
            for io_type in IO_TYPES:
                for kind in MODELS:
                    cell = (board.name, strategy, io_type, kind)
                    try:
                        opts = cli_options(board, strategy, io_type)
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            res = compile_bundle(models[kind], root / "_".join(cell), opts,
                                                 accelerator_board=board.hls4ml_board, verify=False)
                    except QspError as e:
                        out[cell] = ("refused", None, f"{type(e).__name__}: {e}")
                        continue
                    except Exception as e:  # noqa: BLE001 - the matrix records what hls4ml raised
                        out[cell] = ("crash", None, f"{type(e).__name__}: {e}")
                        continue
                    out[cell] = ("ok", _check_written(board, opts, res), dict(res.strategies))
    out["_seconds"] = time.perf_counter() - t0
    return out


def _check_written(board, opts, res) -> set[tuple]:
    """The cell's projects exist; every strategy is one qsp-compile can build for the board,
    every reuse factor one hls4ml accepts, and hls4ml's model kept both."""
    assert (res.project / "firmware" / "myproject.cpp").exists()
    if board.hls4ml_board:
        assert (res.accelerator_project / "firmware" / "myproject_axi.cpp").exists()
    else:
        assert res.accelerator_project is None
    facts = {f.name: f for f in hardware.layer_facts(res.graph)}
    ok = buildable_strategies(opts)
    for name, s in res.strategies.items():
        f = facts[name]
        assert s.strategy in ok, (board.name, name, s)
        assert s.reuse_factor in hardware.valid_reuse_factors(f.n_in, f.n_out, s.strategy, f.op, opts.io_type), \
            (board.name, name, s)
        layer = res.hls_model.graph[name]
        assert (str(layer.get_attr("strategy")).lower(), layer.get_attr("reuse_factor")) == \
            (s.strategy.lower(), s.reuse_factor), (board.name, name, s)
    backends = ("Vitis",) + (("VivadoAccelerator",) if board.hls4ml_board else ())
    return cpp_keys(res.graph, res.strategies, opts.io_type, backends)


@pytest.mark.parametrize("board", [b.name for b in BOARDS])
def test_every_strategy_writes_or_is_refused(board, matrix):
    b = get_board(board)
    bad = []
    for strategy in STRATEGIES:
        why = hardware.unbuildable_reason(strategy, b)
        for io_type in IO_TYPES:
            for kind in MODELS:
                status, _, detail = matrix[(board, strategy, io_type, kind)]
                if why:
                    # refused up front with the rule's reason, naming board and strategy
                    if status != "refused" or why not in detail or board not in detail or strategy not in detail:
                        bad.append((strategy, io_type, kind, status, str(detail)[:300]))
                elif status != "ok":
                    bad.append((strategy, io_type, kind, status, str(detail)[:300]))
    assert not bad, bad


def test_refusals_are_the_known_ones(matrix):
    """Only resource_unrolled where an accelerator project is written, and
    distributed_arithmetic without da4ml, are refused; never a crash."""
    refused = {(c[0], c[1]) for c, v in matrix.items() if c != "_seconds" and v[0] != "ok"}
    expected = {(b.name, s) for b in BOARDS for s in STRATEGIES if hardware.unbuildable_reason(s, b)}
    assert refused == expected
    assert {b for b, s in expected if s == "resource_unrolled"} == {b.name for b in BOARDS if b.hls4ml_board}
    if not hardware.da4ml_available():
        assert {b for b, s in expected if s == "distributed_arithmetic"} == {b.name for b in BOARDS}
    assert not [c for c, v in matrix.items() if c != "_seconds" and v[0] == "crash"]


def test_auto_never_picks_what_board_cannot_build(matrix):
    """auto (rule or estimator) on every board: resource_unrolled only where no accelerator
    project is written, and it is picked somewhere (the mixed model's pruned Dense)."""
    picked = {}
    for (board, strategy, io_type, kind), v in ((c, v) for c, v in matrix.items() if c != "_seconds"):
        if strategy == "auto" and v[0] == "ok":
            for s in v[2].values():
                picked.setdefault(board, set()).add(s.strategy)
    for b in BOARDS:
        assert b.name in picked
        if b.hls4ml_board:
            assert "resource_unrolled" not in picked[b.name], b.name
    assert any("resource_unrolled" in v for v in picked.values())


def test_estimator_alternatives_are_buildable(models):
    """On every shipped board (and a LUT-starved copy of each), for every model: when the
    rule's plan does not fit, the estimator's proposed plan uses only strategies
    qsp-compile can build for that board, at reuse factors hls4ml accepts."""
    proposals = 0
    for kind in MODELS:
        b, tx, log, plan = prepare(models[kind])
        facts = {f.name: f for f in hardware.layer_facts(tx)}
        for board in BOARDS:
            for bd in (board, dataclasses.replace(board, lut=max(board.lut // 200, 100))):
                rule = rule_strategies(tx, plan, cli_options(bd, "auto", "io_parallel"))
                be = fit_plan(tx, bd, rule)  # what qsp-estimate shows (all strategies; DA labelled)
                for alt in ([be.alternative] if be.alternative is not None else []):
                    proposals += 1
                    for name, s in alt.strategies.items():
                        f = facts[name]
                        assert s.strategy in hardware.buildable_strategies(bd, installed=False), (bd.name, alt.label)
                        assert s.reuse_factor in hardware.valid_reuse_factors(f.n_in, f.n_out, s.strategy, f.op), \
                            (bd.name, alt.label, name, s)
                    if "distributed_arithmetic" in {s.strategy for s in alt.strategies.values()}:
                        assert "needs hls4ml[da]" in alt.label  # and qsp-compile refuses it without da4ml
    assert proposals > 0


def test_accelerator_project_refuses_resource_unrolled_up_front(models, tmp_path):
    """Through the Python API an accelerator project can be asked for without
    CompileOptions.board (so the rule does not know it): a clear ConfigError, not hls4ml's
    'Unexpected backend VivadoAccelerator' traceback."""
    opts = CompileOptions(strategy="resource_unrolled")
    with pytest.raises(ConfigError, match=r"resource_unrolled.*VivadoAccelerator.*'pynq-z2'"):
        compile_bundle(models["mlp"], tmp_path / "x", opts, accelerator_board="pynq-z2", verify=False)


def test_distributed_arithmetic_refused_or_written(models, tmp_path):
    board = get_board("zcu104")
    if hardware.da4ml_available():
        res = compile_bundle(models["mlp"], tmp_path / "da", cli_options(board, "distributed_arithmetic", "io_parallel"),
                             verify=False)
        assert {s.strategy for s in res.strategies.values()} == {"distributed_arithmetic"}
    else:
        with pytest.raises(ConfigError, match=r"distributed_arithmetic cannot be built for zcu104: .*da4ml"):
            cli_options(board, "distributed_arithmetic", "io_parallel")


# ----------------------------------------------------------------------------- 2. C simulation
def _small_pynq():
    """pynq-z2 (with its accelerator project) with a sixth of its LUTs: for ``mixed`` the
    rule's plan and all-Latency do not fit, the estimator proposes 'Resource reuse<=128'
    (reuse factors above n_in on two Dense layers: hls4ml's R > n_in code path)."""
    return dataclasses.replace(get_board("pynq-z2"), name="pynq-z2-small-lut", lut=get_board("pynq-z2").lut // 6)


def _few_dsp_pynq():
    """pynq-z2 with 100 DSPs: the rule mixes Latency and Resource on both convs and Dense
    layers in one plan, for both io types and both projects (the budget only chooses the
    strategies; the C++ does not know the board)."""
    return dataclasses.replace(get_board("pynq-z2"), name="pynq-z2-100dsp", dsp=100)


#: (id, model, board, strategy, io_type, verify the Vitis project, build + verify the accelerator
#: project, the plan's source qsp-compile must report). 8 g++ builds.
CSIM = [
    # the estimator's plan on a shipped board where the rule's plan does not fit
    # (conv Resource R=9, Dense resource_unrolled R=8)
    ("arty35-auto-par-estimator", "mixed", "arty-a7-35", "auto", "io_parallel", True, False, "estimator"),
    # io_stream: the estimator models it too (qsp.estimate.stream), so the rule's plan that
    # does not fit arty-a7-35 is replaced there as well (conv Resource R=6, Dense resource_unrolled R=4)
    ("arty35-auto-stream", "mixed", "arty-a7-35", "auto", "io_stream", True, False, "estimator"),
    ("arty35-unrolled-stream", "mixed", "arty-a7-35", "resource_unrolled", "io_stream", True, False, "--strategy"),
    ("pynqz2-100dsp-auto-par", "mixed", _few_dsp_pynq, "auto", "io_parallel", True, True, "rule"),
    # both projects: with io_stream modelled, the shipped boards' io_stream Dense layers
    # (Latency R=1, Resource R<=n_in in the Vitis project) come from this plan's keys
    ("pynqz2-100dsp-auto-stream", "mixed", _few_dsp_pynq, "auto", "io_stream", True, True, "rule"),
    # the estimator's plan with its accelerator project: Resource, R up to 128 (> n_in)
    ("pynqz2-smalllut-auto-par-estimator", "mixed", _small_pynq, "auto", "io_parallel", False, True, "estimator"),
]


def _csim_job(args):
    """One representative (runs in a worker process): compile, build, C-simulate, compare."""
    rid, path, board, strategy, io_type, main, accel, out = args
    from qsp.compile.deploy import build_deploy_model
    from qsp.compile.hls4ml_project import clean_dir, convert, hls_config
    from qsp.compile.pipeline import build
    from qsp.verify.emulate import emulate

    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    opts = cli_options(board, strategy, io_type, testbench=False, cxx_opt_level=0)
    res = compile_bundle(path, out, opts, accelerator_board=board.hls4ml_board, verify=main, max_inputs=N_INPUTS)
    r = {"strategies": {k: (v.strategy, v.reuse_factor) for k, v in res.strategies.items()},
         "source": res.strategy_plan.source, "keys": set(), "mismatches": {}}
    if main:
        paths = res.report.to_dict()["summary"]["paths"]
        r["mismatches"]["Vitis"] = (paths["hls4ml_predict"]["mismatches"], paths["hls4ml_predict"]["compared"])
        r["keys"] |= cpp_keys(res.graph, res.strategies, io_type, ("Vitis",))
    if accel:  # hls4ml's VivadoAccelerator project: built with qsp's build script, predicted, compared
        model = build_deploy_model(res.graph, res.plan)
        cfg = hls_config(model, res.graph, res.plan, opts, res.strategies)
        d = clean_dir(Path(out) / "accelerator_csim")
        hm = convert(model, res.graph, cfg, opts, d, backend="VivadoAccelerator", board=board.hls4ml_board)
        build(hm, d, opts)
        x = np.asarray(res.graph.test_x[:N_INPUTS], np.float32)
        pred = np.asarray(hm.predict(x.reshape(len(x), -1).astype(np.float64)), np.float64).reshape(len(x), -1)
        ref = np.asarray(emulate(res.graph, x), np.float64).reshape(len(x), -1)
        r["mismatches"]["VivadoAccelerator"] = (int(np.sum(pred != ref)), int(ref.size))
        r["keys"] |= cpp_keys(res.graph, res.strategies, io_type, ("VivadoAccelerator",))
    r["seconds"] = time.perf_counter() - t0
    return rid, r


@pytest.fixture(scope="module")
def csim(models, tmp_path_factory):
    """The representatives of :data:`CSIM`, two at a time (each is one g++ process)."""
    root = tmp_path_factory.mktemp("csim")
    jobs = []
    for rid, kind, board, strategy, io_type, main, accel, _ in CSIM:
        bd = board() if callable(board) else get_board(board)
        jobs.append((rid, models[kind], bd, strategy, io_type, main, accel, root / rid))
    t0 = time.perf_counter()
    workers = max(1, min(2, os.cpu_count() or 1))
    out = {}
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as ex:
        futs = {j[0]: ex.submit(_csim_job, j) for j in jobs}
        for rid, f in futs.items():
            try:
                out[rid] = f.result()[1]
            except Exception as e:  # noqa: BLE001 - reported by the test of that representative
                out[rid] = {"error": f"{type(e).__name__}: {e}"}
    out["_seconds"] = time.perf_counter() - t0
    return out


@pytest.mark.parametrize("rep", CSIM, ids=[c[0] for c in CSIM])
def test_representative_csim_bit_exact(rep, csim):
    rid, source = rep[0], rep[-1]
    r = csim[rid]
    assert "error" not in r, r.get("error")
    assert r["source"] == source, (r["source"], r["strategies"])
    for backend, (bad, compared) in r["mismatches"].items():
        assert compared > 0 and bad == 0, (rid, backend, bad, compared, r["strategies"])


def test_csim_covers_matrix(matrix, csim):
    """Every (backend, io type, op, strategy, reuse regime) that a shipped board produces in
    the write matrix is C-simulated bit-exactly by a representative (module docstring)."""
    produced = set()
    for c, v in matrix.items():
        if c != "_seconds" and v[0] == "ok":
            produced |= v[1]
    covered = set()
    for rid, r in csim.items():
        if rid != "_seconds" and "error" not in r and all(b == 0 for b, _ in r["mismatches"].values()):
            covered |= r["keys"]
    missing = sorted(produced - covered)
    assert not missing, f"C++ configurations the matrix produces but no CSIM representative verifies: {missing}"
    # every strategy qsp-compile can build here is among them, in both io types and both backends
    for s in buildable_strategies():
        assert any(k[3] == s for k in covered), s
    assert {k[0] for k in covered} == {"Vitis", "VivadoAccelerator"}
