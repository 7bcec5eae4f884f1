"""Variational-information-bottleneck channel gates (Dai et al., ICML 2018), as in DJPQ.

Each output channel (Conv) or unit (Linear) ``c`` is multiplied by a gate
``z_c = mu_c + sigma_c * eps`` (``eps ~ N(0, 1)``) with learned mean ``mu_c`` and learned
log-variance ``log sigma_c**2``. The VIB penalty (an upper bound of the mutual information
between the layer's input and its gated output, up to constants) is

    KL = sum_c log(1 + alpha_c),      alpha_c = mu_c**2 / sigma_c**2

and pushes every channel's signal-to-noise ratio ``alpha`` down; the task loss keeps it up
only where the channel carries information. A channel is kept at export when
``alpha_c > threshold`` (Dai et al. prune at ``log alpha < 0``, i.e. threshold 1). In
evaluation the gate is deterministic: ``z_c = mu_c`` for kept channels, 0 for pruned ones.

For the BOPs penalty a differentiable keep probability is used,
``p_c = sigmoid((log alpha_c - log threshold) / temperature)``; the expected kept ratio of
a layer is ``mean_c p_c``.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F
from .scaled import ScaledParams


class VIBGate(ScaledParams):
    _scaled = ("mu", "logvar")

    def __init__(self, channels: int, *, threshold: float = 1.0, init_logvar: float = -6.0,
                 init_mu: float = 1.0, temperature: float = 1.0):
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels={channels!r} must be >= 1")
        if threshold <= 0:
            raise ValueError(f"threshold={threshold!r} must be > 0 (it bounds alpha = mu^2/sigma^2)")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature!r} must be > 0")
        self.channels = int(channels)
        self.log_threshold = math.log(threshold)
        self.temperature = float(temperature)
        # stored divided by `param_scale` (an lr multiplier; see set_param_scale)
        self.raw_mu = nn.Parameter(torch.full((channels,), float(init_mu)))
        self.raw_logvar = nn.Parameter(torch.full((channels,), float(init_logvar)))
        #: set by :meth:`freeze`: the gate is its deployed value in training too
        self.frozen = False

    def freeze(self) -> None:
        """Fix the gate at its deployed value (``mu`` on kept channels, 0 on pruned ones) in
        training too, and stop learning it (DJPQ's fine-tuning phase)."""
        self.frozen = True
        for p in (self.raw_mu, self.raw_logvar):
            p.requires_grad_(False)

    @property
    def mu(self) -> torch.Tensor:
        return self.scaled("mu")

    @property
    def logvar(self) -> torch.Tensor:
        return self.scaled("logvar")

    def extra_repr(self):
        return f"channels={self.channels}, threshold={math.exp(self.log_threshold):g}"

    def log_alpha(self) -> torch.Tensor:
        return torch.log(self.mu ** 2 + 1e-12) - self.logvar

    def kl(self) -> torch.Tensor:
        """``sum_c log(1 + alpha_c)`` (softplus of log alpha: stable for any alpha)."""
        return F.softplus(self.log_alpha()).sum()

    def keep_prob(self) -> torch.Tensor:
        return torch.sigmoid((self.log_alpha() - self.log_threshold) / self.temperature)

    @torch.no_grad()
    def keep_mask(self) -> torch.Tensor:
        """Boolean mask of kept channels (at least one: the highest alpha)."""
        la = self.log_alpha()
        m = la > self.log_threshold
        if not bool(m.any()):
            m[int(torch.argmax(la))] = True
        return m

    def kept(self) -> list[int]:
        return [int(i) for i in torch.nonzero(self.keep_mask()).flatten()]

    def forward(self) -> torch.Tensor:
        """The gate vector ``z`` (one draw per channel in training)."""
        if self.training and not self.frozen:
            mu = self.mu
            return mu + torch.exp(0.5 * self.logvar) * torch.randn_like(mu)
        mu = self.mu
        return mu * self.keep_mask().to(mu.dtype)
