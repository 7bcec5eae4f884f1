"""Issue 17 (items 3, 4, 5, 7): bad input never becomes a wrong design. Each example the
issue reports is a named regression test here: command lines that must fail with exit 2
and one message naming the problem (never a traceback, never a hang), board files,
``--model`` factories, and the verifier's own guarantees (exact comparison, C-simulation
outputs that come from the binary, names, worst-case accumulators, activation signedness).
Cheap: argument parsing, --print-config, --dry-run and board loading; the C++ builds are in
the verifier tests at the end."""
from __future__ import annotations

import math
import os
import re
import stat
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from qsp.boards import all_boards, builtin_dirs, get_board, load_board
from qsp.errors import BoardError
from tests.conftest import needs_gxx


def _run(main, argv, capsys, timeout=60):
    """main(argv) in-process with a watchdog: (exit status, stderr). A hang fails the test."""
    box = {}

    def target():
        try:
            box["rc"] = main(argv)
        except SystemExit as e:  # argparse
            box["rc"] = e.code
        except BaseException as e:  # noqa: BLE001 - the test reports it
            box["exc"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{argv}: hung for {timeout} s"
    err = capsys.readouterr().err
    if "exc" in box:
        raise AssertionError(f"{argv}: traceback instead of an error message: {box['exc']!r}") from box["exc"]
    return box["rc"], err


def _bad(main, argv, capsys, *words):
    """``argv`` is refused: exit 2, no traceback, a message that names every one of ``words``."""
    rc, err = _run(main, argv, capsys)
    assert rc == 2, (argv, rc, err)
    assert "Traceback" not in err
    for w in words:
        assert w in err, (argv, w, err)
    return err


# ============================================================================ qsp-train flags
def _train():
    from qsp.train.cli import main
    return main


@pytest.mark.parametrize("flags,words", [
    (["--prune-start", "-1"], ["prune_start", "-1"]),
    (["--quant-delay", "-3"], ["quant_delay", "-3"]),
    (["--window", "-2"], ["window", "-2"]),
    (["--window", "0"], ["window"]),
    (["--prune-interval", "0"], ["prune_interval"]),
    (["--quantiles", "0.9,0.1"], ["quantiles", "0.9"]),
    (["--quantiles", "nan,0.5"], ["quantiles"]),
    (["--seed", "-1"], ["seed", "-1"]),
    (["--lr", "inf"], ["lr", "finite"]),
    (["--weight-decay", "nan"], ["weight_decay"]),
    (["--float-metric", "nan"], ["float_metric"]),
])
def test_train_flags_refused(flags, words, capsys):
    _bad(_train(), flags + ["--print-config"], capsys, *words)


def test_train_flags_still_accepted(capsys):
    rc, _ = _run(_train(), ["--prune-start", "0", "--quant-delay", "0", "--window", "1", "--seed", "0",
                            "--quantiles", "0.01,0.99", "--print-config"], capsys)
    assert rc == 0


# ============================================================================ boards
def _pynq() -> dict:
    return yaml.safe_load((builtin_dirs()[0] / "pynq-z2.yaml").read_text())


def _board_file(d, name, **over):
    data = dict(_pynq(), name=name, aliases=[])
    for k, v in over.items():
        if k.startswith("offchip_"):
            data["offchip"] = dict(data["offchip"], **{k[len("offchip_"):]: v})
        else:
            data[k] = v
    f = d / f"{name}.yaml"
    f.write_text(yaml.safe_dump(data))
    return f


@pytest.mark.parametrize("field,value", [("clock_mhz", math.nan), ("clock_mhz", math.inf),
                                         ("offchip_size_mb", math.nan), ("offchip_bandwidth_gb_s", math.inf),
                                         ("offchip_size_mb", 0.0), ("bram_mb", math.nan)])
def test_board_numbers_finite_and_positive(tmp_path, field, value):
    f = _board_file(tmp_path, "myboard", **{field: value})
    with pytest.raises(BoardError) as e:
        load_board(f)
    assert field.replace("offchip_", "") in str(e.value) and str(f) in str(e.value)


def test_board_nan_clock_never_fits_or_reaches_a_project(tmp_path, capsys):
    """A NaN clock once gave the verdict "fits" and wrote ``nan`` into project.tcl."""
    _board_file(tmp_path, "nanclock", clock_mhz=math.nan)
    with pytest.raises(BoardError, match="clock_mhz"):
        get_board("nanclock", [tmp_path])
    assert "nanclock" not in {b.name for b in all_boards([tmp_path])}
    assert "nanclock" in capsys.readouterr().err


def test_board_alias_clash_is_an_error_naming_both_files(tmp_path, capsys):
    """A board file claiming the alias ``pynq`` once silently replaced pynq-z2."""
    f = _board_file(tmp_path, "evil", aliases=["pynq"])
    with pytest.raises(BoardError) as e:
        get_board("pynq", [tmp_path])
    assert str(f) in str(e.value) and "pynq-z2.yaml" in str(e.value)
    assert get_board("pynq-z2", [tmp_path]).name == "pynq-z2"  # its own name is still unique
    _board_file(tmp_path, "evil", aliases=["pynq-z2"])  # claiming another board's name
    with pytest.raises(BoardError, match="claimed by more than one"):
        get_board("pynq-z2", [tmp_path])
    assert get_board("pynq").name == "pynq-z2"  # without the extra directory all is well


def test_malformed_board_file_does_not_break_board_all(tmp_path, capsys):
    (tmp_path / "broken.yaml").write_text("{[")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "deep.yaml").write_text("[" * 1000 + "]" * 1000)
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    _board_file(tmp_path, "negative", lut=-5)
    os.mkfifo(tmp_path / "fifo.yaml")  # reading it would block forever
    (tmp_path / "dir.yaml").mkdir()
    names = {b.name for b in all_boards([tmp_path])}
    assert {"pynq-z2", "zcu102"} <= names
    err = capsys.readouterr().err
    for bad in ("broken", "list", "deep", "binary", "negative", "fifo", "dir"):
        assert f"{bad}.yaml" in err, bad
        assert bad not in names
        with pytest.raises(BoardError, match=bad):
            get_board(bad, [tmp_path])
    with pytest.raises(BoardError, match="not a regular file"):
        load_board(tmp_path / "fifo.yaml")
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo.yaml").st_mode)


def test_estimate_board_all_names_the_bad_file(mlp_bundle, tmp_path, capsys):
    from qsp.estimate.cli import main

    _board_file(tmp_path, "nanmem", offchip_bandwidth_gb_s=math.nan)
    rc, err = _run(main, [str(mlp_bundle), "--board", "all", "--boards-dir", str(tmp_path)], capsys)
    assert rc == 0 and "nanmem.yaml" in err and "bandwidth_gb_s" in err
    _bad(main, [str(mlp_bundle), "--board", "nanmem", "--boards-dir", str(tmp_path)], capsys, "nanmem.yaml")


# ============================================================================ --model factories
@pytest.mark.parametrize("path,words", [
    ("subprocess:getoutput", ["standard library"]),
    ("os:system", ["standard library"]),
    ("builtins:eval", ["standard library"]),
    ("torch:load", ["site-packages"]),
    ("yaml:load", ["site-packages"]),
    ("qsp.compile.csim:run", ["not one of qsp's models"]),
])
def test_model_factory_refused_before_it_is_called(path, words, tmp_path, capsys):
    """``--model subprocess:getoutput --model-kwargs '{cmd: ...}'`` once ran a shell command."""
    marker = tmp_path / "called"
    err = _bad(_train(), ["--model", path, "--model-kwargs", f"{{cmd: 'touch {marker}'}}", "--print-config"],
               capsys, "model", path, *words)
    assert not marker.exists(), err


@pytest.mark.parametrize("path,words", [
    ("tests.user_models:F", "is a module, not a function"),
    ("tests.user_models:nn", "is a module, not a function"),
    ("tests.bundles:make_bundle", "defined in 'qsp.bundle.export'"),  # imported, not defined there
    ("tests.bundles:nothing", "no callable"),
])
def test_model_factory_must_be_defined_in_the_module(path, words):
    from qsp.errors import ConfigError
    from qsp.train.models import build_model

    with pytest.raises(ConfigError, match=words):
        build_model(path, {})


def test_resume_rechecks_the_model_factory(tmp_path, capsys):
    """``--resume`` reads config.yaml again: a factory edited into it is refused there too."""
    from qsp.train.config import TrainConfig

    cfg = TrainConfig(task="digits", model="tests.user_models:user_net", out=str(tmp_path)).to_dict()
    cfg["model"] = "subprocess:getoutput"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    _bad(_train(), ["--resume", "--out", str(tmp_path)], capsys, "subprocess:getoutput", "standard library")


def test_model_factory_of_a_user_module_still_works():
    from qsp.train.models import build_model, import_factory
    from torch import nn

    assert isinstance(build_model("tests.user_models:user_net", {"width": 2}), nn.Module)
    assert import_factory("tests.user_models:UserNet").__name__ == "UserNet"  # an nn.Module class
    assert import_factory("qsp.train.models:mlp").__name__ == "mlp"


# ============================================================================ output folders, inputs, scans
UNWRITABLE = "/proc/qsp-cannot-write-here/out"  # not writable even by root


def _cmd(name):
    import importlib
    return importlib.import_module({"train": "qsp.train.cli", "compile": "qsp.compile.cli",
                                    "estimate": "qsp.estimate.cli", "deploy": "qsp.deploy",
                                    "flow": "qsp.flow"}[name]).main


@pytest.mark.parametrize("cmd,extra", [("train", ["--epochs", "1"]), ("compile", []), ("estimate", []),
                                       ("deploy", []), ("flow", ["--epochs", "1"])])
@pytest.mark.parametrize("where", ["file", "unwritable", "under_file"])
def test_out_checked_before_work_starts(cmd, extra, where, mlp_bundle, tmp_path, capsys):
    """``--out`` on a file or an unwritable directory once failed after the work (a
    traceback from mkdir); now exit 2 before training, compiling or estimating."""
    f = tmp_path / "a_file"
    f.write_text("keep me")
    out = {"file": f, "unwritable": UNWRITABLE, "under_file": f / "sub"}[where]
    argv = ([] if cmd in ("train", "flow") else [str(mlp_bundle)]) + ["--out", str(out)] + extra
    err = _bad(_cmd(cmd), argv, capsys, "out", str(out))
    assert f.read_text() == "keep me"
    assert "Epoch" not in err and "converting" not in err


@pytest.mark.parametrize("n", ["0", "-5"])
def test_compile_max_inputs_must_be_positive(n, mlp_bundle, tmp_path, capsys):
    """``--max-inputs -5`` once verified 354 of 359 inputs silently; 0 verified nothing."""
    _bad(_cmd("compile"), [str(mlp_bundle), "--max-inputs", n, "--out", str(tmp_path)], capsys, "--max-inputs", n)
    assert not any(tmp_path.iterdir())


def test_report_scan_is_bounded_and_follows_no_links(tmp_path):
    """The report's scan for runs once walked from / (a bundle at the top level)."""
    from qsp.estimate.cli import _runs_folder
    from qsp.paths import find_files
    from qsp.report.html import find_runs

    assert _runs_folder(Path("/bundle")) is None and _runs_folder(Path("/run/bundle")) is None
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "qspec.json").write_text("{}")
    (tmp_path / "a" / "b" / "loop").symlink_to(tmp_path)  # a cycle, if it were followed
    (tmp_path / "link.json").symlink_to("/etc/hostname")
    os.mkfifo(tmp_path / "a" / "b" / "qspec.json")  # reading it would block
    assert find_files(tmp_path, "qspec.json") == [tmp_path / "a" / "qspec.json"]
    assert find_runs(tmp_path) == []  # {} is no run; the FIFO is never opened
    for i in range(50):
        (tmp_path / f"f{i}").write_text("")
    assert find_files(tmp_path, "qspec.json", max_entries=10) == []  # stopped early


def test_config_file_fifo_is_refused(tmp_path, capsys):
    fifo = tmp_path / "run.yaml"
    os.mkfifo(fifo)
    _bad(_train(), ["--config", str(fifo), "--print-config"], capsys, "run.yaml")


# ============================================================================ the verifier
def test_compare_is_exact_at_every_scale():
    """A comparison that tolerated a 2^-4 difference once passed the whole suite: one LSB of
    any format, in one output of one path, is one mismatch."""
    import numpy as np

    from qsp.compile.verify import compare

    rng = np.random.default_rng(0)
    ref = np.round(rng.normal(size=(6, 10)) * 256) / 256
    for path in ("onnxruntime", "hls4ml_predict", "csim_testbench"):
        for k in range(0, 25):
            got = ref.copy().reshape(6, -1)
            got[5, 9] += 2.0 ** -k
            r = compare(path, ref, got)
            assert (r.mismatches, r.max_abs_diff) == (1, 2.0 ** -k), (path, k)
        got = ref.copy()
        got[0, 0] = np.nan
        assert compare(path, ref, got).mismatches == 1
        assert compare(path, ref, None).ran is False  # a path that did not run is no pass


def _fake_testbench(project, script: str, n_in: int = 3):
    from qsp.compile import csim

    (project / "tb_data").mkdir(parents=True, exist_ok=True)
    (project / csim.TB_IN).write_text("0.5 0.25 \n" * n_in)
    (project / csim.TB_OUT).write_text("7 7 \n" * n_in)  # qsp's expected outputs: never read back
    tb = project / "csim_tb"
    tb.write_text("#!/bin/sh\n" + script)
    tb.chmod(0o755)


@pytest.mark.parametrize("script,words", [
    ("exit 0\n", "wrote no"),  # a stale results file (below) must not be read instead
    ("cp tb_data/tb_output_predictions.dat tb_data/csim_results.log\n", None),  # echoes: values differ
    ("printf '1 2\\n1 2\\n' > tb_data/csim_results.log\n", "2 result lines for 3 input lines"),
    ("printf '1 x\\n1 2\\n1 2\\n' > tb_data/csim_results.log\n", "not a table of numbers"),
    ("exit 3\n", r"failed \(exit 3\)"),
])
def test_csim_results_come_from_this_run_of_the_binary(tmp_path, script, words):
    import numpy as np

    from qsp.compile import csim
    from qsp.errors import ToolError

    _fake_testbench(tmp_path, script)
    (tmp_path / csim.RESULTS).write_text("0.5 0.25 \n" * 3)  # stale, from an earlier run
    if words is None:  # read back what the binary wrote (here: a copy of the 7s), never the stale file
        assert np.array_equal(csim.run(tmp_path, 2), np.full((3, 2), 7.0))
        return
    with pytest.raises(ToolError, match=words):
        csim.run(tmp_path, 2)
    assert not (tmp_path / csim.RESULTS).exists() or words != "wrote no"


def _rename_node(b, old, new):
    for n in b.graph:
        if n.name == old:
            n.name = new
        n.inputs = [new if i == old else i for i in n.inputs]
    for k in list(b.weights):
        if k.startswith(old + "."):
            b.weights[new + k[len(old):]] = b.weights.pop(k)
    return b


@pytest.mark.parametrize("name,hls_name", [("max", "max_1"), ("x", "x_1"), ("len", "len_1")])
def test_node_renamed_by_the_frontend_is_refused_naming_it(name, hls_name):
    """A layer renamed by hls4ml (torch.fx) once silently lost qsp's precision settings and
    the mismatch report named the next layer: now refused before conversion, naming both."""
    from qsp.bundle import transforms
    from qsp.compile.deploy import build_deploy_model
    from qsp.compile.precision import derive
    from qsp.errors import UnsupportedLayerError
    from tests.bundles import build_bundle

    tx, _ = transforms.run(_rename_node(build_bundle("mlp", steps=5, n_test=4), "dense2", name))
    with pytest.raises(UnsupportedLayerError) as e:
        build_deploy_model(tx, derive(tx))
    assert repr(name) in str(e.value) and repr(hls_name) in str(e.value)
    tx, _ = transforms.run(_rename_node(build_bundle("mlp", steps=5, n_test=4), "dense2", "hidden_2"))
    names = [n.name for n in build_deploy_model(tx, derive(tx)).graph.nodes if n.op == "call_module"]
    assert "hidden_2" in names  # an ordinary name goes through unchanged


def test_every_activation_format_has_the_sign_its_values_need(mlp_bundle, cnn_bundle):
    """Signedness of every activation: a quantizer after a ReLU (or mask/pool of one) is
    unsigned, and every value the emulator traces on the test inputs fits its node's format
    (a negative value never meets an unsigned format)."""
    import numpy as np

    from qsp.bundle import read_bundle
    from qsp.estimate.counts import count_graph
    from qsp.verify.emulate import emulate

    for path in (mlp_bundle, cnn_bundle):
        b = read_bundle(path)
        nodes = {n.name: n for n in b.graph}
        trace = emulate(b, b.test_x[:16], trace=True)
        fmts = {c.name: c.out_format for c in count_graph(b).nodes}
        checked = 0
        for n in b.graph:
            if n.op != "quantize":
                continue
            src = nodes.get(n.inputs[0])
            while src is not None and src.op in ("mask", "maxpool2d", "flatten"):
                src = nodes.get(src.inputs[0])
            if src is not None and src.op == "relu":
                assert not n.format.signed, f"{path}: {n.name} follows a ReLU but is signed"
            v = np.asarray(trace[n.name], np.float64)
            assert v.min() >= 0 or n.format.signed, f"{path}: {n.name} holds negatives in an unsigned format"
            checked += 1
        assert checked >= 2
        for name, f in fmts.items():  # every node's exact format holds its traced values
            if name in trace and f is not None:
                v = np.asarray(trace[name], np.float64)
                assert f.signed or v.min() >= 0, (path, name)
                assert v.min() >= f.min and v.max() <= f.max, (path, name, f)


def _worst_case_mlp():
    """The MLP bundle with dense1's kept weights sign-aligned at their format's extremes (row
    by row: all +max, then all min), its biases at their extremes too, and a first test input
    at the input format's maximum: dense1's accumulators reach their bounds."""
    import numpy as np

    from tests.bundles import build_bundle

    b = build_bundle("mlp", steps=20, n_test=8)
    n = next(n for n in b.graph if n.name == "dense1")
    wf = n.weight.formats()[0]
    w = b.weights["dense1.weight"]
    sign = np.where(np.arange(w.shape[0]) % 2 == 0, 1.0, -1.0)[:, None]
    b.weights["dense1.weight"] = np.where(w != 0, np.where(sign > 0, wf.max, wf.min), 0.0).astype(w.dtype)
    if n.bias is not None:
        bb = b.weights["dense1.bias"]
        b.weights["dense1.bias"] = np.where(sign[:, 0] > 0, n.bias.max, n.bias.min).astype(bb.dtype)
    x = np.array(b.test_x, copy=True)
    x[0] = b.graph[0].format.max
    b.test_x = x
    b.model_out = None  # no longer the trained model (its recorded outputs would, rightly, fail it)
    return b.validate(), wf


@needs_gxx
def test_planted_one_lsb_fault_in_each_path_is_caught(tmp_path, monkeypatch):
    """One compile (the worst-case accumulator bundle) with a one-LSB fault planted in ONE
    output of EACH verify path (onnxruntime, hls4ml predict, the standalone csim): each path
    reports exactly its one mismatch, of one LSB, and verification fails. qsp's own
    expected-output file is poisoned before the C simulation runs: a csim path that read it
    would differ everywhere. Every other output, the worst-case input's included, is exact."""
    import numpy as np

    import qsp.export.onnx as onnx_mod
    from qsp.compile import csim, pipeline
    from qsp.compile.hls4ml_project import CompileOptions
    from qsp.errors import VerificationError

    b, _ = _worst_case_mlp()
    planted = {"onnxruntime": (3, 2), "hls4ml_predict": (4, 5), "csim_testbench": (5, 7)}
    lsb = {}

    def plant(path, a):
        a = np.array(a, np.float64, copy=True).reshape(len(a), -1)
        i, j = planted[path]
        step = lsb["step"]
        a[i, j] += step
        return a

    real_onnx, real_read, real_run, real_convert = (onnx_mod.run_onnx, csim.read_results, csim.run,
                                                   pipeline.convert)
    monkeypatch.setattr(onnx_mod, "run_onnx", lambda *a, **k: plant("onnxruntime", real_onnx(*a, **k)))
    monkeypatch.setattr(csim, "read_results", lambda *a, **k: plant("csim_testbench", real_read(*a, **k)))

    def poisoned_run(project, n_out, progress=None):
        for f in (project / csim.TB_OUT, tmp_path / "c" / "tb_src" / "tb_output_predictions.dat"):
            if f.exists():
                rows = [[float(v) + 1.0 for v in line.split()] for line in f.read_text().splitlines() if line.strip()]
                f.write_text("".join(" ".join(repr(v) for v in r) + " \n" for r in rows))
        return real_run(project, n_out, progress)

    def convert(*a, **k):
        hm = real_convert(*a, **k)
        predict = hm.predict
        hm.predict = lambda x: plant("hls4ml_predict", predict(x))
        return hm

    monkeypatch.setattr(csim, "run", poisoned_run)
    monkeypatch.setattr(pipeline, "convert", convert)
    monkeypatch.setattr(pipeline, "_trace_report", lambda *a, **k: None)  # the per-layer trace: not the point
    from qsp.estimate.counts import count_graph

    out_fmt = count_graph(b).nodes[-1].out_format
    lsb["step"] = out_fmt.step
    assert out_fmt.step < 2.0 ** -4  # a 2^-4 tolerance would hide it
    with pytest.raises(VerificationError) as e:
        pipeline.compile_bundle(b, tmp_path / "c", CompileOptions())
    paths = {p.path: p for p in e.value.report.paths}
    for path, (i, j) in planted.items():
        p = paths[path]
        assert p.ran and p.mismatches == 1 and p.max_abs_diff == out_fmt.step, p
        assert path in str(e.value)


if sys.platform == "win32":  # pragma: no cover - FIFOs
    pytest.skip("POSIX only", allow_module_level=True)


# ---------------------------------------------------------------- custom data (issue 17: labels, truncated .npz)
@pytest.mark.parametrize("fault, msg", [
    ("negative_label", r"y_train\[3\] = -1 is not a class label"),
    ("huge_label", r"y_test\[0\] = 1000000 is not a class label"),
    ("nan_pixel", r"x_train holds a non-finite value"),
    ("count", r"x_test has 8 samples but y_test 7 labels"),
    ("float_labels", r"y_train must be a 1-D array of integer class labels"),
    ("truncated", r"cannot read as \.npz"),
])
def test_custom_data_faults_are_clean_errors(tmp_path, fault, msg, capsys):
    from qsp.train.cli import main as train_main

    rng = np.random.default_rng(0)
    arrs = dict(x_train=rng.random((16, 8), dtype=np.float32), y_train=np.arange(16) % 3,
                x_test=rng.random((8, 8), dtype=np.float32), y_test=np.arange(8) % 3)
    if fault == "negative_label":
        arrs["y_train"][3] = -1
    elif fault == "huge_label":
        arrs["y_test"][0] = 1_000_000
    elif fault == "nan_pixel":
        arrs["x_train"][2, 5] = np.nan
    elif fault == "count":
        arrs["y_test"] = arrs["y_test"][:7]
    elif fault == "float_labels":
        arrs["y_train"] = arrs["y_train"].astype(np.float32)
    f = tmp_path / "d.npz"
    np.savez(f, **arrs)
    if fault == "truncated":
        f.write_bytes(f.read_bytes()[:300])
    rc = train_main(["--task", "custom", "--data-dir", str(f), "--out", str(tmp_path / "o"), "--no-progress",
                     "--epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert re.search(msg, err), err


def test_estimate_project_faults_are_clean_errors(tmp_path):
    """qsp-estimate --project: a FIFO is refused unread, broken YAML and bad entries name the file."""
    from qsp.errors import ConfigError
    from qsp.estimate.core import strategies_from_project

    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        strategies_from_project(fifo)
    d = tmp_path / "prj"
    d.mkdir()
    (d / "qsp_hls_config.yaml").write_text("HLSConfig: {LayerName: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        strategies_from_project(d)
    (d / "qsp_hls_config.yaml").write_text("HLSConfig: {LayerName: {dense1: {Strategy: Latency, ReuseFactor: 2.5}}}")
    with pytest.raises(ConfigError, match=r"dense1.ReuseFactor=2.5"):
        strategies_from_project(d)
    (d / "qsp_hls_config.yaml").write_text("HLSConfig: {LayerName: {dense1: {Strategy: Resource, ReuseFactor: 4}}}")
    assert strategies_from_project(d)["dense1"].reuse_factor == 4


def test_read_yaml_one_rule_for_every_user_yaml(tmp_path, monkeypatch):
    """qsp.paths.read_yaml: missing, directory, FIFO, too large, binary and deep files are
    clean errors of the caller's kind, naming what was read."""
    from qsp import paths
    from qsp.boards import BoardError
    from qsp.errors import ConfigError

    with pytest.raises(ConfigError, match="config: file .* does not exist"):
        paths.read_yaml(tmp_path / "none.yaml", "config")
    with pytest.raises(BoardError, match="board file: .* is a directory"):
        paths.read_yaml(tmp_path, "board file", BoardError)
    fifo = tmp_path / "f.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        paths.read_yaml(fifo, "--hls-config")
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * 64)
    monkeypatch.setattr(paths, "MAX_YAML_BYTES", 32)
    with pytest.raises(ConfigError, match="larger than"):
        paths.read_yaml(big, "config")
    monkeypatch.undo()
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00a: 1")
    (tmp_path / "deep.yaml").write_text("[" * 20000 + "]" * 20000)
    for name in ("bin.yaml", "deep.yaml"):
        with pytest.raises(ConfigError, match="not valid YAML"):
            paths.read_yaml(tmp_path / name, "config")
    assert paths.read_yaml(big, "config") == {"a": "x" * 64}
