"""The training loop: a :class:`Trainer` with one method per concern, so that data-parallel
training (a distributed sampler in :meth:`Trainer.epoch_indices`, model wrapping in
:meth:`Trainer.wrap_model`, rank-0-only logging and checkpointing via ``is_main``) slots in
without a rewrite.

Determinism and resume: the model is built after ``torch.manual_seed(seed)``; each epoch's
order is a permutation drawn from ``(seed, epoch)`` only; the learning rate is a function
of the step. A checkpoint stores model, optimizer, RNG states, the position (epoch, batch)
and the running epoch statistics, so ``--resume`` skips the batches already done and ends
with exactly the state of an uninterrupted run.
"""
from __future__ import annotations

import copy
import csv
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from . import distributed as dd
from .checkpoint import LAST, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .data import METRICS, DataSplits, TaskSpec
from .methods import TrainingMethod
from .models import build_model

LOG_FIELDS = ("epoch", "step", "train_loss", "val_metric", "weight_sparsity", "act_sparsity", "quant_on", "lr",
              "seconds")
LOSSES = {"cross_entropy": F.cross_entropy, "mse": F.mse_loss}
#: seconds between progress lines when stdout is not a terminal (tqdm's bars are for terminals);
#: the environment variable QSP_PROGRESS_SECONDS overrides it
PROGRESS_SECONDS = 10.0


@dataclass
class FitResult:
    model: nn.Module
    steps: int
    epochs_done: int
    stopped: bool  # True when max_steps ended the run early (resumable)
    log: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def load_init_state(model: nn.Module, path: Path) -> None:
    """Load a state_dict (config key ``init``) into the user's float model, before it is
    converted; every key must match (names the missing and unexpected ones)."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, pickled code
        raise ConfigError(f"init: {path} is not a loadable state_dict: {e}") from None
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]  # a {model: state_dict, ...} checkpoint
    if not isinstance(sd, dict):
        raise ConfigError(f"init: {path} holds a {type(sd).__name__}, not a state_dict")
    try:
        res = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ConfigError(f"init: {path} does not fit the model: {str(e).splitlines()[-1].strip()}") from None
    if res.missing_keys or res.unexpected_keys:
        raise ConfigError(f"init: {path} does not fit the model: missing {res.missing_keys[:5]}, "
                          f"unexpected {res.unexpected_keys[:5]}")


class Trainer:
    def __init__(self, cfg, task: TaskSpec, data: DataSplits, method: TrainingMethod, factory: str,
                 factory_kwargs: dict, run_dir: Path | None = None, tag: str = "", progress: bool | None = None,
                 init_state: Path | None = None):
        self.cfg = cfg
        self.init_state = init_state  # a state_dict of the user's model to start from (config key init)
        self.task = task
        self.data = data
        self.method = method
        self.factory = factory
        self.factory_kwargs = factory_kwargs
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.tag = tag
        self.progress = cfg.progress if progress is None else progress
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device: cuda was requested but torch sees no CUDA device")
        self.dist = dd.setup(cfg.device)  # torchrun: process group (see qsp.train.distributed)
        self.is_main = self.dist.is_main  # rank 0 under data parallelism: logs and checkpoints
        self.device = dd.device_for(cfg.device, self.dist)
        self.n_train = len(data.x_train)
        if self.n_train == 0:
            raise ConfigError("train_limit/data: the training set is empty")
        self.steps_per_epoch = math.ceil(self.n_train / cfg.batch_size)
        dd.check_batches(self.n_train, cfg.batch_size, self.dist.world_size)  # batch_size is the global batch
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.loss_fn = LOSSES[task.loss]
        self.metric_fn = METRICS[task.metric]
        self._x = torch.from_numpy(data.x_train).to(self.device)
        self._y = torch.from_numpy(data.y_train).to(self.device)
        self.model: nn.Module | None = None
        self.graph_ops: dict[str, int] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self.teacher: nn.Module | None = None  # distill: the float init model

    # ================================================================== building
    def build(self) -> nn.Module:
        torch.manual_seed(self.cfg.seed)
        model = build_model(self.factory, self.factory_kwargs)
        if self.init_state is not None:
            load_init_state(model, self.init_state)
        if self.cfg.distill > 0 and self.method.exports:  # the init model, frozen, teaches the quantized one
            if self.init_state is None:
                raise ConfigError("distill: the teacher is the init model; set init (float, or a state_dict .pt)")
            self.teacher = copy.deepcopy(model).to(self.device).eval().requires_grad_(False)
        model = self.method.prepare(model, self.cfg, self.total_steps)
        # before any training: every op exportable, shapes fit (names the module / line)
        self.graph_ops = self.method.check(model.to(self.device), list(self._x.shape[1:]))
        self.model = self.wrap_model(model.to(self.device))
        self.optimizer = self.make_optimizer(self.model)
        return self.model

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel under torchrun (no buffer broadcast), else the model."""
        return dd.wrap_ddp(model, self.device)

    @property
    def module(self) -> nn.Module:
        """The model without its DDP wrapper (what is checkpointed and exported)."""
        return dd.unwrap(self.model)

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        c = self.cfg
        params = [p for p in model.parameters() if p.requires_grad]
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        return torch.optim.SGD(params, lr=c.lr, momentum=0.9, weight_decay=c.weight_decay)

    def lr_at(self, step: int) -> float:
        if self.cfg.lr_schedule == "constant":
            return self.cfg.lr
        return 0.5 * self.cfg.lr * (1.0 + math.cos(math.pi * step / self.total_steps))

    # ================================================================== data order
    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This epoch's sample order, from (seed, epoch) only (hook for a distributed sampler)."""
        return np.random.default_rng([self.cfg.seed, epoch]).permutation(self.n_train)

    def batch(self, order: np.ndarray, b: int):
        # the global batch b; under torchrun this rank's share of it
        idx = torch.from_numpy(dd.shard(order[b * self.cfg.batch_size:(b + 1) * self.cfg.batch_size],
                                        self.dist)).to(self.device)
        return self._x[idx], self._y[idx]

    # ================================================================== steps
    def train_step(self, x, y, step: int) -> float:
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr_at(step)
        self.model.train()
        self.method.before_step(self.model, step)
        out = self.model(x)
        data_loss = loss = self.task_loss(out, x, y)
        extra = self.method.extra_loss(self.model, step)
        if extra is not None:
            loss = loss + extra
        grad_loss = loss
        if self.dist.active:  # DDP averages gradients: weight by this rank's share of the global batch
            b = step % self.steps_per_epoch
            n_global = min(self.cfg.batch_size, self.n_train - b * self.cfg.batch_size)
            grad_loss = data_loss * dd.loss_scale(len(x), n_global, self.dist.world_size)
            grad_loss = grad_loss if extra is None else grad_loss + extra
        self.optimizer.zero_grad(set_to_none=True)
        grad_loss.backward()
        self.optimizer.step()
        self.method.on_step_end(self.model, step)
        return float(loss.detach())

    def task_loss(self, out, x, y):
        """The task's loss, or with ``distill`` its mix with the distillation loss (Hinton et
        al. 2015): ``(1 - a) * loss + a * T^2 * KL(softmax(teacher / T) || softmax(out / T))``."""
        loss = self.loss_fn(out, y)
        if self.teacher is None:
            return loss
        a, t = self.cfg.distill, self.cfg.distill_temperature
        with torch.no_grad():
            soft = F.log_softmax(self.teacher(x).float() / t, dim=1)
        kd = F.kl_div(F.log_softmax(out.float() / t, dim=1), soft, reduction="batchmean", log_target=True)
        return (1 - a) * loss + a * t * t * kd

    @torch.no_grad()
    def predict(self, x: np.ndarray, batch: int = 1024) -> np.ndarray:
        was = self.model.training
        self.model.eval()
        try:
            outs = [self.module(torch.from_numpy(x[i:i + batch]).to(self.device)).float().cpu().numpy()
                    for i in range(0, len(x), batch)]
        finally:
            self.model.train(was)
        return np.concatenate(outs) if outs else np.zeros((0,))

    def evaluate(self, x: np.ndarray, y: np.ndarray, groups=None) -> float:
        if len(x) == 0:
            return float("nan")
        return self.metric_fn(self.predict(x), y, groups)

    # ================================================================== checkpoints
    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "checkpoints" / LAST

    def state(self, epoch: int, batch: int, step: int, loss_sum: float, loss_count: int, log: list,
              elapsed: float) -> dict:
        # a collective under torchrun: every rank calls it; rank-local statistics and the
        # running loss are summed over ranks (loaded back on rank 0 only)
        model = dd.reduce_rank_local(self.module.state_dict(), self.module)
        loss_sum, loss_count = dd.all_sum([loss_sum, loss_count], self.device)
        return {"model": model, "optimizer": self.optimizer.state_dict(), "epoch": epoch,
                "batch": batch, "step": step, "loss_sum": loss_sum, "loss_count": int(loss_count),
                "rng": rng_state(self.device), "log": [dict(r) for r in log], "elapsed": elapsed,
                "total_steps": self.total_steps, "config": self.cfg.to_dict()}

    def save(self, **pos) -> None:
        if self.checkpoint_path is not None:
            st = self.state(**pos)
            if self.is_main:
                save_checkpoint(st, self.checkpoint_path)

    def load(self, path: Path | None = None) -> dict:
        ck = load_checkpoint(path or self.checkpoint_path, map_location=self.device)
        if ck["total_steps"] != self.total_steps:
            raise ConfigError(f"resume: the checkpoint was made for {ck['total_steps']} steps, this configuration "
                              f"gives {self.total_steps} (epochs/batch_size/train_limit changed?)")
        self.module.load_state_dict(ck["model"])
        dd.zero_rank_local(self.module)  # the checkpoint's statistics are the sum over ranks
        self.optimizer.load_state_dict(ck["optimizer"])
        set_rng_state(ck["rng"], self.device)
        return ck

    def write_log(self, log: list[dict]) -> None:
        if self.run_dir is None or not self.is_main:
            return
        path = self.run_dir / "train_log.csv"
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            w.writeheader()
            w.writerows(log)
        tmp.replace(path)

    # ================================================================== the loop
    def fit(self, resume: bool = False) -> FitResult:
        from tqdm.auto import tqdm

        if self.model is None:
            self.build()
        cfg = self.cfg
        epoch, b0, step, loss_sum, loss_count, log, elapsed = 0, 0, 0, 0.0, 0, [], 0.0
        if resume:
            ck = self.load()
            epoch, b0, step = ck["epoch"], ck["batch"], ck["step"]
            loss_sum, loss_count, log, elapsed = ck["loss_sum"], ck["loss_count"], list(ck["log"]), ck["elapsed"]
            if not self.is_main:  # the running loss is summed over ranks: rank 0 carries it
                loss_sum, loss_count = 0.0, 0
        t0 = time.perf_counter() - elapsed
        val_metric = log[-1]["val_metric"] if log else float("nan")
        stopped = False
        # stdout piped or redirected: a plain line every PROGRESS_SECONDS (the first after one step)
        lines = self.progress and self.is_main and not _isatty(sys.stdout)
        every = _progress_seconds()
        next_line = 0.0
        while epoch < cfg.epochs and not stopped:
            order = self.epoch_indices(epoch)
            bar = tqdm(total=self.steps_per_epoch, initial=b0, disable=None if (self.progress and self.is_main) else True,
                       desc=f"{self.tag + ' ' if self.tag else ''}epoch {epoch + 1}/{cfg.epochs}", leave=False,
                       dynamic_ncols=True)
            for b in range(b0, self.steps_per_epoch):
                x, y = self.batch(order, b)
                loss_sum += self.train_step(x, y, step) * len(x)
                loss_count += len(x)
                step += 1
                bar.update(1)
                if b % 10 == 0 or b == self.steps_per_epoch - 1:
                    bar.set_postfix(self._postfix(loss_sum / max(1, loss_count), val_metric), refresh=False)
                if lines and time.perf_counter() >= next_line:
                    tqdm.write(self._progress_line(epoch, b + 1, step, loss_sum / max(1, loss_count), val_metric,
                                                   time.perf_counter() - t0), file=sys.stdout)
                    sys.stdout.flush()
                    next_line = time.perf_counter() + every
                last_in_epoch = b == self.steps_per_epoch - 1
                if cfg.max_steps is not None and step >= cfg.max_steps and not last_in_epoch:
                    self.save(epoch=epoch, batch=b + 1, step=step, loss_sum=loss_sum, loss_count=loss_count,
                              log=log, elapsed=time.perf_counter() - t0)
                    stopped = True
                    break
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and not last_in_epoch:
                    self.save(epoch=epoch, batch=b + 1, step=step, loss_sum=loss_sum, loss_count=loss_count,
                              log=log, elapsed=time.perf_counter() - t0)
            bar.close()
            if stopped:
                break
            val_metric = self.evaluate(self.data.x_val, self.data.y_val, self.data.val_groups)
            st = self.method.status(self.model)
            tl_sum, tl_count = dd.all_sum([loss_sum, loss_count], self.device)
            row = {"epoch": epoch + 1, "step": step, "train_loss": tl_sum / max(1, tl_count),
                   "val_metric": val_metric, "weight_sparsity": st.get("weight_sparsity", 0.0),
                   "act_sparsity": st.get("act_sparsity", 0.0), "quant_on": bool(st.get("quant_on", False)),
                   "lr": self.lr_at(step), "seconds": round(time.perf_counter() - t0, 3)}
            log.append(row)
            if self.is_main and self.progress:
                tqdm.write(self._epoch_line(row), file=sys.stdout)
                sys.stdout.flush()
            epoch, b0, loss_sum, loss_count = epoch + 1, 0, 0.0, 0
            self.save(epoch=epoch, batch=0, step=step, loss_sum=0.0, loss_count=0, log=log,
                      elapsed=time.perf_counter() - t0)
            self.write_log(log)
            if cfg.max_steps is not None and step >= cfg.max_steps and epoch < cfg.epochs:
                stopped = True
        seconds = time.perf_counter() - t0
        dd.verify_in_sync(self.module)  # every rank must hold the model that rank 0 saves
        dd.dump_state(self.module, self.tag)
        return FitResult(self.module, step, epoch, stopped, log, seconds)

    def _postfix(self, loss, metric) -> dict:
        st = self.method.status(self.model)
        d = {"loss": f"{loss:.4f}", self.task.metric: f"{metric:.2f}"}
        if "weight_sparsity" in st:
            d["w_sp"] = f"{st['weight_sparsity']:.2f}"
            d["a_sp"] = f"{st['act_sparsity']:.2f}"
            d["quant"] = "on" if st["quant_on"] else "off"
        return d

    def _progress_line(self, epoch: int, b: int, step: int, loss: float, metric: float, seconds: float) -> str:
        """One line of progress for a non-terminal stdout: where, running loss, last validation
        metric, elapsed time."""
        val = "-" if math.isnan(metric) else f"{metric:.2f}"
        return (f"{self.tag + ' ' if self.tag else ''}progress: epoch {epoch + 1}/{self.cfg.epochs}  "
                f"step {b}/{self.steps_per_epoch} ({step}/{self.total_steps} total)  loss {loss:.4f}  "
                f"val {self.task.metric} {val}  {seconds:.0f} s")

    def _epoch_line(self, r) -> str:
        s = (f"{self.tag + ' ' if self.tag else ''}epoch {r['epoch']:>3}/{self.cfg.epochs}  step {r['step']:>6}  "
             f"loss {r['train_loss']:.4f}  val {self.task.metric} {r['val_metric']:.2f}")
        if isinstance(self.method, TrainingMethod) and self.method.exports:
            s += (f"  w_sparsity {r['weight_sparsity']:.3f}  a_sparsity {r['act_sparsity']:.3f}  "
                  f"quant {'on' if r['quant_on'] else 'off'}")
        return s


def _progress_seconds() -> float:
    try:
        return float(os.environ.get("QSP_PROGRESS_SECONDS", PROGRESS_SECONDS))
    except ValueError:
        return PROGRESS_SECONDS


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False
