"""qsp-train end to end: CLI on digits -> valid bundle, resume equivalence, config checks."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from qsp.bundle import Bundle
from qsp.errors import ConfigError
from qsp.train import TrainConfig
from qsp.train.cli import config_from_args, main
from qsp.train.models import build_model
from qsp.train.pipeline import run

QUIET = ["--no-progress", "--float-baseline", "false"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "digits"
    rc = main(["--out", str(out), "--epochs", "3", *QUIET])
    assert rc == 0
    return out


def test_cli_digits_bundle(digits_run):
    spec = json.loads((digits_run / "bundle" / "qspec.json").read_text())
    assert spec["schema_version"] == 3
    b = Bundle.read(digits_run)  # validates: weights on grid, masks 0/1, shapes chained
    ops = [n.op for n in b.graph]
    assert ops[:2] == ["quantize", "flatten"] and ops.count("linear") == 4 and ops.count("mask") == 3
    lin = [n for n in b.graph if n.op == "linear"]
    assert [n.in_features for n in lin] == [64, 64, 32, 32] and lin[-1].out_features == 10
    # first and last layers dense (paper default); the middle ones pruned to exactly 50 %
    for n in lin[1:3]:
        w = b.weight(n.name)
        assert np.count_nonzero(w) <= w.size // 2  # round(0.5 n) pruned (+ zeros from rounding)
    for n in b.graph:
        if n.op == "mask":
            m = b.mask(n.name)
            assert m.size - np.count_nonzero(m) == round(0.5 * m.size)
    m = json.loads((digits_run / "bundle" / "metrics.json").read_text())
    assert m["weight_sparsity_pruned_layers"] == 0.5 and m["act_sparsity_masked_points"] == 0.5
    assert m["pruned_weight_layers"] == 2 and m["masked_activation_points"] == 3
    assert m["test_metric"] > 50.0 and len(b.test_x) == 359 and b.test_x.shape[1:] == (1, 8, 8)
    fp = m["footprint"]
    assert fp["weight_bits"] == 8 * sum(n.nonzeros for n in lin)
    assert fp["activation_bits"] == 8 * (64 + 32 + 16 + 16)  # input + three masked points of 64/32/32
    assert m["performance_density"] == pytest.approx(m["test_metric"] / fp["megabits"])
    assert b.qspec.metrics["test_metric"] == m["test_metric"]
    cfg = yaml.safe_load((digits_run / "bundle" / "config.yaml").read_text())
    assert cfg["epochs"] == 3 and cfg["model"] == "mlp" and cfg["batch_size"] == 32
    log = (digits_run / "bundle" / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,step,train_loss,val_metric") and len(log) == 4
    # the module rebuilds from factory + kwargs + state_dict, without pickle
    net = build_model(b.qspec.model.factory, b.qspec.model.kwargs)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in b.state_dict.items()})
    # model.onnx (qsp.export.onnx) reproduces the trained model's test accuracy
    from qsp.export.onnx import run_onnx

    pred = run_onnx(digits_run / "bundle" / "model.onnx", b.test_x)
    assert abs(100.0 * np.mean(pred.argmax(1) == b.test_y) - m["test_metric"]) <= 100.0 / 359 + 1e-9
    ck = torch.load(digits_run / "checkpoints" / "last.pt", weights_only=True)
    assert ck["epoch"] == 3 and ck["step"] == 3 * 41


def _final_state(out):
    return torch.load(out / "checkpoints" / "last.pt", weights_only=True)


def test_resume_is_identical(tmp_path):
    base = dict(task="digits", epochs=3, checkpoint_every=17, float_baseline=False, progress=False)
    full = run(TrainConfig(out=str(tmp_path / "full"), **base), echo=lambda *a: None)
    assert not full.stopped
    part = tmp_path / "part"
    r1 = run(TrainConfig(out=str(part), max_steps=50, **base), echo=lambda *a: None)  # mid pruning, mid epoch 2
    assert r1.stopped and _final_state(part)["step"] == 50 and not (part / "bundle").exists()
    r2 = run(TrainConfig(out=str(part), resume=True, max_steps=100, **base), echo=lambda *a: None)  # quant on
    assert r2.stopped and _final_state(part)["step"] == 100
    r3 = run(TrainConfig(out=str(part), resume=True, **base), echo=lambda *a: None)
    assert not r3.stopped
    a, b = _final_state(tmp_path / "full"), _final_state(part)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [r["train_loss"] for r in a["log"]] == [r["train_loss"] for r in b["log"]]
    wa, wb = Bundle.read(tmp_path / "full"), Bundle.read(part)
    assert wa.weights.keys() == wb.weights.keys()
    assert all(np.array_equal(wa.weights[k], wb.weights[k]) for k in wa.weights)
    assert full.metrics["test_metric"] == r3.metrics["test_metric"]


def test_resume_rejects_changed_config(tmp_path):
    run(TrainConfig(out=str(tmp_path), epochs=2, max_steps=5, float_baseline=False, progress=False),
        echo=lambda *a: None)
    with pytest.raises(ConfigError, match="weight_bits"):
        run(TrainConfig(out=str(tmp_path), epochs=2, resume=True, weight_bits=4), {"weight_bits", "resume", "out"},
            echo=lambda *a: None)
    with pytest.raises(ConfigError, match="already holds a run"):
        run(TrainConfig(out=str(tmp_path), epochs=2, progress=False), echo=lambda *a: None)


def test_user_factory_and_quantize_then_prune(tmp_path):
    rc = main(["--out", str(tmp_path), "--epochs", "2", "--model", "tests.bundles:tiny_mlp",
               "--order", "quantize-then-prune", "--weight-bits", "6", "--act-sparsity", "0.25", *QUIET])
    assert rc == 0
    b = Bundle.read(tmp_path)
    assert b.qspec.model.factory == "tests.bundles:tiny_mlp" and b.qspec.plan["order"] == "quantize-then-prune"
    assert {n.weight.bits for n in b.graph if n.op == "linear"} == {6}
    # quantize-then-prune: relu -> quantize -> mask
    ops = [n.op for n in b.graph]
    i = ops.index("relu")
    assert ops[i:i + 3] == ["relu", "quantize", "mask"]
    assert all(n.sparsity == 0.25 for n in b.graph if n.op == "mask")


@pytest.mark.parametrize("args, key", [
    (["--weight-bits", "40"], "weight_bits"),
    (["--act-sparsity", "1.5"], "act_sparsity"),
    (["--order", "sideways"], "order"),
    (["--epochs", "0"], "epochs"),
    (["--epochs", "two"], "epochs"),
    (["--quantiles", "0.1"], "quantiles"),
    (["--rounding", "up"], "rounding"),
    (["--model", "resnet"], "model"),
    (["--task", "cifar"], "task"),
    (["--optimizer", "lion"], "optimizer"),
    (["--per-channel", "maybe"], "per_channel"),
    (["--order", "auto", "--method", "djpq"], "order"),  # auto: only for methods that use an order
])
def test_bad_values_name_the_key(args, key):
    with pytest.raises(ConfigError, match=f"^{key}"):
        config_from_args(args)


def test_yaml_config_and_overrides(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("task: digits\nweight_bits: 4\nact-sparsity: 0.3\ndense: [first]\nquantiles: [0.01, 0.99]\n")
    cfg, explicit, _ = config_from_args(["--config", str(f), "--weight-bits", "6", "--epochs", "7"])
    assert (cfg.weight_bits, cfg.act_sparsity, cfg.epochs, cfg.dense, cfg.quantiles) == (6, 0.3, 7, ["first"], [0.01, 0.99])
    assert explicit == {"task", "weight_bits", "act_sparsity", "dense", "quantiles", "epochs"}
    plan = cfg.plan(100)
    assert plan.dense == ("first",) and plan.quantiles == (0.01, 0.99) and plan.weight_bits == 6
    f.write_text("weight_bitz: 4\n")
    with pytest.raises(ConfigError, match="unknown key 'weight_bitz'.*weight_bits"):
        config_from_args(["--config", str(f)])
    f.write_text("model_kwargs: 3\n")
    with pytest.raises(ConfigError, match="^.*model_kwargs"):
        config_from_args(["--config", str(f)])


def test_cli_errors_without_traceback(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("epochs: -1\n")
    assert main(["--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert "epochs" in err and "Traceback" not in err
    assert main(["--task", "custom", "--data-dir", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "o"),
                 *QUIET]) == 2  # missing data: bad input, like a bad config (README "Exit status")
    err = capsys.readouterr().err
    assert "nope.npz" in err and "Traceback" not in err


def test_help_documents_every_key():
    out = subprocess.run([sys.executable, "-m", "qsp.train", "--help"], capture_output=True, text=True, check=True).stdout
    for k in TrainConfig.keys():
        flag = "--no-progress" if k == "progress" else "--" + k.replace("_", "-")
        assert flag in out, flag
    for name in ("digits|", "|fashion-mnist", "super-resolution", "prune-then-quantize|quantize-then-prune|auto", "cpu|cuda"):
        assert name in out


def test_schedule_must_fit_the_run(tmp_path):
    with pytest.raises(ConfigError, match="^quant_delay: .* only 41 steps"):
        run(TrainConfig(out=str(tmp_path), epochs=1, quant_delay=50, float_baseline=False, progress=False),
            echo=lambda *a: None)


def test_default_out_and_latest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--epochs", "1", *QUIET]) == 0
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink() and (latest / "bundle" / "qspec.json").is_file()
    assert latest.resolve().name.startswith("digits-")
    before = Bundle.read(latest).weights
    assert main(["--resume", *QUIET]) == 0  # finished run: nothing to train, same bundle again
    after = Bundle.read(latest).weights
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)


def test_readme_train_lines_parse(capsys):
    """Every qsp-train line of README's "Using the stages" block is a valid configuration
    (checked with --print-config; lines that need the user's own files are skipped)."""
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("## Using the stages", 1)[1].split("```", 2)[1]
    lines = [ln.split("#")[0].strip() for ln in block.splitlines() if ln.startswith("qsp-train")]
    checked = 0
    for ln in lines:
        if any(w in ln for w in ("mypkg", "run.yaml", "--resume")):
            continue
        assert main(shlex.split(ln)[1:] + ["--print-config"]) == 0, ln
        checked += 1
    assert checked >= 5 and "init: float" in capsys.readouterr().out
