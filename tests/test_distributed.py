"""qsp-train under torchrun: 2 CPU processes (gloo) on digits.

Every rank ends with the same masks, fraction bits and weights (bitwise), the one bundle
rank 0 writes holds exactly that model, 2 processes with the same global batch and seed
reach what 1 process reaches, and a run stopped on 1 process resumes on 2.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qsp import fixedpoint as fp
from qsp.errors import ConfigError
from qsp.train import distributed as dd
from qsp.train.cli import main

# 600 samples, global batch 32: 19 steps, the last batch 24 (12 per rank)
ARGS = ["--epochs", "1", "--device", "cpu", "--no-progress", "--float-baseline", "false",
        "--train-limit", "600", "--test-limit", "300"]
RANK_LOCAL = (".ring", ".err")  # each rank's own window statistics (summed where used)


def _torchrun(nproc: int, args: list[str], dump: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", QSP_DIST_DUMP=str(dump))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "qsp.train", *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"torchrun failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


def _in_process(args: list[str], dump: Path) -> None:
    old = os.environ.get(dd.DUMP_ENV)
    os.environ[dd.DUMP_ENV] = str(dump)
    try:
        assert main(args) == 0
    finally:
        if old is None:
            os.environ.pop(dd.DUMP_ENV)
        else:
            os.environ[dd.DUMP_ENV] = old


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    r = _torchrun(2, [*ARGS, "--out", str(root / "run")], root / "dump")
    return root, r


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    _in_process([*ARGS, "--out", str(root / "run")], root / "dump")
    return root


def _shared(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.endswith(RANK_LOCAL)}


# ============================================================================ ranks agree
def test_ranks_hold_identical_models(ddp):
    root, _ = ddp
    r0, r1 = (_load(root / "dump" / f"model.rank{r}.npz") for r in (0, 1))
    assert sorted(r0) == sorted(r1)
    s0, s1 = _shared(r0), _shared(r1)
    assert any(k.endswith(".mask") for k in s0) and any(k.endswith(".frac") for k in s0)
    for k in s0:
        assert s0[k].dtype == s1[k].dtype and np.array_equal(s0[k], s1[k]), k
    # ... while each rank's window saliency came from its own half of every batch
    rings = [k for k in r0 if k.endswith(".ring")]
    assert rings and all(not np.array_equal(r0[k], r1[k]) for k in rings)


def _check_bundle_is(bundle_dir: Path, state: dict) -> None:
    """The bundle written by rank 0 is exactly the model ``state`` (fraction bits, masks,
    weights and biases on their grids)."""
    q = json.loads((bundle_dir / "qspec.json").read_text())
    masks = _load(bundle_dir / "masks.npz")
    weights = _load(bundle_dir / "weights.npz")
    seen = {"quantize": 0, "mask": 0, "linear": 0}
    for n in q["graph"]:
        src = n.get("source")
        if n["op"] == "quantize":
            assert n["format"]["frac"] == int(state[f"{src}.frac"]), n["name"]
        elif n["op"] == "mask":
            assert np.array_equal(masks[f"{n['name']}.mask"], state[f"{src}.mask"]), n["name"]
        elif n["op"] == "linear":
            w = state[f"{src}.layer.weight"].astype(np.float64)
            for k in sorted(k for k in state if k.startswith(f"{src}.weight_ops.") and k.endswith(".mask")):
                w = w * state[k]
            wf, bf = n["weight"], n["bias"]
            assert np.array_equal(weights[f"{n['name']}.weight"],
                                  fp.quantize_np(w, wf["bits"], wf["frac"], wf["signed"], wf["rounding"])), n["name"]
            assert np.array_equal(weights[f"{n['name']}.bias"],
                                  fp.quantize_np(state[f"{src}.layer.bias"].astype(np.float64), bf["bits"],
                                                 bf["frac"], bf["signed"], bf["rounding"])), n["name"]
        else:
            continue
        seen[n["op"]] += 1
    assert seen == {"quantize": 4, "mask": 3, "linear": 4}


def test_one_bundle_equal_to_every_rank(ddp):
    root, r = ddp
    run = root / "run"
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["bundle", "checkpoints"]
    for rank in (0, 1):
        _check_bundle_is(run / "bundle", _load(root / "dump" / f"model.rank{rank}.npz"))
    assert (run / "bundle" / "model.onnx").is_file()
    # rank 0 alone reports; one epoch row in the log
    assert r.stdout.count("qsp-train: task digits") == 1 and r.stdout.count("bundle: ") == 1
    assert len((run / "train_log.csv").read_text().splitlines()) == 2


# ============================================================================ equivalence
def _stats(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    q = json.loads((run / "bundle" / "qspec.json").read_text())
    return {"test": m["test_metric"], "val": m["val_metric"], "w_sp": m["weight_sparsity_overall"],
            "a_sp": m["act_sparsity_overall"], "nonzeros": [n["nonzeros"] for n in q["graph"] if n["op"] == "linear"],
            "fracs": [n["format"]["frac"] for n in q["graph"] if n["op"] == "quantize"]}


def test_two_processes_match_one(ddp, single):
    """Same global batch (32) and seed: the 2-process run is the 1-process run up to the
    order of floating-point sums (DDP's all-reduce)."""
    root, _ = ddp
    s2, s1 = _stats(root / "run"), _stats(single / "run")
    assert s2["fracs"] == s1["fracs"]
    assert s2["nonzeros"] == s1["nonzeros"] and s2["a_sp"] == s1["a_sp"]
    assert abs(s2["test"] - s1["test"]) <= 1.0 and abs(s2["val"] - s1["val"]) <= 1.0
    a, b = _shared(_load(root / "dump" / "model.rank0.npz")), _shared(_load(single / "dump" / "model.rank0.npz"))
    masks = [k for k in a if k.endswith(".mask")]
    agree = sum(int((a[k] == b[k]).sum()) for k in masks) / sum(a[k].size for k in masks)
    assert agree >= 0.99, agree
    for k in a:
        if a[k].dtype.kind == "f":
            np.testing.assert_allclose(a[k], b[k], atol=1e-4, err_msg=k)


def test_stopped_on_one_process_resumes_on_two(ddp, single, tmp_path):
    """A checkpoint holds the unwrapped module (rank-local statistics summed over ranks): a
    run stopped mid-epoch on 1 process finishes on 2, and ends where 1 process ends."""
    run = tmp_path / "run"
    # schedule of 19 steps: masks updated at t = 2..9 from the saliency of the step before
    # (window 1), fraction bits at t = 10. Stopped after t = 4: the checkpoint holds the
    # saliency that the t = 5 update uses; rank 0 carries it, rank 1 starts from zeros
    _in_process([*ARGS, "--out", str(run), "--max-steps", "5"], tmp_path / "dump1")
    assert not (run / "bundle").exists()
    r = _torchrun(2, ["--resume", "--out", str(run), "--no-progress", "--max-steps", "19"], tmp_path / "dump2")
    assert "qsp-train: task digits" in r.stdout
    r0, r1 = (_shared(_load(tmp_path / "dump2" / f"model.rank{k}.npz")) for k in (0, 1))
    for k in r0:
        assert np.array_equal(r0[k], r1[k]), k
    _check_bundle_is(run / "bundle", r0)
    assert _stats(run)["fracs"] == _stats(single / "run")["fracs"]
    assert _stats(run)["nonzeros"] == _stats(single / "run")["nonzeros"]


# ============================================================================ pieces
def test_shards_cover_the_global_batch_in_order():
    g = np.random.default_rng(0).permutation(37)
    for world in (1, 2, 3, 8):
        parts = [dd.shard(g, dd.DistInfo(r, world, r)) for r in range(world)]
        assert np.array_equal(np.concatenate(parts), g)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        # the ranks' loss weights average to 1 (DDP divides the summed gradients by world)
        assert sum(dd.loss_scale(len(p), len(g), world) for p in parts) / world == pytest.approx(1.0)


def test_batches_too_small_for_the_world():
    dd.check_batches(600, 32, 2)  # last batch 24
    with pytest.raises(ConfigError, match="batch_size"):
        dd.check_batches(100, 1, 2)
    with pytest.raises(ConfigError, match="the last of each epoch"):
        dd.check_batches(97, 32, 2)  # last batch of 1 sample
    dd.check_batches(97, 32, 1)


def test_single_process_is_untouched(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert dd.launched() == dd.SINGLE and not dd.current().active
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match="RANK"):
        dd.launched()
