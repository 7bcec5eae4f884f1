"""qsp-train data loaders, models and footprint on small real slices."""
from __future__ import annotations

import gzip
import math
import struct

import numpy as np
import pytest
import torch

from qsp.bundle import Bundle
from qsp.bundle.footprint import float_footprint, footprint, performance_density
from qsp.errors import DataError
from qsp.train import TrainConfig
from qsp.train.data import (FASHION_MNIST_DIR, accuracy, downscale, load_custom, load_digits, photo_luma, psnr,
                            read_idx, load_super_resolution, sr_patches)
from qsp.train.models import build_model, espcn, lenet, mlp, resolve_model
from qsp.train.pipeline import run
from tests.conftest import needs_system


def test_digits_split():
    d = load_digits(TrainConfig(seed=3))
    n = len(d.x_train) + len(d.x_val) + len(d.x_test)
    assert n == 1797 and len(d.x_test) == 359 and d.input_shape == [1, 8, 8]
    assert d.x_train.dtype == np.float32 and d.x_train.min() == 0.0 and d.x_train.max() == 1.0
    # stratified: every class ~20 % in test
    counts = np.bincount(d.y_test, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 37
    d2 = load_digits(TrainConfig(seed=3))
    assert np.array_equal(d.y_test, d2.y_test) and np.array_equal(d.x_val, d2.x_val)
    assert not np.array_equal(load_digits(TrainConfig(seed=4)).y_test, d.y_test)


def _write_idx(path, arr):
    code = {np.uint8: 0x08}[arr.dtype.type]
    head = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    data = head + arr.tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@needs_system(FASHION_MNIST_DIR.is_dir(), "needs Debian's dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist)")
def test_fashion_mnist_idx_real_files():
    y = read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert y.shape == (10000,) and y.dtype == np.uint8 and set(np.unique(y)) == set(range(10))
    assert np.bincount(y).tolist() == [1000] * 10
    x = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    assert x.shape == (10000, 28, 28) and x.max() == 255


def test_idx_errors_and_custom_idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 256, (20, 6, 6), dtype=np.uint8)
    ys = rng.integers(0, 3, 20).astype(np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", xs)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", ys)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", xs[:5])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", ys[:5])
    d = load_custom(TrainConfig(task="custom", data_dir=str(tmp_path), val_fraction=0.0))
    assert d.input_shape == [1, 6, 6] and len(d.x_test) == 5 and d.info["num_classes"] == int(ys.max()) + 1
    assert np.array_equal(d.x_train[:, 0], xs.astype(np.float32) / 255.0)
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x05abcde")
    with pytest.raises(DataError, match="magic"):
        read_idx(bad)
    bad.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(DataError, match="9"):
        read_idx(bad)


def test_custom_npz(tmp_path):
    rng = np.random.default_rng(1)
    f = tmp_path / "jets.npz"
    np.savez(f, x_train=rng.normal(size=(50, 16)), y_train=rng.integers(0, 5, 50), x_test=rng.normal(size=(10, 16)),
             y_test=rng.integers(0, 5, 10))
    d = load_custom(TrainConfig(task="custom", data_dir=str(f)))
    assert d.input_shape == [16] and len(d.x_train) + len(d.x_val) == 50
    path, kw = resolve_model("mlp", {}, d.input_shape, {"num_classes": 5})
    net = build_model(path, kw)
    assert [m.out_features for m in net if isinstance(m, torch.nn.Linear)] == [64, 32, 32, 5]  # jet tagger 16-64-32-32-5
    np.savez(f, x_train=np.zeros((3, 4)), y_train=np.zeros(3, np.int64))
    with pytest.raises(DataError, match="x_test"):
        load_custom(TrainConfig(task="custom", data_dir=str(f)))


def test_super_resolution_patches():
    im = photo_luma("camera")
    assert im.shape == (512, 512) and im.dtype == np.float32 and 0.0 <= im.min() < im.max() <= 1.0
    c = photo_luma("chelsea")  # RGB -> luma
    assert c.shape == (300, 451)
    p = sr_patches(im, 33, 33)
    assert p.shape == (15 * 15, 33, 33) and np.array_equal(p[1], im[:33, 33:66])
    lr = downscale(p[:1])
    assert lr.shape == (1, 11, 11) and lr[0, 0, 0] == pytest.approx(im[:3, :3].mean(), abs=1e-6)
    d = load_super_resolution(TrainConfig(task="super-resolution"), train_photos=("moon",),
                              test_photos=("camera", "coins"))
    assert d.x_train.shape[1:] == (1, 11, 11) and d.y_train.shape[1:] == (1, 33, 33)
    assert len(d.x_test) == 15 * 15 + 9 * 11 and np.bincount(d.test_groups).tolist() == [225, 99]
    # nearest-neighbour upsampling is a real, lower baseline; the perfect prediction is capped
    up = np.repeat(np.repeat(d.x_test, 3, axis=2), 3, axis=3)
    assert 15.0 < psnr(up, d.y_test, d.test_groups) < 40.0
    assert psnr(d.y_test, d.y_test, d.test_groups) == pytest.approx(120.0)


def test_metrics():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    assert accuracy(logits, np.array([0, 1, 1, 1])) == 75.0
    y = np.zeros((2, 1, 3, 3))
    pred = np.full((2, 1, 3, 3), 0.1)
    assert psnr(pred, y) == pytest.approx(20.0)
    assert psnr(pred, y, np.array([0, 1])) == pytest.approx(20.0)


def test_models():
    net = lenet()
    assert sum(p.numel() for p in net.parameters()) == 80 + 1168 + 7850
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert lenet(in_size=(8, 8))(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    sr = espcn()
    assert sr(torch.zeros(1, 1, 11, 11)).shape == (1, 1, 33, 33)
    assert mlp(64, num_classes=10, flatten=True)(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_footprint_hand_count(mlp_bundle):
    b = Bundle.read(mlp_bundle)
    fp = footprint(b)
    lin = [n for n in b.graph if n.op == "linear"]
    assert fp.weight_bits == sum(8 * int(np.count_nonzero(b.weight(n.name))) for n in lin)
    assert fp.weights == 64 * 32 + 32 * 16 + 16 * 10
    assert fp.bias_bits == sum(n.bias.bits * n.out_features for n in lin)
    # input (64 elements, unmasked) + two activation points of 32 and 16 with half masked
    assert [p.elements for p in fp.points] == [64, 32, 16] and [p.nonzeros for p in fp.points] == [64, 16, 8]
    assert fp.activation_bits == 8 * (64 + 16 + 8)
    assert footprint(b.qspec).total_bits == fp.total_bits  # from the spec alone (mask sparsity)
    ff = float_footprint(b)
    assert ff.total_bits == 32 * (fp.weights + 64 + 32 + 16)
    assert performance_density(90.0, fp) == pytest.approx(90.0 / (fp.total_bits / 1e6))


def test_pipeline_lenet_and_espcn(tmp_path):
    """The CNN and the super-resolution model export valid bundles (tiny runs)."""
    if FASHION_MNIST_DIR.is_dir():
        r = run(TrainConfig(task="fashion-mnist", epochs=2, train_limit=256, batch_size=32, test_limit=300, max_test=100,
                            out=str(tmp_path / "f"), progress=False, float_baseline=False), echo=lambda *a: None)
        b = Bundle.read(r.bundle_path)
        assert [n.op for n in b.graph].count("conv2d") == 2 and len(b.test_x) == 100
        assert r.metrics["masked_activation_points"] == 2 and r.metrics["act_sparsity_masked_points"] == 0.5
        assert [n.in_shape for n in b.graph if n.op == "mask"] == [[8, 28, 28], [16, 14, 14]]
    r = run(TrainConfig(task="super-resolution", epochs=2, train_limit=256, test_limit=300, max_test=50,
                        out=str(tmp_path / "sr"), progress=False, float_baseline=False), echo=lambda *a: None)
    b = Bundle.read(r.bundle_path)
    assert b.graph[-1].op == "pixel_shuffle" and b.graph[-1].out_shape == [1, 33, 33]
    assert b.qspec.task.metric == "psnr" and math.isfinite(r.metrics["test_metric"])
    assert b.test_y.shape == (50, 1, 33, 33)
