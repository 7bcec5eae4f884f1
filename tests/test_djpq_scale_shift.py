"""DJPQ with a BatchNorm that has no weight layer before it: it trains as the bundle's
``scale_shift`` node (qsp.nn.QScaleShift, as qsp.convert does), so the exported bundle's
exact emulation is the evaluated model bit for bit."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qsp import djpq
from qsp.bundle import ModelRef, TaskInfo
from qsp.nn import QScaleShift
from qsp.verify.emulate import emulate

SHAPE = [1, 8, 8]


class AfterRelu(nn.Module):
    """conv -> relu -> BatchNorm (standalone: it reads the ReLU) -> conv -> flatten -> linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 64, 3)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.c2(self.bn(F.relu(self.c1(x))))), 1))


def test_standalone_batchnorm_trains_as_scale_shift_and_exports_bit_exact():
    torch.manual_seed(0)
    cfg = djpq.DJPQConfig(lambda_bops=0.1)
    m = djpq.convert(AfterRelu(), SHAPE, cfg, bn_delay=5)
    ss = [x for x in m.modules() if isinstance(x, QScaleShift)]
    assert len(ss) == 1 and ss[0].delay == 5
    g = torch.Generator().manual_seed(1)
    x = torch.rand((64,) + tuple(SHAPE), generator=g)
    y = x.flatten(1)[:, :3].argmax(1)
    opt = torch.optim.Adam(djpq.param_groups(m, 3e-3, cfg))
    obj = djpq.DJPQObjective(cfg)
    bn = ss[0].bn
    m.train()
    for step in range(10):
        if step == 5:
            stats = bn.running_mean.clone()
        loss = F.cross_entropy(m(x[:32]), y[:32]) + obj(m)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert ss[0].frozen and torch.equal(bn.running_mean, stats)  # frozen statistics after the delay
    assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0  # gamma still learns
    b = djpq.export_djpq(m, TaskInfo("rand", "classification", "accuracy", SHAPE, [3], 3),
                         ModelRef("tests.test_djpq_scale_shift:AfterRelu", {}), x[:16].numpy(), y[:16].numpy(), cfg)
    nodes = [n for n in b.graph if n.op == "scale_shift"]
    assert len(nodes) == 1 and nodes[0].weight.bits == 16
    m.eval()
    with torch.no_grad():
        ref = m(x).double().numpy()
    assert np.array_equal(emulate(b, x.numpy()), ref)
    # the training forward after the delay is the deployed node too
    m.train()
    with torch.no_grad():
        s_train = ss[0](torch.ones(2, 4, 8, 8))
    m.eval()
    with torch.no_grad():
        assert torch.equal(s_train, ss[0](torch.ones(2, 4, 8, 8)))
