"""qsp-compile: bundle -> hls4ml project, verified bit-exact by emulation, onnxruntime,
hls4ml predict and the standalone g++ testbench. Compiled projects are shared per session
(each C++ build is several seconds of g++): six builds in all, each compiling the firmware
once; the standalone testbench is built where it is the point (the three MLP/CNN fixtures)
and left out where only the firmware's values are (rounding modes, the mutation)."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from qsp.errors import BundleError, VerificationError
from tests.bundles import build_bundle
from tests.conftest import REQUIRE_SYSTEM_DEPS

if shutil.which("g++") is None and not REQUIRE_SYSTEM_DEPS:
    pytest.skip("g++ is needed for C simulation (apt-get install -y g++)", allow_module_level=True)

from qsp.compile import transforms  # noqa: E402
from qsp.compile.csim import read_results  # noqa: E402
from qsp.compile.hls4ml_project import CompileOptions  # noqa: E402
from qsp.compile.pipeline import compile_bundle  # noqa: E402
from qsp.compile.precision import derive  # noqa: E402
from qsp.verify.emulate import emulate  # noqa: E402


ALL_PATHS = {"onnxruntime", "hls4ml_predict", "csim_testbench"}


def _assert_exact(res, n_inputs, n_out, paths=ALL_PATHS):
    rep = res.report
    assert rep.inputs == n_inputs
    names = {p.path: p for p in rep.paths}
    assert set(names) == set(paths)
    assert (res.project / "csim_tb").exists() == ("csim_testbench" in paths)
    for p in rep.paths:
        assert p.ran, p
        assert p.outputs_compared == n_inputs * n_out
        assert p.mismatches == 0 and p.max_abs_diff == 0.0, p
    v = json.loads((res.out / "verify.json").read_text())
    assert v["mismatches"] == 0 and v["summary"]["ok"] is True


def _sr_bundle():
    """A mini ESPCN: conv, relu, mask, quantize, conv, pixel shuffle (depth-to-space)."""
    import qsp
    from qsp.bundle import ModelRef, TaskInfo
    from qsp.bundle.export import make_bundle

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.PixelShuffle(2))
    m = qsp.convert(net, total_steps=20)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    for _ in range(20):
        loss = (m(torch.rand(8, 1, 6, 6)) - torch.rand(8, 1, 12, 12)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    g = torch.Generator().manual_seed(1)
    task = TaskInfo("sr", "super-resolution", "psnr", [1, 6, 6], [1, 12, 12])
    return make_bundle(m, task, ModelRef("tests.test_compile:_sr_bundle"), torch.rand(16, 1, 6, 6, generator=g),
                       torch.rand(16, 1, 12, 12, generator=g))


# ------------------------------------------------------------------ shared compiled projects
@pytest.fixture(scope="session")
def mlp_parallel(mlp_bundle, tmp_path_factory):
    return compile_bundle(mlp_bundle, tmp_path_factory.mktemp("c_mlp_par"), CompileOptions(backend="Vitis"),
                          accelerator_board="pynq-z2")


@pytest.fixture(scope="session")
def mlp_stream_unfolded(mlp_bundle, tmp_path_factory):
    return compile_bundle(mlp_bundle, tmp_path_factory.mktemp("c_mlp_str"),
                          CompileOptions(backend="Vivado", io_type="io_stream"), steps=())


@pytest.fixture(scope="session")
def cnn_stream(cnn_bundle, tmp_path_factory):
    return compile_bundle(cnn_bundle, tmp_path_factory.mktemp("c_cnn_str"), CompileOptions(io_type="io_stream"))


def test_mlp_io_parallel_exact(mlp_parallel):
    _assert_exact(mlp_parallel, 64, 10)
    assert (mlp_parallel.out / "qsp_hls_config.yaml").exists()
    assert (mlp_parallel.accelerator_project / "axi_stream_driver.py").exists()
    # the standalone testbench printed full precision
    assert "fout.precision(17)" in (mlp_parallel.project / "myproject_test.cpp").read_text()
    # built once: qsp's build_lib.sh linked one firmware object into hls4ml's library and csim_tb
    prj = mlp_parallel.project
    script = (prj / "build_lib.sh").read_text()
    assert "Written by qsp-compile" in script and script.count("-c firmware/${PROJECT}.cpp") == 1
    stamp = mlp_parallel.hls_model.config.get_config_value("Stamp")
    assert [f.name for f in (prj / "firmware").glob("*.so")] == [f"myproject-{stamp}.so"]
    assert not list(prj.glob("*.o")) and not list(prj.glob("qsp_obj.*"))


def test_mlp_io_stream_unfolded_masks_exact(mlp_stream_unfolded):
    _assert_exact(mlp_stream_unfolded, 64, 10)
    assert [lp.name for lp in mlp_stream_unfolded.plan.layers if lp.op == "mask"] == ["mask1", "mask2"]


def test_folded_and_unfolded_masks_identical(mlp_parallel, mlp_stream_unfolded):
    folded = read_results(mlp_parallel.project / "tb_data/csim_results.log", 10)
    unfolded = read_results(mlp_stream_unfolded.project / "tb_data/csim_results.log", 10)
    assert not any(lp.op == "mask" for lp in mlp_parallel.plan.layers)  # both masks folded away
    assert [lp.name for lp in mlp_parallel.plan.layers if lp.op == "linear"] == ["dense1", "dense2", "dense3"]
    assert np.array_equal(folded, unfolded)
    assert folded.shape == (64, 10)


def test_cnn_io_stream_exact(cnn_stream):
    _assert_exact(cnn_stream, 64, 10)


def test_every_rounding_mode_and_depth_to_space(tmp_path):
    """One compile covers all four rounding modes (input: floor, hidden: nearest, output
    quantizer: zero, SR conv: convergent) and the depth-to-space layer."""
    b = _sr_bundle()
    modes = iter(["floor", "nearest", "zero"])
    for n in b.graph:
        if n.op == "quantize":
            n.format = dataclasses.replace(n.format, rounding=next(modes, "convergent"))
    b.graph.insert(len(b.graph), type(b.graph[0])(name="out_quant", in_shape=[1, 12, 12], out_shape=[1, 12, 12],
                                                   format=dataclasses.replace(b.graph[0].format, bits=10, signed=True,
                                                                              rounding="zero")))
    assert {n.format.rounding for n in b.graph if n.op == "quantize"} == {"floor", "nearest", "zero"}
    b.model_out = None  # an edited graph: no longer the trained model (whose outputs the bundle carries)
    res = compile_bundle(b, tmp_path / "sr", CompileOptions(testbench=False))  # firmware values: predict
    _assert_exact(res, 16, 144, paths={"onnxruntime", "hls4ml_predict"})
    types = " ".join(lp.result_type() for lp in [res.plan.input] + res.plan.layers)
    for mode in ("AP_TRN,", "AP_RND,", "AP_TRN_ZERO,"):
        assert mode in types
    assert res.report.metric["name"] == "psnr"


def test_mutation_narrow_result_names_layer(cnn_bundle, tmp_path):
    from qsp.bundle import read_bundle

    plan = derive(transforms.run(read_bundle(cnn_bundle))[0])
    f = plan.by_name()["conv2"].result
    narrow = f"ap_ufixed<{f.bits - 3},{f.integer - 3},AP_RND_CONV,AP_SAT>"  # 3 integer bits fewer
    with pytest.raises(VerificationError) as ei:
        compile_bundle(cnn_bundle, tmp_path / "mut", CompileOptions(testbench=False), result_overrides={"conv2": narrow})
    rep = ei.value.report
    assert rep.first_diverging_layer == "conv2"
    assert "conv2" in str(ei.value)
    per = {d.layer: d for d in rep.layers}
    assert per["conv1"].mismatches == 0 and per["conv2"].mismatches > 0
    v = json.loads((tmp_path / "mut" / "verify.json").read_text())
    assert v["first_diverging_layer"] == "conv2" and v["mismatches"] > 0
    # the trace project was built once, by qsp's script (hls4ml's trace() would have rebuilt
    # it with its own, rewriting build_lib.sh)
    assert "Written by qsp-compile" in (tmp_path / "mut" / "hls4ml_prj_trace" / "build_lib.sh").read_text()


# ------------------------------------------------------------------ no C++ below
def test_build_script_parse_and_fallback(tmp_path):
    """qsp's build-once script is written only over the build_lib.sh layout it knows."""
    from pathlib import Path

    import hls4ml

    from qsp.compile import csim

    tmpl = (Path(hls4ml.__file__).parent / "templates/vivado/build_lib.sh").read_text()
    got = csim.parse_build_script(tmpl.replace("myproject", "prj").replace("mystamp", "1a2b3c4d"))
    assert got == csim.HlsBuildScript('-Ifirmware/ap_types/', "", "prj", "1a2b3c4d")
    assert csim.parse_build_script("#!/bin/bash\nmake\n") is None
    (tmp_path / "build_lib.sh").write_text("#!/bin/bash\nmake\n")
    assert csim.write_build_script(tmp_path, "myproject") is False  # left alone: the caller falls back
    assert (tmp_path / "build_lib.sh").read_text() == "#!/bin/bash\nmake\n"
    assert csim.cxx_flags(1).startswith("-O1 -fPIC")


def test_transforms_exact_and_remove_channels():
    for kind in ("mlp", "cnn"):
        b = build_bundle(kind)
        t, log = transforms.run(b)
        assert log
        assert np.array_equal(emulate(b, b.test_x), emulate(t, b.test_x))
    assert [n.out_shape for n in t.graph if n.op in ("conv2d", "linear")] != \
        [n.out_shape for n in b.graph if n.op in ("conv2d", "linear")]


def test_precision_plan_derivation():
    b = build_bundle("mlp")
    plan = derive(b)
    d1 = plan.by_name()["dense1"]
    q1 = b.qspec.node("quant1").format
    assert d1.result == q1 and d1.result_rounds and d1.folded == ["quant1"]
    assert d1.result_type() == q1.ap_type()
    assert plan.input.result_type() == b.qspec.input_format.ap_type()
    assert plan.by_name()["dense3"].result == plan.by_name()["dense3"].accum  # exact output
    assert plan.host_reshape == ["flatten1"] and plan.input_shape == [64]


def test_cli_unknown_board_lists_known(mlp_bundle, tmp_path, capsys):
    from qsp.compile.cli import main

    assert main([str(mlp_bundle), "--board", "nosuchboard", "--out", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "nosuchboard" in err and "pynq-z2" in err and "Traceback" not in err


def test_cli_dry_run(cnn_bundle, capsys):
    from qsp.compile.cli import main

    assert main([str(cnn_bundle), "--board", "pynq", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "conv2" in out and "AP_RND_CONV,AP_SAT" in out and "xc7z020clg400-1" in out


@pytest.mark.parametrize("damage", ["missing", "schema", "lstm"])
def test_bad_bundles(mlp_bundle, tmp_path, capsys, damage):
    from qsp.compile.cli import main

    b = tmp_path / "b"
    shutil.copytree(mlp_bundle, b)
    if damage == "missing":
        (b / "weights.npz").unlink()
        expect = "weights.npz"
    else:
        spec = json.loads((b / "qspec.json").read_text())
        if damage == "schema":
            spec["schema_version"] = 99
            expect = "schema_version"
        else:
            spec["graph"][2]["op"] = "lstm"
            expect = "lstm"
        (b / "qspec.json").write_text(json.dumps(spec))
    assert main([str(b), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err
    with pytest.raises(BundleError):
        compile_bundle(b, tmp_path / "o2")


def test_remove_dead_keeps_per_channel_formats_with_their_rows():
    """Dead-unit removal slices per-channel fraction bits with the weight rows (shared
    bundle.graph.remove_units, also used by DJPQ's channel removal)."""
    from qsp.compile import transforms
    from qsp.verify.emulate import emulate
    from tests.bundles import build_bundle

    b = build_bundle("mlp", per_channel=True)
    tx, log = transforms.run(b)
    assert any("removed" in m for m in log)
    for n in tx.graph:
        if n.op == "linear":
            assert len(n.weight.frac) == tx.weight(n.name).shape[0]
    assert np.array_equal(emulate(tx, b.test_x), emulate(b, b.test_x))
