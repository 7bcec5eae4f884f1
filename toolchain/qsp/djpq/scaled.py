"""Parameters stored divided by a per-module ``param_scale``: with Adam (or any optimizer
that gives every parameter the same learning rate) they then move ``param_scale`` times
faster than the weights, which DJPQ's gate and quantizer parameters need."""
from __future__ import annotations

import torch
from torch import nn


class ScaledParams(nn.Module):
    """Base for modules whose parameters named in ``_scaled`` are stored as
    ``raw_<name> = value / param_scale``; ``self.scaled(name)`` gives the value."""

    _scaled: tuple[str, ...] = ()

    def __init__(self):
        super().__init__()
        self.register_buffer("param_scale", torch.ones(()))

    def scaled(self, name: str) -> torch.Tensor:
        return getattr(self, f"raw_{name}") * self.param_scale

    @torch.no_grad()
    def set_param_scale(self, scale: float) -> None:
        """Change the stored scale; the values are unchanged."""
        if not scale > 0:
            raise ValueError(f"scale={scale!r} must be > 0")
        values = {n: self.scaled(n).detach().clone() for n in self._scaled}
        self.param_scale.fill_(float(scale))
        for n, v in values.items():
            getattr(self, f"raw_{n}").copy_(v / scale)
