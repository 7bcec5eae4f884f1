"""Small real bundles for tests: a model converted with qsp.convert, trained for a few
steps on random inputs (so fraction bits, masks and sparsities are data-derived), then
exported with the real bundle exporter. Shared by the compile, verify and estimate tests."""
from __future__ import annotations

import torch
from torch import nn

import qsp
from qsp.bundle import ModelRef, TaskInfo
from qsp.bundle.export import make_bundle


def tiny_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                         nn.Linear(16, 10))


def tiny_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32, 10))


def build_bundle(kind: str = "mlp", steps: int = 40, seed: int = 0, n_test: int = 64, **plan):
    """A validated in-memory Bundle (write it with ``.write(path)``)."""
    torch.manual_seed(seed)
    net = tiny_mlp() if kind == "mlp" else tiny_cnn()
    plan.setdefault("total_steps", steps)
    model = qsp.convert(net, **plan)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        x = torch.rand(32, 1, 8, 8)
        y = torch.randint(0, 10, (32,))
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    g = torch.Generator().manual_seed(seed + 1)
    tx = torch.rand(n_test, 1, 8, 8, generator=g)
    ty = torch.randint(0, 10, (n_test,), generator=g)
    task = TaskInfo("random", "classification", "accuracy", [1, 8, 8], [10], 10)
    ref = ModelRef(f"tests.bundles:tiny_{kind}", {})
    return make_bundle(model, task, ref, tx, ty, plan={"total_steps": steps})
