"""qsp-compile --hls-config: the qsp_hls_config.yaml qsp-compile writes, edited by a user,
rebuilt and verified three ways. README's example (edit one layer's reuse factor) is run as
written; a narrowed precision fails naming the layer and the first differing output; a bad
file is refused naming the key, before anything is built."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import needs_gxx

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> list[str]:
    """The command lines of README's --hls-config example block."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- hls-config example -->\s*```bash\n(.*?)```", text, re.S)
    assert m, "README has no '<!-- hls-config example -->' bash block"
    return [ln.split("  #")[0].strip() for ln in m.group(1).splitlines() if ln.strip() and not ln.startswith("#")]


def _reuse_factors(project: Path) -> dict[str, int]:
    """layer -> reuse_factor in the generated firmware/parameters.h (config structs are
    named config2, config4, ... in layer order; hls4ml comments each with the layer name)."""
    text = (project / "firmware" / "parameters.h").read_text()
    out = {}
    for name, body in re.findall(r"// (\w+)\nstruct config\w+ : nnet::\w+ \{(.*?)\n\};", text, re.S):
        m = re.search(r"reuse_factor = (\d+);", body)
        if m:
            out[name] = int(m.group(1))
    return out


@pytest.fixture(scope="module")
def readme_flow(mlp_bundle, tmp_path_factory):
    """README's example run as written, in a temp dir whose runs/latest/bundle is the test
    MLP bundle: qsp-compile (writes the config), sed (edits dense1's ReuseFactor),
    qsp-compile --hls-config (rebuild + verify)."""
    from qsp.compile.cli import main

    work = tmp_path_factory.mktemp("readme_hls")
    (work / "runs" / "latest").mkdir(parents=True)
    (work / "runs" / "latest" / "bundle").symlink_to(mlp_bundle)
    rcs = []
    for line in readme_example():
        argv = shlex.split(line)
        if argv[0] == "qsp-compile":
            rcs.append(main([str(work / a) if a.startswith("runs/") else a for a in argv[1:]]))
        else:
            rcs.append(subprocess.run(argv, cwd=work).returncode)
    return work, rcs


@needs_gxx
def test_readme_reuse_factor_edit_rebuilds_verified(readme_flow):
    work, rcs = readme_flow
    assert rcs == [0, 0, 0]
    first, second = work / "runs/hls", work / "runs/hls-rf16"
    assert not (first / "hls4ml_config.yaml").exists()  # qsp's file has its own name
    edited = yaml.safe_load((first / "qsp_hls_config.yaml").read_text())
    assert edited["HLSConfig"]["LayerName"]["dense1"]["ReuseFactor"] == 16
    before, after = _reuse_factors(first / "hls4ml_prj"), _reuse_factors(second / "hls4ml_prj")
    assert before["dense1"] != 16 and after["dense1"] == 16  # the generated project really changed
    assert {k: v for k, v in before.items() if k != "dense1"} == {k: v for k, v in after.items() if k != "dense1"}
    v = json.loads((second / "verify.json").read_text())
    assert v["summary"]["ok"] and v["mismatches"] == 0
    assert {"onnxruntime", "hls4ml_predict", "csim_testbench"} <= {p["path"] for p in v["paths"] if p["ran"]}
    # the estimator reads the compiled project's strategies from qsp's file
    from qsp.estimate.core import strategies_from_project

    assert strategies_from_project(second)["dense1"].reuse_factor == 16


@needs_gxx
def test_narrowed_precision_fails_naming_layer_and_output(readme_flow, mlp_bundle, tmp_path, capsys):
    from qsp.compile.cli import main

    work, _ = readme_flow
    d = yaml.safe_load((work / "runs/hls/qsp_hls_config.yaml").read_text())
    res = d["HLSConfig"]["LayerName"]["dense2"]["Precision"]["result"]  # ap_ufixed<8,I,AP_RND_CONV,AP_SAT>
    bits, integer = map(int, re.match(r"ap_ufixed<(\d+),(-?\d+),", res).groups())
    d["HLSConfig"]["LayerName"]["dense2"]["Precision"]["result"] = res.replace(
        f"<{bits},{integer},", f"<{bits - 2},{integer - 2},")  # same LSB, 2 integer bits fewer: saturates
    f = tmp_path / "narrow.yaml"
    f.write_text(yaml.safe_dump(d, sort_keys=False))
    capsys.readouterr()
    assert main([str(mlp_bundle), "--hls-config", str(f), "--out", str(tmp_path / "o"), "--max-inputs", "16"]) == 1
    err = capsys.readouterr().err
    assert "dense2.Precision.result" in err  # the edit is named in the log
    assert "first diverging layer: dense2" in err and "first differing output: input " in err
    v = json.loads((tmp_path / "o" / "verify.json").read_text())
    assert v["first_diverging_layer"] == "dense2"
    per = {p["layer"]: p for p in v["per_layer"]}
    assert per["dense1"]["mismatches"] == 0 and per["dense2"]["mismatches"] > 0
    assert all(p["first_mismatch"] for p in v["paths"] if p["mismatches"])


def test_first_mismatch_names_one_lsb_fault():
    """compare() reports the first differing output of a one-LSB fault, and none without."""
    import numpy as np

    from qsp.compile.verify import compare

    ref = np.arange(12, dtype=np.float64).reshape(3, 4) / 8
    got = ref.copy()
    assert compare("csim", ref, got).first_mismatch is None
    got[1, 2] += 1 / 8
    r = compare("csim", ref, got)
    assert r.mismatches == 1 and r.first_mismatch == {"input": 1, "output": 2, "got": 0.875, "expected": 0.75}


# ------------------------------------------------------------------ bad files: exit 2, no build
def _written(mlp_bundle, tmp_path) -> dict:
    """qsp's derived config for the MLP bundle, as --hls-config reads it (no C++ needed)."""
    from qsp.compile import hls_config as hcf
    from qsp.compile.hls4ml_project import CompileOptions
    from qsp.compile.pipeline import apply_hls_config, prepare

    b, tx, log, plan = prepare(mlp_bundle)
    opts = CompileOptions(board="pynq-z2", part="xc7z020clg400-1", clock_period_ns=10.0)
    ed = apply_hls_config({}, opts, tx, plan)
    hcf.write(tmp_path / hcf.FILE_NAME, ed.cfg, opts, plan.input_shape, mlp_bundle)
    return yaml.safe_load((tmp_path / hcf.FILE_NAME).read_text())


def _set(d, path, value):
    keys = path.split(".")
    for k in keys[:-1]:
        d = d[k]
    if value is _DEL:
        d.pop(keys[-1])
    else:
        d[keys[-1]] = value


_DEL = object()
BAD = [
    ("HLSConfig.LayerName.dense9", {"ReuseFactor": 2}, "HLSConfig.LayerName.dense9: no layer of that name"),
    ("HLSConfig.LayerName.dense2.Reuse", 4, "unknown key HLSConfig.LayerName.dense2.Reuse"),
    ("HLSConfig.LayerName.relu1.Strategy", "Resource", "unknown key HLSConfig.LayerName.relu1.Strategy"),
    ("HLSConfig.LayerName.dense2.ReuseFactor", 3, "HLSConfig.LayerName.dense2.ReuseFactor: 3 is not one"),
    ("HLSConfig.LayerName.dense2.ReuseFactor", "four", "HLSConfig.LayerName.dense2.ReuseFactor: 'four'"),
    ("HLSConfig.LayerName.dense2.Strategy", "Fastest", "HLSConfig.LayerName.dense2.Strategy: 'Fastest'"),
    ("HLSConfig.LayerName.dense2.Strategy", "resource_unrolled", "HLSConfig.LayerName.dense2.Strategy: resource_unrolled"),
    ("HLSConfig.LayerName.dense2.Precision.result", "ap_fixed<8>", "dense2.Precision.result: 'ap_fixed<8>'"),
    ("HLSConfig.LayerName.dense2.Precision.table", "ap_fixed<8,2>", "dense2.Precision.table: not a precision"),
    ("HLSConfig.Model.ChannelsLastConversion", "off", "HLSConfig.Model.ChannelsLastConversion must stay"),
    ("IOType", "io_serial", "IOType 'io_serial'"),
    ("InputShape", [1, 8, 8], "InputShape [1, 8, 8] is not this bundle's input shape"),
    ("Board", "pynq-z2", "unknown key 'Board'"),
]


@pytest.mark.parametrize("path,value,expect", BAD, ids=[b[0].split(".")[-1] + "=" + str(b[1])[:12] for b in BAD])
def test_bad_hls_config_names_the_key(mlp_bundle, tmp_path, capsys, path, value, expect):
    from qsp.compile.cli import main

    d = _written(mlp_bundle, tmp_path)
    _set(d, path, value)
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(d, sort_keys=False))
    capsys.readouterr()
    assert main([str(mlp_bundle), "--hls-config", str(f), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err, err


def test_hls_config_flags_conflict_and_dry_run(mlp_bundle, tmp_path, capsys):
    from qsp.compile.cli import main

    d = _written(mlp_bundle, tmp_path)
    f = tmp_path / "ok.yaml"
    d["HLSConfig"]["LayerName"]["dense2"]["ReuseFactor"] = 4
    f.write_text(yaml.safe_dump(d, sort_keys=False))
    assert main([str(mlp_bundle), "--hls-config", str(f), "--io-type", "io_stream", "--dry-run"]) == 2
    assert "--io-type io_stream: with --hls-config the file sets its IOType" in capsys.readouterr().err
    assert main([str(mlp_bundle), "--hls-config", str(f), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dense2.ReuseFactor: 1 -> 4" in out and re.search(r"dense2\s+Latency\s+ReuseFactor 4", out)
    assert main([str(mlp_bundle), "--hls-config", str(tmp_path / "nope.yaml"), "--dry-run"]) == 2
    assert "nope.yaml" in capsys.readouterr().err
