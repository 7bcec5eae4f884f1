"""The training operators: delayed/saturated fixed-point quantization and magnitude /
activation-saliency pruning. Each is a small ``nn.Module`` whose whole state (fraction
bits, masks, counters, window statistics) lives in buffers.

Quantization semantics come from :mod:`qsp.fixedpoint` and nowhere else.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .. import fixedpoint as fp
from ..errors import MaskShapeError
from .state import (StepCounter, check_nonneg_int, check_quantiles, check_sparsity, dist_broadcast_, dist_sum_,
                    prune_count, schedule_update_index, smallest_mask, zhu_gupta)


# =========================================================================== quantization
class Quantizer(StepCounter):
    """Delayed, optionally saturated, fixed-point quantizer ``Q(x; bits, d)``.

    * steps ``t < delay``: identity (float);
    * steps ``delay - window <= t < delay``: the squared error ``sum (S(x) - Q(S(x); d))**2``
      of every candidate ``d`` is accumulated over the window (exactly the exhaustive
      search's objective, in O(#candidates) memory: nothing of the data is stored);
      ``S`` clips each batch to its ``quantiles`` when saturation is on;
    * at ``t == delay``: ``d* = argmin`` (per tensor, or per channel along ``channel_axis``);
      quantization is on from then on. With ``interval > 0`` the search is repeated at
      ``delay + k*interval`` over the ``window`` steps before it.

    ``frac`` given explicitly skips the search (quantization is on from ``delay``).
    Gradient: straight-through, zero where the output saturated (see
    :func:`qsp.fixedpoint.quantize_ste`).
    """

    def __init__(self, bits: int = 8, *, delay: int = 0, window: int = 1, interval: int = 0,
                 signed: bool = True, rounding: str = fp.DEFAULT_ROUNDING,
                 quantiles: Sequence[float] | None = None, frac: int | None = None,
                 channels: int | None = None, channel_axis: int = 0,
                 candidates: Sequence[int] = fp.DEFAULT_FRAC_CANDIDATES):
        super().__init__()
        self.bits = fp.check_bits(bits, "bits", 1, 24)
        self.delay = check_nonneg_int(delay, "delay")
        self.window = check_nonneg_int(window, "window", 1)
        self.interval = check_nonneg_int(interval, "interval")
        self.signed = bool(signed)
        self.rounding = fp.check_rounding(rounding)
        self.quantiles = None if quantiles is None else check_quantiles(quantiles)
        self.channel_axis = channel_axis
        self.channels = channels
        self.fixed_frac = frac
        self.register_buffer("candidates", torch.tensor(list(candidates), dtype=torch.float32))
        nch = channels or 1
        init = torch.full((nch,) if channels else (), float(frac if frac is not None else 0))
        self.register_buffer("frac", init)
        self.register_buffer("enabled", torch.zeros((), dtype=torch.bool))
        self.register_buffer("err", torch.zeros(nch, len(candidates), dtype=torch.float64))
        self._on = False
        self._nstat = 0

    def extra_repr(self):
        s = f"bits={self.bits}, signed={self.signed}, delay={self.delay}, window={self.window}, rounding={self.rounding}"
        if self.quantiles:
            s += f", quantiles={self.quantiles}"
        if self.channels:
            s += f", per_channel={self.channels}"
        return s

    # ------------------------------------------------------------------ schedule
    def _estimate_points(self, t):
        """(collect?, estimate?) for step t: estimates at delay (+ k*interval), statistics
        over the `window` steps before each estimate."""
        if self.interval > 0:
            estimate = t >= self.delay and (t - self.delay) % self.interval == 0
            nxt = self.delay if t < self.delay else self.delay + ((t - self.delay) // self.interval + 1) * self.interval
        else:
            estimate = t == self.delay
            nxt = self.delay
        return (nxt - self.window <= t < nxt), estimate

    def _after_load(self):
        self._on = bool(self.enabled)
        self._nstat = 1  # statistics come from the loaded buffer
        self._final = self._on_for_good()

    def _on_for_good(self) -> bool:
        """On, with no fraction-bit search ahead (explicit frac, or no repeat interval)."""
        return self._on and (self.fixed_frac is not None or self.interval == 0)

    # ------------------------------------------------------------------ search
    def _view_channels(self, x):
        """x as [C, -1] (per channel) or [1, -1]."""
        if self.channels:
            return x.transpose(0, self.channel_axis).reshape(self.channels, -1)
        return x.reshape(1, -1)

    @torch.no_grad()
    def _accumulate(self, x):
        v = self._view_channels(x.detach()).to(torch.float32)
        if self.quantiles is not None:
            lo = torch.quantile(v.float(), self.quantiles[0], dim=1, keepdim=True) if v.shape[1] <= 2 ** 24 \
                else v.kthvalue(max(1, int(self.quantiles[0] * v.shape[1])), dim=1, keepdim=True).values
            hi = torch.quantile(v.float(), self.quantiles[1], dim=1, keepdim=True) if v.shape[1] <= 2 ** 24 \
                else v.kthvalue(max(1, int(self.quantiles[1] * v.shape[1])), dim=1, keepdim=True).values
            v = torch.minimum(torch.maximum(v, lo), hi)
        cols = []
        for d in self.candidates.tolist():
            q = fp.quantize_torch(v, self.bits, int(d), self.signed, self.rounding)
            cols.append(((v - q).double() ** 2).sum(dim=1))
        self.err += torch.stack(cols, dim=1)
        self._nstat += 1

    @torch.no_grad()
    def _choose(self, x):
        if self._nstat == 0:  # no window before (delay < window): use this batch
            self._accumulate(x)
        # every rank decides from the errors summed over all ranks' batches
        dist_sum_(self.err)
        # argmin, ties to the first (smallest d: the widest range)
        best = torch.argmin(self.err, dim=1)
        d = self.candidates[best]
        self.frac.copy_(d.reshape(self.frac.shape))
        self.err.zero_()
        self._nstat = 0

    # ------------------------------------------------------------------ forward
    def forward(self, x):
        if self.training and not self._final:
            t = self._t
            self._advance()
            if self.fixed_frac is not None:
                if t >= self.delay and not self._on:
                    self._on = True
                    self.enabled.fill_(True)
            else:
                collect, estimate = self._estimate_points(t)
                if collect:
                    self._accumulate(x)
                if estimate:
                    self._choose(x)
                    if not self._on:
                        self._on = True
                        self.enabled.fill_(True)
            self._final = self._on_for_good()
        if not self._on:
            return x
        if self.channels:
            return fp.quantize_ste(x, self.bits, self.frac, self.signed, self.rounding, channel_axis=self.channel_axis)
        if torch.compiler.is_compiling():  # the scale is computed in the graph: no .item()
            return fp.quantize_ste(x, self.bits, self.frac, self.signed, self.rounding)
        return fp.quantize_ste(x, self.bits, self._frac_int(), self.signed, self.rounding)

    def _frac_int(self) -> int:
        """Per-tensor fraction bits as a Python int, read from the buffer only when the
        buffer changed (its in-place version counter), so the forward pass needs no
        device sync and no tensor ops to build the scale."""
        key = (id(self.frac), self.frac._version)
        cache = self.__dict__.get("_frac_cache")
        if cache is None or cache[0] != key:
            cache = (key, int(self.frac))
            self.__dict__["_frac_cache"] = cache
        return cache[1]

    # ------------------------------------------------------------------ export
    @property
    def is_on(self) -> bool:
        return self._on

    def formats(self) -> list[fp.FixedFormat]:
        """One FixedFormat per channel (or one) for the current fraction bits."""
        return [fp.FixedFormat(self.bits, int(d), self.signed, self.rounding)
                for d in self.frac.reshape(-1).tolist()]


class ActivationQuantizer(Quantizer):
    """``qsp.quantize(bits=...)`` on activations: a per-tensor :class:`Quantizer`."""


# =========================================================================== pruning
class WeightPruner(StepCounter):
    """Unstructured magnitude pruning of a weight tensor with the Zhu & Gupta schedule.

    At ``t == start + k*interval`` (k = 1..repetition) the mask is recomputed so that
    exactly ``round(s_k * n)`` weights of smallest magnitude are zero, with
    ``s_k = s * (1 - (1 - k/repetition)**3)``. Pruned weights stay pruned (their
    magnitude counts as 0) and receive no gradient.
    """

    def __init__(self, shape, sparsity: float = 0.5, *, start: int = 0, interval: int = 1,
                 repetition: int = 1):
        super().__init__()
        self.sparsity = check_sparsity(sparsity)
        self.start = check_nonneg_int(start, "start")
        self.interval = check_nonneg_int(interval, "interval", 1)
        self.repetition = check_nonneg_int(repetition, "repetition", 1)
        self.register_buffer("mask", torch.ones(shape))
        self._active = False

    def extra_repr(self):
        return f"sparsity={self.sparsity}, start={self.start}, interval={self.interval}, repetition={self.repetition}"

    def _after_load(self):
        self._active = self._t > self.start
        self._final = self._t > self.start + self.repetition * self.interval

    @property
    def target(self) -> float:
        """Target sparsity reached so far by the schedule."""
        k = min(max(0, (self._t - 1 - self.start) // self.interval), self.repetition) if self._t > self.start else 0
        return zhu_gupta(self.sparsity, k, self.repetition)

    def forward(self, w):
        if self.training and not self._final:
            t = self._t
            self._advance()
            k = schedule_update_index(t, self.start, self.interval, self.repetition)
            if k:
                with torch.no_grad():
                    s = zhu_gupta(self.sparsity, k, self.repetition)
                    score = (w.detach() * self.mask).abs()
                    self.mask.copy_(smallest_mask(score, prune_count(s, w.numel())))
                    dist_broadcast_(self.mask)  # identical masks even if weights drifted
                self._active = True
            self._final = self._t > self.start + self.repetition * self.interval
        if not self._active:
            return w
        return w * self.mask


class ActivationPruner(StepCounter):
    """Unstructured activation pruning with one static mask per element.

    Saliency is the running sum of ``mean_batch |h|`` over a sliding window of the last
    ``window`` training batches (a ring buffer of ``window`` tensors of one input's shape:
    bounded memory). At ``t == start + k*interval`` the ``round(s_k * n)`` least salient
    elements are masked. A mask learned at spatial size (H, W) applies to inputs of size
    (m*H, n*W) by tiling, as the paper did for super resolution.
    """

    _lazy_buffers = ("mask", "ring")

    def __init__(self, sparsity: float = 0.5, *, start: int = 0, interval: int = 1,
                 repetition: int = 1, window: int = 1):
        super().__init__()
        self.sparsity = check_sparsity(sparsity)
        self.start = check_nonneg_int(start, "start")
        self.interval = check_nonneg_int(interval, "interval", 1)
        self.repetition = check_nonneg_int(repetition, "repetition", 1)
        self.window = check_nonneg_int(window, "window", 1)
        self.register_buffer("mask", torch.empty(0))
        self.register_buffer("ring", torch.empty(0))
        self.register_buffer("ring_pos", torch.zeros((), dtype=torch.long))
        self.register_buffer("ring_count", torch.zeros((), dtype=torch.long))
        self._active = False
        self._pos = 0
        self._count = 0

    def extra_repr(self):
        return (f"sparsity={self.sparsity}, start={self.start}, interval={self.interval}, "
                f"repetition={self.repetition}, window={self.window}")

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self.ring_pos.fill_(self._pos)
        self.ring_count.fill_(self._count)
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _after_load(self):
        self._pos = int(self.ring_pos)
        self._count = int(self.ring_count)
        self._active = self.mask.numel() > 0 and self._t > self.start
        self._final = self._active and self._t > self.start + self.repetition * self.interval

    def _collecting(self, t):
        """True if t is within `window` steps before an update step."""
        last = self.start + self.repetition * self.interval
        if t >= last:
            return False
        nxt = self.start + (max(0, t - self.start) // self.interval + 1) * self.interval
        return nxt - self.window <= t < nxt

    @torch.no_grad()
    def _collect(self, h):
        sal = h.detach().abs().mean(0)
        if self.ring.numel() == 0 or self.ring.shape[1:] != sal.shape:
            self.ring = torch.zeros((self.window,) + tuple(sal.shape), dtype=sal.dtype, device=sal.device)
            self._pos = self._count = 0
        self.ring[self._pos].copy_(sal)
        self._pos = (self._pos + 1) % self.window
        self._count = min(self._count + 1, self.window)

    @property
    def saliency(self):
        """Running sum of mean |h| over the window (one value per element)."""
        return self.ring[: self._count].sum(0) if self._count else None

    def forward(self, h):
        if self.training and not self._final:
            t = self._t
            self._advance()
            if self._collecting(t):
                self._collect(h)
            k = schedule_update_index(t, self.start, self.interval, self.repetition)
            if k:
                with torch.no_grad():
                    if self._count == 0:
                        self._collect(h)
                    sal = dist_sum_(self.saliency.clone())  # saliency over all ranks' batches
                    if self.mask.shape != sal.shape:
                        self.mask = torch.ones_like(sal)
                    s = zhu_gupta(self.sparsity, k, self.repetition)
                    self.mask.copy_(smallest_mask(sal * self.mask, prune_count(s, sal.numel())))
                self._active = True
            self._final = self._t > self.start + self.repetition * self.interval
        if not self._active:
            return h
        return h * self.mask_for(h.shape[1:])

    def mask_for(self, shape) -> torch.Tensor:
        """The mask for one input of ``shape`` (tiled along H and W when they are
        multiples of the learned size)."""
        m = self.mask
        shape = tuple(shape)
        if tuple(m.shape) == shape:
            return m
        if m.dim() == len(shape) and m.dim() >= 3 and m.shape[:-2] == torch.Size(shape[:-2]):
            (h, w), (H, W) = m.shape[-2:], shape[-2:]
            if H % h == 0 and W % w == 0:
                return m.repeat(*([1] * (m.dim() - 2)), H // h, W // w)
        raise MaskShapeError(
            f"activation mask of shape {tuple(m.shape)} cannot be applied to activations of shape "
            f"{shape}: only H and W may differ, and only by whole multiples of the learned size")
