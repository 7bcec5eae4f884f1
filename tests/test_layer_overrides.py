"""Per-layer overrides (qsp.Plan.layers, the YAML key ``layers``, ``--layers``): bits,
sparsity, rounding and per-channel by module-path pattern, first match wins, checked before
training; a YAML with two overrides trains, the bundle carries those layers' bits and
sparsity, and it compiles and verifies bit-exact."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from torch import nn

from qsp.errors import ConfigError
from qsp.train.cli import config_from_args, main
from tests.conftest import needs_gxx

QUIET = ["--no-progress", "--float-baseline", "false"]
RUN_YAML = """\
task: digits
epochs: 1
layers:
  - match: "3"            # the second Linear of the digits MLP
    weight_bits: 4
    weight_sparsity: 0.75
  - match: "7"            # the last Linear: kept dense by 'dense: [first, last]', but an override's sparsity wins
    weight_bits: 6
    weight_sparsity: 0.25
    rounding: floor
"""


def _mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))


def test_first_match_wins_and_dense():
    from qsp import Plan
    from qsp.nn import layer_settings

    plan = Plan(layers=[{"match": "3*", "weight_bits": 4}, {"match": "3", "weight_bits": 2, "weight_sparsity": 0.9},
                        {"match": "[24]", "act_bits": 6, "act_sparsity": 0.0}, {"match": "5", "weight_sparsity": 0.3}])
    rows = {r["layer"]: r for r in layer_settings(_mlp(), plan)}
    assert (rows["3"]["bits"], rows["3"]["sparsity"], rows["3"]["override"]) == (4, 0.5, "3*")  # first match only
    assert (rows["1"]["bits"], rows["1"]["sparsity"], rows["1"]["override"]) == (8, 0.0, None)  # dense: first
    assert rows["5"]["sparsity"] == 0.3  # dense: last, but the override sets weight_sparsity
    assert rows["2"]["bits"] == rows["4"]["bits"] == 6 and rows["2"]["sparsity"] == 0.0
    # what convert builds is what layer_settings says
    import qsp
    from qsp.nn import ActivationQuantizer, QLayer, WeightPruner

    m = qsp.convert(_mlp(), plan)
    mods = dict(m.named_modules())
    assert mods["net.3"].quantizer.bits == 4 and mods["net.5"].quantizer.bits == 8
    assert mods["net.5"].pruner.sparsity == 0.3 and mods["net.3"].pruner.sparsity == 0.5
    assert mods["net.1"].pruner is None and isinstance(mods["net.5"].pruner, WeightPruner)
    assert mods["net.2.quant"].bits == 6 and isinstance(mods["net.2.quant"], ActivationQuantizer)
    assert "prune" not in mods["net.2"]._modules and isinstance(mods["net.1"], QLayer)


@pytest.mark.parametrize("layers, expect", [
    ('[{match: "3", weight_bitz: 4}]', "layers['3']: unknown key 'weight_bitz'"),
    ('[{match: "3", weight_bits: 40}]', "layers['3'].weight_bits"),
    ('[{match: "3", act_sparsity: 1.5}]', "layers['3'].act_sparsity"),
    ('[{match: "3", rounding: up}]', "layers['3'].rounding"),
    ('[{match: "3", per_channel: maybe}]', "layers['3'].per_channel"),
    ('[{weight_bits: 4}]', "layers: each entry must be a mapping with 'match'"),
    ('[{match: "3"}]', "layers['3']: sets nothing"),
])
def test_bad_overrides_name_the_key(layers, expect):
    with pytest.raises(ConfigError) as ei:
        config_from_args(["--layers", layers])
    assert expect in str(ei.value)


def test_djpq_refuses_overrides(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("method: djpq\nlayers: [{match: '3', weight_bits: 4}]\n")
    with pytest.raises(ConfigError, match="layers: per-layer overrides are for method qsparse"):
        config_from_args(["--config", str(f)])


def test_pattern_matching_no_layer_exits_2_before_training(tmp_path, capsys):
    rc = main(["--out", str(tmp_path / "r"), "--epochs", "1", "--layers", '[{match: "features.*", weight_bits: 4}]',
               *QUIET])
    err = capsys.readouterr().err
    assert rc == 2 and "pattern 'features.*' matches no layer of the model" in err and "Traceback" not in err
    assert not list((tmp_path / "r").glob("checkpoints/*"))  # nothing trained


@pytest.fixture(scope="module")
def override_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("ovr")
    (d / "run.yaml").write_text(RUN_YAML)
    assert main(["--config", str(d / "run.yaml"), "--out", str(d / "run"), *QUIET]) == 0
    return d / "run"


def test_yaml_two_overrides_train_into_the_bundle(override_run, capsys):
    from qsp.bundle import Bundle

    b = Bundle.read(override_run / "bundle")
    lin = {n.source: n for n in b.graph if n.op == "linear"}
    assert set(lin) == {"net.1", "net.3", "net.5", "net.7"}
    bits = {s: n.weight.bits for s, n in lin.items()}
    assert bits == {"net.1": 8, "net.3": 4, "net.5": 8, "net.7": 6}
    zeros = {s: 1 - np.count_nonzero(b.weight(n.name)) / b.weight(n.name).size for s, n in lin.items()}
    assert zeros["net.3"] >= 0.75 and 0.25 <= zeros["net.7"] < 0.5 and 0.5 <= zeros["net.5"] < 0.75
    assert zeros["net.1"] < 0.25  # dense (first), only zeros from rounding
    assert lin["net.7"].weight.rounding == "floor" and lin["net.3"].weight.rounding == "convergent"
    # shown in the run's config.yaml (as comments: the file still loads as the run's config) ...
    text = (override_run / "config.yaml").read_text()
    assert "# resolved per layer" in text and yaml.safe_load(text)["layers"][0]["match"] == "3"
    rows = [ln.split() for ln in text.splitlines() if ln.startswith("#   ")]
    assert ["3", "weights", "4", "0.75", "convergent", "false", "3"] in [r[1:] for r in rows]
    assert ["7", "weights", "6", "0.25", "floor", "false", "7"] in [r[1:] for r in rows]
    # ... and in the train report (metrics.json's layer_plan, printed by report_table)
    from qsp.train.pipeline import report_table

    m = json.loads((override_run / "metrics.json").read_text())
    plan = {r["layer"]: r for r in m["layer_plan"]}
    assert (plan["3"]["bits"], plan["3"]["sparsity"], plan["7"]["override"]) == (4, 0.75, "7")
    assert "per-layer plan" in report_table(m)


@needs_gxx
def test_override_bundle_compiles_and_verifies(override_run, tmp_path):
    from qsp.compile.hls4ml_project import CompileOptions
    from qsp.compile.pipeline import compile_bundle

    res = compile_bundle(override_run / "bundle", tmp_path / "hls", CompileOptions(testbench=False), max_inputs=32)
    assert res.report.ok and res.report.mismatches == 0
    assert {"onnxruntime", "hls4ml_predict"} <= {p.path for p in res.report.paths if p.ran}
    w = {lp.name: lp.weight for lp in res.plan.layers if lp.weight is not None}
    assert sorted(f.bits for f in w.values()) == [4, 6, 8, 8]
