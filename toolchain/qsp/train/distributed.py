"""Data-parallel ``qsp-train`` under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node=N -m qsp.train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` (env://); :func:`setup` then initialises the process group (gloo on CPU,
NCCL on CUDA with device ``cuda:LOCAL_RANK``) and the trainer:

* keeps ``batch_size`` the GLOBAL batch: every rank draws the same per-(seed, epoch)
  permutation, cuts the same global batches from it and takes its own contiguous share of
  each (:func:`shard`, sizes differ by at most one). The steps per epoch, the learning-rate
  schedule and the pruning/quantization schedule are therefore those of one process with
  the same ``batch_size``, whatever the number of processes;
* scales each rank's data loss by ``n_local * world / n_global`` (:func:`loss_scale`), so
  that DDP's gradient average is exactly the gradient of the global batch's mean loss,
  also for a last batch that does not split evenly;
* wraps the model in ``DistributedDataParallel(broadcast_buffers=False)``: the operators'
  data statistics accumulate per rank and are reduced where they are used
  (:mod:`qsp.nn.ops`: the fraction-bit search sums its error accumulators over ranks, the
  activation pruner its window saliency, the weight pruner broadcasts its mask);
  broadcasting buffers from rank 0 every forward would wipe the other ranks' statistics;
* logs, checkpoints and writes the bundle/ONNX on rank 0 only (the others wait at a
  barrier); a checkpoint holds the unwrapped module with the rank-local statistics summed
  over ranks (:func:`reduce_rank_local`), so it resumes on any number of processes;
* checks at the end of training that every rank holds the same model
  (:func:`verify_in_sync`) and raises if not.

``QSP_DIST_DUMP=DIR`` makes every rank write its final model state to
``DIR/<tag>.rank<R>.npz`` (used by the tests to compare ranks with the bundle).
"""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, QspError

DUMP_ENV = "QSP_DIST_DUMP"


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise ConfigError(f"environment: {name}={v!r} is not an integer (set by torchrun)") from None


def launched() -> DistInfo:
    """The job as the environment describes it (torchrun / env://), initialised or not."""
    world = _env_int("WORLD_SIZE")
    if world is None or world <= 1:
        return SINGLE
    rank = _env_int("RANK")
    if rank is None or not 0 <= rank < world:
        raise ConfigError(f"environment: WORLD_SIZE={world} but RANK={os.environ.get('RANK')!r}; "
                          "launch with torchrun --nproc_per_node=N -m qsp.train ...")
    local = _env_int("LOCAL_RANK")
    return DistInfo(rank, world, rank if local is None else local)


def _pg_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def current() -> DistInfo:
    """This process's place: from the process group when one runs, else the environment."""
    if _pg_ready():
        import torch.distributed as dist

        info = launched()
        return DistInfo(dist.get_rank(), dist.get_world_size(), info.local_rank)
    return launched()


def is_main() -> bool:
    return current().is_main


def backend_for(device: str) -> str:
    return "nccl" if device == "cuda" else "gloo"


def setup(device: str = "cpu") -> DistInfo:
    """Initialise the default process group from env:// when launched by torchrun with more
    than one process (idempotent; a no-op for one process)."""
    info = launched()
    if not info.active or _pg_ready():
        return current()
    import torch.distributed as dist

    if not dist.is_available():
        raise ConfigError("torch.distributed is not available in this torch build; run one process")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device: cuda was requested but torch sees no CUDA device")
        if info.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"device: LOCAL_RANK {info.local_rank} but only {torch.cuda.device_count()} CUDA "
                              "devices are visible; use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(info.local_rank)
    kw = {"device_id": torch.device("cuda", info.local_rank)} if device == "cuda" else {}
    dist.init_process_group(backend_for(device), init_method="env://", **kw)
    return current()


def shutdown(wait: bool = True) -> None:
    """Wait for every rank (``wait``), then destroy the process group (no-op without one)."""
    if _pg_ready():
        import torch.distributed as dist

        if wait:
            barrier()
        dist.destroy_process_group()


@contextmanager
def session(device: str = "cpu"):
    """``with session(cfg.device): run(cfg)``: the process group around one run. After an
    error there is no final barrier (the other ranks may be inside a collective; torchrun
    stops them when this process exits non-zero)."""
    info = setup(device)
    try:
        yield info
    except BaseException:
        shutdown(wait=False)
        raise
    shutdown()


def device_for(device: str, info: DistInfo | None = None) -> torch.device:
    """The torch device of this rank: ``cuda:LOCAL_RANK`` under torchrun, else as given."""
    info = info or current()
    if device == "cuda" and info.active:
        return torch.device("cuda", info.local_rank)
    return torch.device(device)


# ====================================================================== collectives
def barrier() -> None:
    if current().active:
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (picklable values: paths, flags)."""
    if not current().active:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def all_sum(values, device: torch.device) -> list[float]:
    """Element-wise sums over ranks of a few floats (float64)."""
    vals = [float(v) for v in values]
    if not current().active:
        return vals
    import torch.distributed as dist

    t = torch.tensor(vals, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


# ====================================================================== data
def shard(indices: np.ndarray, info: DistInfo | None = None) -> np.ndarray:
    """This rank's contiguous share of one global batch (shares differ by at most one)."""
    info = info or current()
    if not info.active:
        return indices
    return np.array_split(indices, info.world_size)[info.rank]


def check_batches(n_train: int, batch_size: int, world: int) -> None:
    """Every global batch must give every rank at least one sample."""
    if world <= 1:
        return
    last = n_train - (-(-n_train // batch_size) - 1) * batch_size
    if batch_size < world or last < world:
        small = batch_size if batch_size < world else last
        raise ConfigError(f"batch_size: a global batch of {small} samples"
                          f"{'' if batch_size < world else ' (the last of each epoch)'} cannot be split over "
                          f"{world} processes; batch_size is the global batch: use batch_size >= {world} and a "
                          f"training set whose size modulo batch_size is 0 or >= {world} (train_limit)")


def loss_scale(n_local: int, n_global: int, world: int) -> float:
    """Factor on a rank's mean loss so that DDP's average of the ranks' gradients equals the
    gradient of the global batch's mean loss."""
    return n_local * world / n_global


# ====================================================================== model
def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP without buffer broadcast: the qsp operators reduce their statistics themselves."""
    if not current().active:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, **_no_buffer_sync())


def _no_buffer_sync() -> dict:
    """No buffer broadcast in forward: ``forward_sync_buffers=False`` where this torch has it
    (newer releases deprecate ``broadcast_buffers``; both still sync once at wrap time, when
    every rank's buffers are equal anyway), else ``broadcast_buffers=False``."""
    import inspect

    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def _rank_local_registry() -> dict[type, tuple[str, ...]]:
    """Buffers that hold this rank's own data statistics (not meant to agree across ranks):
    they are additive, so the sum over ranks is the job's statistic."""
    from ..nn import ActivationPruner, Quantizer

    return {ActivationPruner: ("ring",), Quantizer: ("err",)}


def rank_local_keys(module: nn.Module) -> list[str]:
    reg = _rank_local_registry()
    keys = []
    for name, m in unwrap(module).named_modules():
        for tp, bufs in reg.items():
            if isinstance(m, tp):
                keys += [f"{name}.{b}" if name else b for b in bufs]
    return keys


def reduce_rank_local(state: dict, module: nn.Module) -> dict:
    """``state`` (a state_dict) with its rank-local statistics summed over ranks (a
    collective: every rank calls it). Loaded back on rank 0 only (:func:`zero_rank_local`
    on the others), the sum resumes the same statistics on any number of ranks."""
    if not current().active:
        return state
    import torch.distributed as dist

    out = dict(state)
    for k in rank_local_keys(module):
        if k in out and out[k].numel():
            t = out[k].detach().clone()
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            out[k] = t
    return out


@torch.no_grad()
def zero_rank_local(module: nn.Module) -> None:
    """After every rank loaded a checkpoint's summed statistics, ranks other than 0 drop
    them (their sum over ranks is then the checkpoint's)."""
    if current().is_main:
        return
    sd = unwrap(module).state_dict(keep_vars=True)
    for k in rank_local_keys(module):
        if k in sd:
            sd[k].zero_()


def state_digest(module: nn.Module, skip_rank_local: bool = True) -> dict[str, str]:
    """sha256 of every tensor of the module's state (masks, fraction bits, weights, ...)."""
    skip = set(rank_local_keys(module)) if skip_rank_local else set()
    out = {}
    for k, v in unwrap(module).state_dict().items():
        if k in skip:
            continue
        a = v.detach().cpu().contiguous()
        h = hashlib.sha256(str((a.dtype, tuple(a.shape))).encode())
        h.update(a.reshape(-1).view(torch.uint8).numpy().tobytes() if a.numel() else b"")
        out[k] = h.hexdigest()
    return out


def verify_in_sync(module: nn.Module) -> None:
    """Raise :class:`QspError` naming the tensors that differ between ranks (a collective)."""
    info = current()
    if not info.active:
        return
    import torch.distributed as dist

    mine = state_digest(module)
    every = [None] * info.world_size
    dist.all_gather_object(every, mine)
    bad = sorted({k for d in every for k in set(d) | set(mine) if d.get(k) != mine.get(k)})
    if bad:
        raise QspError(f"distributed: the ranks' models differ after training in {len(bad)} tensors "
                       f"({', '.join(bad[:6])}{', ...' if len(bad) > 6 else ''}); rank {info.rank}'s view")


def dump_state(module: nn.Module, tag: str = "") -> Path | None:
    """With ``QSP_DIST_DUMP=DIR``: write this rank's model state to DIR/<tag>.rank<R>.npz."""
    d = os.environ.get(DUMP_ENV)
    if not d:
        return None
    info = current()
    path = Path(d) / f"{tag or 'model'}.rank{info.rank}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().numpy() for k, v in unwrap(module).state_dict().items()}
    np.savez(path, **sd)
    return path
