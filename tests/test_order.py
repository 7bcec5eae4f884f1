"""qsp-train --order auto: the pure selection rule, the trial budget, and the end-to-end run
on digits (both trials logged and recorded, the winner retrained exactly as --order <winner>)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from qsp.bundle import Bundle
from qsp.errors import ConfigError
from qsp.train import TrainConfig
from qsp.train.cli import main
from qsp.train.order import (TIE_PREFERENCE, OrderChoice, TrialResult, select_order, trial_config,
                             trial_epochs)

PQ, QP = "prune-then-quantize", "quantize-then-prune"
QUIET = ["--no-progress", "--float-baseline", "false"]


def T(order, metric, mb):
    return TrialResult(order, metric, mb, "accuracy")


# ====================================================================== selection (pure)
@pytest.mark.parametrize("pq, qp, winner", [
    ((90.0, 0.05), (80.0, 0.05), PQ),   # same footprint, better metric
    ((80.0, 0.05), (90.0, 0.05), QP),
    ((90.0, 0.10), (80.0, 0.05), QP),   # 900 vs 1600 /Mb: the smaller footprint wins on PD
    ((50.0, 0.02), (90.0, 0.05), PQ),   # 2500 vs 1800: lower metric, higher PD wins
])
def test_higher_pd_wins(pq, qp, winner):
    trials = [T(PQ, *pq), T(QP, *qp)]
    c = select_order(trials)
    assert c.order == winner and c.rule == "performance_density"
    assert select_order(trials[::-1]).order == winner  # the trials' order does not matter
    pds = {t.order: t.performance_density for t in trials}
    assert pds[winner] == max(pds.values())
    assert f"PD {pds[winner]:.4f}" in c.reason


def test_pd_tie_goes_to_higher_metric():
    # 90/0.09 = 80/0.08 = 1000 /Mb exactly in decimal, within 1e-9 in binary
    c = select_order([T(PQ, 80.0, 0.08), T(QP, 90.0, 0.09)])
    assert c.order == QP and c.rule == "metric"
    assert "PD tie" in c.reason and "quantize-then-prune 90.0000 > prune-then-quantize 80.0000" in c.reason
    c = select_order([T(PQ, 90.0, 0.09), T(QP, 80.0, 0.08)])
    assert c.order == PQ and c.rule == "metric"


def test_full_tie_prefers_prune_then_quantize():
    for trials in ([T(PQ, 85.0, 0.05), T(QP, 85.0, 0.05)], [T(QP, 85.0, 0.05), T(PQ, 85.0, 0.05)]):
        c = select_order(trials)
        assert c.order == PQ == TIE_PREFERENCE[0] and c.rule == "preference"
    # the preference is a parameter of the pure function
    assert select_order([T(PQ, 85.0, 0.05), T(QP, 85.0, 0.05)], preference=(QP, PQ)).order == QP


def test_tolerance_and_nan():
    a, b = T(PQ, 90.0, 0.05), T(QP, 90.0 * (1 + 1e-12), 0.05)
    c = select_order([a, b])  # PDs and metrics equal within 1e-9: preference
    assert (c.order, c.rule) == (PQ, "preference")
    assert select_order([a, b], rtol=0.0).order == QP  # exact comparison: b's PD is larger
    assert select_order([a, b], rtol=0.01).order == PQ  # 1 %: a tie, metrics equal within 1 % -> preference
    nan = T(PQ, float("nan"), 0.05)
    assert math.isnan(nan.performance_density)
    assert select_order([nan, T(QP, 10.0, 0.05)]).order == QP
    assert select_order([T(PQ, 10.0, 0.0), T(QP, 10.0, 0.05)]).order == QP  # zero footprint: PD undefined
    assert select_order([nan, T(QP, float("nan"), 0.05)]).order == PQ  # nothing to compare: preference


def test_select_rejects_bad_input():
    with pytest.raises(ValueError, match="no trial"):
        select_order([])
    with pytest.raises(ValueError, match="duplicate"):
        select_order([T(PQ, 1, 1), T(PQ, 2, 1)])
    with pytest.raises(ValueError, match="unknown"):
        select_order([T("sideways", 1, 1)])


def test_choice_round_trips_through_json():
    c = select_order([T(PQ, 90.0, 0.05), T(QP, 80.0, 0.05)])
    d = json.loads(json.dumps(c.to_dict()))
    assert d["chosen"] == PQ and [t["order"] for t in d["trials"]] == [PQ, QP]
    assert d["trials"][0]["performance_density"] == pytest.approx(1800.0)
    assert OrderChoice.from_dict(d) == c


# ====================================================================== budget and config
def test_trial_budget_and_schedule_scaling():
    cfg = TrainConfig(epochs=10)
    assert trial_epochs(cfg) == 3  # 0.3 x 10
    assert trial_epochs(cfg.with_(order_trial_fraction=0.01)) == 1
    assert trial_epochs(cfg.with_(order_trial_fraction=1.0)) == 10
    assert trial_epochs(cfg.with_(order_trial_epochs=4)) == 4
    assert trial_epochs(cfg.with_(order_trial_epochs=40)) == 10
    t = trial_config(cfg.with_(order="auto", prune_start=100, quant_delay=0, window=7, prune_repetition=5,
                               max_steps=3, checkpoint_every=10), QP, 2)
    assert (t.order, t.epochs, t.max_steps, t.checkpoint_every) == (QP, 2, None, 0)
    assert (t.prune_start, t.quant_delay, t.window, t.prune_repetition, t.prune_interval) == (20, 0, 1, 5, None)


@pytest.mark.parametrize("kw, key", [
    ({"method": "djpq"}, "order"),
    ({"val_fraction": 0.0}, "val_fraction"),
    ({"order_trial_fraction": 0.0}, "order_trial_fraction"),
    ({"order_trial_epochs": 0}, "order_trial_epochs"),
])
def test_auto_config_errors_name_the_key(kw, key):
    with pytest.raises(ConfigError, match=f"^{key}:"):
        TrainConfig(order="auto", **kw).validate()


# ====================================================================== end to end on digits
def test_cli_order_auto_digits(tmp_path, capsys):
    out = tmp_path / "auto"
    assert main(["--order", "auto", "--epochs", "2", "--out", str(out), *QUIET]) == 0
    log = capsys.readouterr().out
    spec = json.loads((out / "bundle" / "qspec.json").read_text())
    rec = spec["extra"]["order_auto"]
    trials = {t["order"]: t for t in rec["trials"]}
    assert set(trials) == {PQ, QP} and rec["split"] == "validation"
    assert rec["trial_epochs"] == 1 and rec["epochs"] == 2  # round(0.3 x 2)
    for o, t in trials.items():
        assert t["epochs"] == 1 and t["steps"] == 41  # 1,293 training digits / batch 32
        assert t["performance_density"] == pytest.approx(t["metric"] / t["megabits"])
        assert t["megabits"] == (t["weight_bits"] + t["activation_bits"]) / 1e6
        assert f"trial {o}" in log and f"PD {t['performance_density']:.4f}" in log
    expected = select_order([TrialResult.from_dict(t) for t in rec["trials"]])
    chosen = rec["chosen"]
    assert chosen == expected.order and rec["rule"] == expected.rule
    assert f"order auto: chose {chosen}" in log
    # the winner is the plan's order, in the bundle, config.yaml and the final run's header
    assert spec["plan"]["order"] == chosen
    assert yaml.safe_load((out / "config.yaml").read_text())["order"] == chosen
    assert f"order {chosen}, 2 epochs" in log
    assert json.loads((out / "order_auto.json").read_text())["chosen"] == chosen

    # a trial is exactly the short run of its order (same seed, same data): its validation
    # metric and footprint are those of `--order o --epochs 1`
    loser = QP if chosen == PQ else PQ
    short = tmp_path / "short"
    assert main(["--order", loser, "--epochs", "1", "--out", str(short), *QUIET]) == 0
    m = json.loads((short / "metrics.json").read_text())
    assert m["val_metric"] == trials[loser]["metric"]
    assert m["footprint"]["total_bits"] == trials[loser]["weight_bits"] + trials[loser]["activation_bits"]

    # the final model is exactly the run `--order <winner>` gives: retrained from scratch, same seed
    ref = tmp_path / "ref"
    assert main(["--order", chosen, "--epochs", "2", "--out", str(ref), *QUIET]) == 0
    a, b = Bundle.read(out), Bundle.read(ref)
    assert set(a.weights) == set(b.weights)
    for k in a.weights:
        np.testing.assert_array_equal(a.weights[k], b.weights[k])
    for k in a.masks:
        np.testing.assert_array_equal(a.masks[k], b.masks[k])
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (out, ref))
    assert ma["test_metric"] == mb["test_metric"] and ma["performance_density"] == mb["performance_density"]


def test_resumed_auto_run_keeps_the_record(tmp_path, capsys):
    out = tmp_path / "auto"
    base = ["--order", "auto", "--epochs", "2", "--order-trial-epochs", "1", "--train-limit", "320",
            "--test-limit", "100", "--out", str(out), *QUIET]
    assert main(base + ["--max-steps", "12"]) == 0  # stops mid final run (2 x 10 steps)
    assert not (out / "bundle").exists()
    chosen = json.loads((out / "order_auto.json").read_text())["chosen"]
    capsys.readouterr()
    assert main(["--resume", "--out", str(out), "--max-steps", "null", "--no-progress"]) == 0
    log = capsys.readouterr().out
    assert "order auto: trial" in log and "order auto: one trial per order" not in log  # no new trials
    spec = json.loads((out / "bundle" / "qspec.json").read_text())
    assert spec["extra"]["order_auto"]["chosen"] == chosen == spec["plan"]["order"]
