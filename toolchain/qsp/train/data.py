"""Tasks and their data, all offline.

* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images) as ``[1, 8, 8]`` in [0, 1];
  a stratified 20 % test split drawn with the seed. ``digits-rows``: the same split as
  sequences ``[8, 8]`` (channels = pixel columns, length = rows), a stand-in for 1-D signal
  tasks such as keyword spotting (no audio ships offline); default model ``kws_cnn1d``.
* ``fashion-mnist``: the standard IDX ``.gz`` files, from ``data_dir`` or the Debian
  package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), ``[1, 28, 28]``.
* ``super-resolution``: ESPCN x3 on luma patches of scikit-image's bundled photos; the
  low-resolution input is the 3x3 block mean of the high-resolution patch. Some photos train,
  others (never seen) test; the metric is the PSNR (dB) per held-out photo, averaged.
* ``custom``: your own data in ``data_dir``: a ``.npz`` with ``x_train, y_train, x_test,
  y_test`` or a directory of IDX files (``train-images-idx3-ubyte[.gz]`` ...).

Every task is a :class:`TaskSpec` registered with :func:`task`; a loader returns a
:class:`DataSplits` of numpy arrays (float32 inputs, int64 labels or float32 targets).
"""
from __future__ import annotations

import gzip
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: scikit-image photos that ship with the package (load without network)
SR_TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
                   "brick", "grass", "gravel", "moon", "page")
SR_TEST_PHOTOS = ("camera", "coins", "clock", "text")


@dataclass
class DataSplits:
    """Arrays of one task. ``test_groups`` (optional) assigns each test sample to a group
    (super resolution: the photo it was cut from) for group-wise metrics."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    test_groups: np.ndarray | None = None
    val_groups: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> list[int]:
        return list(self.x_train.shape[1:])


@dataclass(frozen=True)
class TaskDefaults:
    model: str
    epochs: int
    batch_size: int
    lr: float
    float_baseline: bool
    threads: int | None = None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # classification | super-resolution
    metric: str  # accuracy | psnr
    loss: str  # cross_entropy | mse
    defaults: TaskDefaults
    loader: Callable  # (cfg) -> DataSplits


TASKS: dict[str, TaskSpec] = {}


def task(name, kind, metric, loss, defaults: TaskDefaults):
    def deco(fn):
        TASKS[name] = TaskSpec(name, kind, metric, loss, defaults, fn)
        return fn
    return deco


def load_task(cfg) -> tuple[TaskSpec, DataSplits]:
    spec = TASKS[cfg.task]
    data = spec.loader(cfg)
    if cfg.train_limit is not None and cfg.train_limit < len(data.x_train):
        data.x_train, data.y_train = data.x_train[:cfg.train_limit], data.y_train[:cfg.train_limit]
    if cfg.test_limit is not None:
        n = cfg.test_limit
        data.x_val, data.y_val, data.x_test, data.y_test = data.x_val[:n], data.y_val[:n], data.x_test[:n], data.y_test[:n]
        data.val_groups = None if data.val_groups is None else data.val_groups[:n]
        data.test_groups = None if data.test_groups is None else data.test_groups[:n]
    return spec, data


# ============================================================================ splits
def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep, held_out) index arrays: ``fraction`` of each class held out, chosen by ``seed``."""
    rng = np.random.default_rng(seed)
    keep, out = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        n = int(round(fraction * len(idx)))
        out.append(idx[:n])
        keep.append(idx[n:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(out))


def _with_val(x, y, x_test, y_test, val_fraction, seed, **kw) -> DataSplits:
    if val_fraction > 0:
        tr, va = stratified_split(y, val_fraction, seed + 1)
    else:
        tr, va = np.arange(len(y)), np.arange(0)
    return DataSplits(x[tr], y[tr], x[va], y[va], x_test, y_test, **kw)


# ============================================================================ digits
@task("digits", "classification", "accuracy", "cross_entropy",
      TaskDefaults(model="mlp", epochs=60, batch_size=32, lr=3e-3, float_baseline=True, threads=1))
def load_digits(cfg) -> DataSplits:
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]  # pixel values 0..16
    y = d.target.astype(np.int64)
    tr, te = stratified_split(y, 0.2, cfg.seed)
    return _with_val(x[tr], y[tr], x[te], y[te], cfg.val_fraction, cfg.seed,
                     info={"source": "sklearn.datasets.load_digits", "num_classes": 10})


@task("digits-rows", "classification", "accuracy", "cross_entropy",
      TaskDefaults(model="kws_cnn1d", epochs=40, batch_size=32, lr=3e-3, float_baseline=True, threads=1))
def load_digits_rows(cfg) -> DataSplits:
    """The digits as sequences ``[C=8, L=8]`` (pixel column x row: the image read top to
    bottom, one 8-value frame per row): a stand-in for a 1-D signal task (keyword spotting,
    sensors), since no audio data ships offline."""
    d = load_digits(cfg)
    for k in ("x_train", "x_val", "x_test"):
        setattr(d, k, np.ascontiguousarray(getattr(d, k)[:, 0].transpose(0, 2, 1)))
    d.info = {**d.info, "layout": "[C=8 columns, L=8 rows]"}
    return d


# ============================================================================ IDX
def read_idx(path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array."""
    p = Path(path)
    try:
        raw = gzip.open(p, "rb").read() if p.suffix == ".gz" else p.read_bytes()
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{p}: not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise DataError(f"{p}: unknown IDX element type 0x{raw[2]:02x}")
    nd = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd))
    dt = np.dtype(dtypes[raw[2]])
    need = 4 + 4 * nd + dt.itemsize * math.prod(shape)
    if len(raw) != need:
        raise DataError(f"{p}: IDX header says {shape} ({need} bytes) but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dt, offset=4 + 4 * nd).reshape(shape).astype(dt.newbyteorder("="))


def _find_idx(d: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (d / name).exists():
            return d / name
    raise DataError(f"{d}: missing {stem}[.gz] (expected the standard IDX file names)")


def load_idx_dir(d, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) from the four standard IDX files in ``d``."""
    d = Path(d)
    if not d.is_dir():
        raise DataError(f"data_dir {str(d)!r} does not exist or is not a directory")
    arrs = [read_idx(_find_idx(d, s)) for s in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]
    for (xa, ya), what in (((arrs[0], arrs[1]), "train"), ((arrs[2], arrs[3]), "t10k")):
        if len(xa) != len(ya):
            raise DataError(f"{d}: {what} images ({len(xa)}) and labels ({len(ya)}) differ in count")
    if limit:
        arrs = [a[:limit] for a in arrs]
    return tuple(arrs)


def _images(x: np.ndarray) -> np.ndarray:
    """uint8 -> [0, 1]; [N, H, W] -> [N, 1, H, W]; float32."""
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    return x[:, None] if x.ndim == 3 else x


@task("fashion-mnist", "classification", "accuracy", "cross_entropy",
      TaskDefaults(model="lenet", epochs=10, batch_size=128, lr=2e-3, float_baseline=False))
def load_fashion_mnist(cfg) -> DataSplits:
    d = Path(cfg.data_dir) if cfg.data_dir else FASHION_MNIST_DIR
    if not d.is_dir():
        raise DataError(f"fashion-mnist: {str(d)!r} not found; install the Debian package dataset-fashion-mnist "
                        "or pass --data-dir with the four IDX files")
    xtr, ytr, xte, yte = load_idx_dir(d)
    return _with_val(_images(xtr), ytr.astype(np.int64), _images(xte), yte.astype(np.int64), cfg.val_fraction,
                     cfg.seed, info={"source": str(d), "num_classes": 10})


# ============================================================================ custom
#: more classes than this in user data is taken for a mislabelled array (labels that are ids)
MAX_CLASSES = 100_000


def check_classification_arrays(src, xtr, ytr, xte, yte) -> None:
    """User data for a classification task, checked before any training: numeric finite
    samples, one integer label per sample in [0, MAX_CLASSES), non-empty splits."""
    for name, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{src}: y_{name} must be a 1-D array of integer class labels (got {y.dtype}{list(y.shape)})")
        if x.ndim < 2 or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise DataError(f"{src}: x_{name} must be a numeric array [N, ...] (got {x.dtype}{list(x.shape)})")
        if len(x) == 0:
            raise DataError(f"{src}: x_{name} is empty")
        if len(x) != len(y):
            raise DataError(f"{src}: x_{name} has {len(x)} samples but y_{name} {len(y)} labels")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            bad = np.argwhere(~np.isfinite(x))[0]
            raise DataError(f"{src}: x_{name} holds a non-finite value (NaN or inf) at index {bad.tolist()}")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= MAX_CLASSES:
            i = int(np.argmin(y)) if lo < 0 else int(np.argmax(y))
            raise DataError(f"{src}: y_{name}[{i}] = {int(y[i])} is not a class label in [0, {MAX_CLASSES})")


# ============================================================================ custom
@task("custom", "classification", "accuracy", "cross_entropy",
      TaskDefaults(model="mlp", epochs=20, batch_size=64, lr=2e-3, float_baseline=False, threads=1))
def load_custom(cfg) -> DataSplits:
    if not cfg.data_dir:
        raise DataError("task custom needs data_dir: a .npz (x_train, y_train, x_test, y_test) or a directory of "
                        "IDX files")
    p = Path(cfg.data_dir)
    if p.exists() and not p.is_dir() and not p.is_file():
        raise DataError(f"data_dir {str(p)!r} is not a regular file (a FIFO, socket or device)")
    if p.is_file():
        import zipfile

        try:
            with np.load(p, allow_pickle=False) as z:
                if not hasattr(z, "files"):
                    raise DataError(f"{p}: a single array, not a .npz with x_train, y_train, x_test, y_test")
                missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
                if missing:
                    raise DataError(f"{p}: missing arrays {missing} (has {z.files})")
                xtr, ytr, xte, yte = (z[k] for k in ("x_train", "y_train", "x_test", "y_test"))
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            raise DataError(f"{p}: cannot read as .npz ({type(e).__name__}: {e}); truncated or not an .npz?") from None
    else:
        xtr, ytr, xte, yte = load_idx_dir(p)
    check_classification_arrays(p, xtr, ytr, xte, yte)
    xtr, xte = (x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32) for x in (xtr, xte))
    if xtr.ndim == 3:  # [N, H, W] images
        xtr, xte = xtr[:, None], xte[:, None]
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(f"{p}: x_train samples {list(xtr.shape[1:])} and x_test samples {list(xte.shape[1:])} differ")
    n_cls = int(max(ytr.max(), yte.max())) + 1
    return _with_val(xtr, ytr.astype(np.int64), xte, yte.astype(np.int64), cfg.val_fraction, cfg.seed,
                     info={"source": str(p), "num_classes": n_cls})


# ============================================================================ super resolution
SR_SCALE = 3
SR_PATCH = 33  # high-resolution patch side (11x11 low-resolution input)


def photo_luma(name: str) -> np.ndarray:
    """A scikit-image photo as luma (ITU-R BT.601 Y) in [0, 1], float32."""
    import skimage.data

    try:
        im = getattr(skimage.data, name)()
    except Exception as e:  # pooch/network errors for photos that do not ship
        raise DataError(f"scikit-image photo {name!r} cannot be loaded offline ({type(e).__name__}: {e})") from None
    im = np.asarray(im)
    if im.dtype == bool:
        im = im.astype(np.float32)
    elif im.dtype == np.uint8:
        im = im.astype(np.float32) / 255.0
    else:
        im = im.astype(np.float32)
    if im.ndim == 3:
        im = im[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    return im


def downscale(hr: np.ndarray, r: int = SR_SCALE) -> np.ndarray:
    """Block mean by ``r`` over the last two axes (sizes must be multiples of ``r``)."""
    *lead, H, W = hr.shape
    return hr.reshape(*lead, H // r, r, W // r, r).mean(axis=(-3, -1))


def sr_patches(img: np.ndarray, patch: int, stride: int) -> np.ndarray:
    """High-resolution patches [N, patch, patch] on a regular grid."""
    H, W = img.shape
    out = [img[i:i + patch, j:j + patch] for i in range(0, H - patch + 1, stride)
           for j in range(0, W - patch + 1, stride)]
    return np.stack(out).astype(np.float32)


@task("super-resolution", "super-resolution", "psnr", "mse",
      TaskDefaults(model="espcn", epochs=30, batch_size=64, lr=2e-3, float_baseline=False))
def load_super_resolution(cfg, train_photos=SR_TRAIN_PHOTOS, test_photos=SR_TEST_PHOTOS,
                          train_stride: int = 14) -> DataSplits:
    """Training patches overlap (stride 14); test patches tile each held-out photo without
    overlap, so the per-photo PSNR is the PSNR of the photo's tiled area."""
    hr_train, hr_test, groups = [], [], []
    for name in train_photos:
        hr_train.append(sr_patches(photo_luma(name), SR_PATCH, train_stride))
    for g, name in enumerate(test_photos):
        p = sr_patches(photo_luma(name), SR_PATCH, SR_PATCH)
        hr_test.append(p)
        groups.append(np.full(len(p), g, np.int64))
    hr_train = np.concatenate(hr_train)
    hr_test = np.concatenate(hr_test)
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(len(hr_train))
    n_val = int(round(cfg.val_fraction * len(perm)))
    va, tr = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    x_all, y_all = downscale(hr_train)[:, None], hr_train[:, None]
    return DataSplits(x_all[tr], y_all[tr], x_all[va], y_all[va], downscale(hr_test)[:, None], hr_test[:, None],
                      test_groups=np.concatenate(groups), val_groups=np.zeros(len(va), np.int64),
                      info={"source": "skimage.data", "train_photos": list(train_photos),
                            "test_photos": list(test_photos), "scale": SR_SCALE, "hr_patch": SR_PATCH,
                            "downscale": "3x3 block mean of luma"})


# ============================================================================ metrics
METRICS: dict[str, Callable] = {}


def metric(name):
    def deco(fn):
        METRICS[name] = fn
        return fn
    return deco


@metric("accuracy")
def accuracy(pred: np.ndarray, y: np.ndarray, groups=None) -> float:
    """Top-1 accuracy in percent (pred: logits [N, C])."""
    return float(100.0 * np.mean(np.argmax(pred, axis=1) == y)) if len(y) else float("nan")


@metric("psnr")
def psnr(pred: np.ndarray, y: np.ndarray, groups=None) -> float:
    """Mean over groups (photos) of 10 log10(1 / MSE), images in [0, 1] (pred clipped)."""
    if not len(y):
        return float("nan")
    err = (np.clip(pred, 0.0, 1.0).astype(np.float64) - y) ** 2
    groups = np.zeros(len(y), np.int64) if groups is None else groups
    vals = []
    for g in np.unique(groups):
        mse = float(err[groups == g].mean())
        vals.append(10.0 * math.log10(1.0 / max(mse, 1e-12)))
    return float(np.mean(vals))
