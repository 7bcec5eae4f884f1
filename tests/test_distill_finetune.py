"""Two standard QAT recipe steps: knowledge distillation from the float init model (config
keys ``distill``, ``distill_temperature``) and DJPQ's fine-tuning phase (``djpq.finetune``:
bits, gates and folded BatchNorm statistics frozen for the last part of the run)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qsp.djpq.gates import VIBGate
from qsp.djpq.layers import DJPQLayer
from qsp.djpq.quant import LearnedQuantizer
from qsp.errors import ConfigError
from qsp.train import TrainConfig
from qsp.train.config import resolve
from qsp.train.data import load_task
from qsp.train.loop import Trainer
from qsp.train.methods import get_method
from qsp.train.models import build_model, resolve_model
from qsp.train.pipeline import run

QUIET = dict(task="digits", progress=False, float_baseline=False, train_limit=256, test_limit=64)


def _trainer(cfg, init_state=None):
    spec, data = load_task(cfg)
    cfg = resolve(cfg, spec.defaults)
    factory, kwargs = resolve_model(cfg.model, cfg.model_kwargs, data.input_shape, data.info)
    tr = Trainer(cfg, spec, data, get_method(cfg.method, cfg), factory, kwargs, init_state=init_state)
    tr.build()
    return tr, factory, kwargs


def _float_state(tmp_path, cfg):
    spec, data = load_task(cfg)
    cfg = resolve(cfg, spec.defaults)
    torch.manual_seed(123)
    m = build_model(*resolve_model(cfg.model, cfg.model_kwargs, data.input_shape, data.info))
    p = tmp_path / "float.pt"
    torch.save(m.state_dict(), p)
    return p, m


@pytest.mark.parametrize("method", ["qsparse", "djpq"])
def test_distill_loss_is_the_hand_written_mix_with_the_init_model_as_teacher(tmp_path, method):
    cfg = TrainConfig(method=method, epochs=1, distill=0.7, distill_temperature=3.0, **QUIET)
    path, teacher = _float_state(tmp_path, cfg)
    tr, *_ = _trainer(cfg.with_(init=str(path)), path)
    x, y = tr.batch(tr.epoch_indices(0), 0)
    tr.model.train()
    out = tr.model(x)
    got = tr.task_loss(out, x, y)
    # by hand, with a separately built float model holding the init weights
    t = teacher.eval()(x)
    p_t = F.softmax(t / 3.0, dim=1)
    kl = (p_t * (torch.log(p_t) - F.log_softmax(out / 3.0, dim=1))).sum(1).mean()
    want = 0.3 * F.cross_entropy(out, y) + 0.7 * 9.0 * kl
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, F.cross_entropy(out, y))  # the teacher term is really there
    # the teacher is frozen: not in the optimizer, unchanged by a training step
    before = {k: v.clone() for k, v in tr.teacher.state_dict().items()}
    tr.train_step(x, y, 0)
    assert all(torch.equal(before[k], v) for k, v in tr.teacher.state_dict().items())
    opt_ids = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in opt_ids for p in tr.teacher.parameters())


def test_distill_without_it_the_loss_is_the_task_loss(tmp_path):
    cfg = TrainConfig(method="qsparse", epochs=1, **QUIET)
    tr, *_ = _trainer(cfg)
    x, y = tr.batch(tr.epoch_indices(0), 0)
    out = tr.model(x)
    assert tr.teacher is None and torch.equal(tr.task_loss(out, x, y), F.cross_entropy(out, y))


def test_distill_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"distill: the teacher is the init model; set init"):
        TrainConfig(distill=0.5).validate()
    with pytest.raises(ConfigError, match=r"distill: 1.5 must be a weight in \[0, 1\]"):
        TrainConfig(distill=1.5, init="float").validate()
    with pytest.raises(ConfigError, match=r"distill: task 'super-resolution' is not a classification task"):
        TrainConfig(task="super-resolution", distill=0.5, init="float").validate()
    with pytest.raises(ConfigError, match=r"distill_temperature: 0.0 must be > 0"):
        TrainConfig(distill_temperature=0.0).validate()
    with pytest.raises(ConfigError, match=r"djpq.finetune=1.0: must be a fraction of the run in \[0, 1\)"):
        TrainConfig(method="djpq", djpq={"finetune": 1.0}).validate()


def _learned(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()
            if k.split(".")[-1] in ("raw_mu", "raw_logvar", "raw_log_d", "raw_log_qmax")}


def _bn_stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}


def test_djpq_finetune_freezes_bits_gates_and_bn_and_trains_the_deployed_network(tmp_path):
    """After the freeze step the gates, the quantizers' steps and ranges and the folded
    BatchNorms' running statistics no longer move, the weights still do, and the network in
    training mode computes exactly what it computes in evaluation (the deployed network)."""
    cfg = TrainConfig(method="djpq", model="resnet8", epochs=2, batch_size=32, djpq={"finetune": 0.5},
                      model_kwargs={"channels": [4, 4, 8]}, **QUIET)
    tr, *_ = _trainer(cfg)
    m = tr.module
    assert any(isinstance(x, DJPQLayer) and x.bn is not None for x in m.modules())
    freeze = tr.method.freeze_step
    assert freeze == tr.total_steps // 2
    order = tr.epoch_indices(0)
    for step in range(freeze):  # before: everything learns
        tr.train_step(*tr.batch(order, step % tr.steps_per_epoch), step)
    learned, stats = _learned(m), _bn_stats(m)
    weights = {k: v.detach().clone() for k, v in m.named_parameters() if k.endswith("layer.weight")}
    fmts = [q.format() for q in m.modules() if isinstance(q, LearnedQuantizer)]
    for step in range(freeze, freeze + 3):
        x, y = tr.batch(order, step % tr.steps_per_epoch)
        tr.train_step(x, y, step)
    assert tr.method.frozen
    after = _learned(m)
    assert learned and all(torch.equal(learned[k], after[k]) for k in learned)
    assert all(torch.equal(stats[k], v) for k, v in _bn_stats(m).items())
    assert [q.format() for q in m.modules() if isinstance(q, LearnedQuantizer)] == fmts
    assert any(not torch.equal(weights[k], v.detach()) for k, v in m.named_parameters() if k in weights)
    assert tr.method.extra_loss(tr.model, freeze + 3) is None  # no regulariser left
    # the training forward is the deployed one, bit for bit
    x, _ = tr.batch(order, 0)
    with torch.no_grad():
        m.train()
        t = m(x)
        m.eval()
        e = m(x)
    assert torch.equal(t, e)
    assert all(g.frozen for g in m.modules() if isinstance(g, VIBGate))


def test_djpq_finetune_resumes_into_the_frozen_phase(tmp_path):
    """A run stopped after the freeze step and resumed ends with the uninterrupted run's
    state (the phase is re-entered from the step, not from saved flags)."""
    base = dict(method="djpq", epochs=2, djpq={"finetune": 0.5}, checkpoint_every=0, **QUIET)
    a = run(TrainConfig(out=str(tmp_path / "a"), **base), echo=lambda *a: None)
    steps = a.metrics.get("steps") or None
    run(TrainConfig(out=str(tmp_path / "b"), max_steps=12, **base), echo=lambda *a: None)
    b = run(TrainConfig(out=str(tmp_path / "b"), resume=True, **base), echo=lambda *a: None)
    sa = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=False)["model"]
    sb = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), steps
    assert a.metrics["test_metric"] == b.metrics["test_metric"]
