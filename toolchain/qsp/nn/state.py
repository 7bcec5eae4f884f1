"""Shared plumbing for stateful qsp operators: a step counter that lives in a buffer
(so it is saved, loaded and moved with the module) but is mirrored in a Python int, so
that schedules are decided on the host without a device sync on every step."""
from __future__ import annotations

import torch
from torch import nn


class StepCounter(nn.Module):
    """Base for operators with a training-step schedule.

    ``self.t`` is the number of training-mode forward passes seen so far (the step index
    of the current pass while inside ``forward``). Eval mode never advances it. Once the
    operator's schedule has no event left (``self._final``: masks and fraction bits fixed for
    good) it stops counting: nothing depends on the count any more, and a forward that no
    longer reads or writes a changing Python int lets ``torch.compile`` trace the steady
    state once, without recompiling on every step.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._t = 0
        self._final = False

    @property
    def t(self) -> int:
        return self._t

    def _advance(self):
        self._t += 1

    # keep the buffer and the host mirror in step, without syncing on every forward
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self.step.fill_(self._t)
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        self._resize_lazy_buffers(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        key = prefix + "step"
        if key in state_dict:
            self._t = int(state_dict[key])
        self._after_load()

    def _resize_lazy_buffers(self, state_dict, prefix):
        """Buffers whose shape is only known after the first forward (activation
        statistics) take the shape of the incoming state, so a fresh model loads a
        state_dict without a forward pass first."""
        for name in getattr(self, "_lazy_buffers", ()):
            key = prefix + name
            if key in state_dict:
                cur = getattr(self, name)
                new = state_dict[key]
                if cur.shape != new.shape:
                    setattr(self, name, torch.empty(new.shape, dtype=new.dtype, device=cur.device))

    def _after_load(self):
        pass

    def __setstate__(self, state):
        super().__setstate__(state)


def check_sparsity(s, name="sparsity"):
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= float(s) < 1.0:
        raise ValueError(f"{name}={s!r} is out of range: it must be a number in [0, 1)")
    return float(s)


def check_nonneg_int(v, name, low=0):
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name}={v!r} is out of range: it must be an integer >= {low}")
    return v


def check_quantiles(quantiles, name="quantiles"):
    """``(q_low, q_high)`` as floats with 0 <= q_low < q_high <= 1 (NaN fails), else ValueError."""
    try:
        ql, qh = (float(q) for q in quantiles)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={quantiles!r} must be two numbers (q_low, q_high)") from None
    if not 0.0 <= ql < qh <= 1.0:
        raise ValueError(f"{name}={tuple(quantiles)!r} must satisfy 0 <= q_low < q_high <= 1")
    return ql, qh


def zhu_gupta(sparsity: float, k: int, repetition: int) -> float:
    """Target sparsity after the k-th of ``repetition`` updates (Zhu & Gupta 2017):
    s_k = s * (1 - (1 - k / repetition)**3)."""
    if k <= 0:
        return 0.0
    k = min(k, repetition)
    return sparsity * (1.0 - (1.0 - k / repetition) ** 3)


def schedule_update_index(t: int, start: int, interval: int, repetition: int) -> int:
    """k in 1..repetition if step t is an update step (t == start + k*interval), else 0."""
    if t <= start or interval <= 0:
        return 0
    d = t - start
    if d % interval:
        return 0
    k = d // interval
    return k if 1 <= k <= repetition else 0


def prune_count(sparsity: float, n: int) -> int:
    """Exactly round(s * n) elements are pruned (qsparse prunes one fewer)."""
    return int(round(sparsity * n))


def smallest_mask(score: torch.Tensor, n_prune: int) -> torch.Tensor:
    """0/1 mask of score's shape with exactly ``n_prune`` zeros at the smallest scores
    (ties broken by position, deterministically)."""
    flat = score.reshape(-1)
    mask = torch.ones_like(flat)
    if n_prune > 0:
        idx = torch.argsort(flat, stable=True)[:n_prune]
        mask[idx] = 0
    return mask.reshape(score.shape)


# ----------------------------------------------------------------------------- distributed
def dist_active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def dist_sum_(t: torch.Tensor) -> torch.Tensor:
    """All-reduce (sum) in place across ranks when torch.distributed is running; a no-op
    otherwise. Used at the moment data-derived state is turned into a decision (fraction
    bits, activation masks), so every rank decides from the same statistics."""
    if dist_active():
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def dist_broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    if dist_active():
        import torch.distributed as dist

        dist.broadcast(t, src)
    return t


def dist_max_(t: torch.Tensor) -> torch.Tensor:
    """All-reduce (max) in place across ranks when torch.distributed is running."""
    if dist_active():
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def dist_cat(t: torch.Tensor) -> torch.Tensor:
    """The concatenation, in rank order, of every rank's 1-D ``t`` (lengths may differ);
    ``t`` itself without a process group. With the trainer's contiguous shards of a global
    batch, this is the global batch's tensor, in the order one process would see."""
    if not dist_active():
        return t
    import torch.distributed as dist

    n = torch.tensor([t.numel()], dtype=torch.long, device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    m = max(sizes)
    padded = torch.zeros(m, dtype=t.dtype, device=t.device)
    padded[: t.numel()] = t.reshape(-1)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


class eval_mode:
    """``with eval_mode(module):`` evaluation mode for every submodule (no schedule
    advances), each module's own training flag restored afterwards."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def __enter__(self):
        self._modes = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        return self.module

    def __exit__(self, *exc):
        for m, tr in self._modes:
            m.training = tr
        return False
