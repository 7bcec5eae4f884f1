"""Config key ``init``: start quantized training from trained float weights (``float``:
trained first in the run; or a state_dict file), as DJPQ and most QAT recipes do."""
from __future__ import annotations

import json
import re

import pytest
import torch

from qsp.errors import ConfigError
from qsp.train import TrainConfig
from qsp.train.cli import main
from qsp.train.data import load_task
from qsp.train.loop import Trainer
from qsp.train.methods import get_method
from qsp.train.models import build_model, resolve_model
from qsp.train.pipeline import run

QUIET = dict(task="digits", progress=False, float_baseline=False)


def _weights(sd):
    return {k: v for k, v in sd.items() if k.endswith("weight")}


def _built(cfg, init_state):
    from qsp.train.config import resolve

    spec, data = load_task(cfg)
    cfg = resolve(cfg, spec.defaults)
    factory, kwargs = resolve_model(cfg.model, cfg.model_kwargs, data.input_shape, data.info)
    tr = Trainer(cfg, spec, data, get_method(cfg.method, cfg), factory, kwargs, init_state=init_state)
    return tr.build()


def test_init_float_trains_float_first_and_starts_from_it(tmp_path):
    out = tmp_path / "r"
    rep = run(TrainConfig(out=str(out), epochs=1, init="float", init_epochs=2, **QUIET), echo=lambda *a: None)
    fl = rep.metrics["float"]
    assert fl["epochs"] == 2 and "initialised from it" in fl["source"]
    assert (out / "float_init.pt").is_file() and json.loads((out / "float_init.json").read_text()).items() <= fl.items()
    sd = torch.load(out / "float_init.pt", weights_only=True)
    # the converted model's weight tensors are the float model's (a fresh seeded model's are not)
    model = _built(TrainConfig(out=str(tmp_path / "x"), epochs=1, **QUIET), out / "float_init.pt")
    params = [p.detach() for p in model.parameters()]
    for k, w in _weights(sd).items():
        assert any(p.shape == w.shape and torch.equal(p, w) for p in params), k
    fresh = [p.detach() for p in _built(TrainConfig(out=str(tmp_path / "y"), epochs=1, **QUIET), None).parameters()]
    assert not all(any(p.shape == w.shape and torch.equal(p, w) for p in fresh) for w in _weights(sd).values())


def test_init_state_dict_that_does_not_fit_is_refused_before_training(tmp_path):
    cfg = TrainConfig(**QUIET)
    spec, data = load_task(cfg)
    from qsp.train.config import resolve

    cfg = resolve(cfg, spec.defaults)
    sd = build_model(*resolve_model(cfg.model, cfg.model_kwargs, data.input_shape, data.info)).state_dict()
    first = next(iter(sd))
    sd["extra.weight"] = sd.pop(first)
    bad = tmp_path / "bad.pt"
    torch.save(sd, bad)
    with pytest.raises(ConfigError, match=r"init: .*does not fit the model: missing \[.*\], unexpected \['extra.weight'\]"):
        run(TrainConfig(out=str(tmp_path / "r"), epochs=1, init=str(bad), **QUIET), echo=lambda *a: None)
    assert not (tmp_path / "r" / "checkpoints").exists() or not any((tmp_path / "r" / "checkpoints").iterdir())
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="not a loadable state_dict"):
        run(TrainConfig(out=str(tmp_path / "r2"), epochs=1, init=str(junk), **QUIET), echo=lambda *a: None)


def test_init_cli_errors(tmp_path, capsys):
    assert main(["--init", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "a"), "--no-progress"]) == 2
    assert re.search(r"init \(.float. or .*\): file .*missing.pt. does not exist", capsys.readouterr().err)
    assert main(["--init-epochs", "3", "--out", str(tmp_path / "b"), "--no-progress"]) == 2
    assert "init_epochs" in capsys.readouterr().err


def test_init_float_checks_the_model_before_training_the_float_one(tmp_path, capsys):
    """A bad per-layer pattern stops the run before the float model trains (nothing written)."""
    rc = main(["--init", "float", "--epochs", "1", "--out", str(tmp_path / "r"), "--no-progress",
               "--float-baseline", "false", "--layers", "[{match: 'nope*', weight_bits: 4}]"])
    err = capsys.readouterr()
    assert rc == 2 and "nope*" in err.err and "init: training the float model" not in err.out
    assert not (tmp_path / "r" / "float_init.pt").exists()
