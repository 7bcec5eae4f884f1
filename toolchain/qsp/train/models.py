"""Reference models, registered by name with :func:`model`: ``mlp``, ``lenet``, ``espcn``
(plain ``nn.Sequential``) and the networks FPGA/edge users deploy, written as ordinary
``nn.Module`` subclasses with functional calls (the bundle exporter traces them with
torch.fx): ``resnet8`` (MLPerf Tiny image classification), ``mobilenet_v2_tiny`` (inverted
residual blocks), ``ds_cnn`` (depthwise-separable CNN, MLPerf Tiny keyword spotting) and
``kws_cnn1d`` (a 1-D CNN on ``[C, L]`` sequences).

Every factory takes only keyword arguments that fully determine the architecture, so a
bundle rebuilds the module from ``factory path + kwargs + state_dict`` without pickle.
``defaults(task, input_shape, output)`` gives the kwargs a task needs (input size, classes);
the user's ``model_kwargs`` override them. A user model is ``package.module:factory``,
called with ``model_kwargs`` only.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class ModelEntry:
    factory: Callable[..., nn.Module]
    defaults: Callable  # (input_shape, data_info) -> kwargs


MODELS: dict[str, ModelEntry] = {}


def model(name, defaults):
    def deco(fn):
        MODELS[name] = ModelEntry(fn, defaults)
        return fn
    return deco


# ============================================================================ MLP
def _mlp_defaults(input_shape, info):
    return {"in_features": int(math.prod(input_shape)), "hidden": [64, 32, 32],
            "num_classes": int(info.get("num_classes", 10)), "flatten": len(input_shape) > 1}


@model("mlp", _mlp_defaults)
def mlp(in_features: int = 16, hidden: Sequence[int] = (64, 32, 32), num_classes: int = 5,
        flatten: bool = False) -> nn.Sequential:
    """Jet-tagger-style MLP: ``in -> 64 -> 32 -> 32 -> classes`` with ReLUs (16-64-32-32-5 is
    the hls4ml jet tagger; the digits default is 64-64-32-32-10 with a Flatten first)."""
    layers: list[nn.Module] = [nn.Flatten()] if flatten else []
    prev = in_features
    for h in hidden:
        layers += [nn.Linear(prev, int(h)), nn.ReLU()]
        prev = int(h)
    layers.append(nn.Linear(prev, num_classes))
    return nn.Sequential(*layers)


# ============================================================================ LeNet-style CNN
def _lenet_defaults(input_shape, info):
    if len(input_shape) != 3:
        raise ConfigError(f"model: lenet needs image inputs [C, H, W], the task gives {list(input_shape)}")
    c, h, w = input_shape
    return {"in_channels": int(c), "in_size": [int(h), int(w)], "channels": [8, 16],
            "num_classes": int(info.get("num_classes", 10))}


@model("lenet", _lenet_defaults)
def lenet(in_channels: int = 1, in_size: Sequence[int] = (28, 28), channels: Sequence[int] = (8, 16),
          num_classes: int = 10, kernel_size: int = 3) -> nn.Sequential:
    """Small LeNet-style CNN: (conv kxk 'same' -> ReLU -> maxpool 2) x 2 -> flatten -> linear.

    With the defaults on 28x28 inputs: 80 + 1,168 + 7,850 = 9,098 parameters (72 kbit at
    8 bits before pruning): fits a PYNQ-Z2 (4.9 Mbit of BRAM) many times over.
    """
    h, w = (int(s) for s in in_size)
    layers: list[nn.Module] = []
    prev = in_channels
    for c in channels:
        layers += [nn.Conv2d(prev, int(c), kernel_size, padding=kernel_size // 2), nn.ReLU(), nn.MaxPool2d(2)]
        prev, h, w = int(c), h // 2, w // 2
    if h < 1 or w < 1:
        raise ConfigError(f"model_kwargs: lenet with {len(channels)} pooling stages needs inputs of at least "
                          f"{2 ** len(channels)}x{2 ** len(channels)}, got {list(in_size)}")
    layers += [nn.Flatten(), nn.Linear(prev * h * w, num_classes)]
    return nn.Sequential(*layers)


# ============================================================================ ESPCN
def _espcn_defaults(input_shape, info):
    return {"in_channels": int(input_shape[0]), "scale": int(info.get("scale", 3)), "channels": [16, 8]}


@model("espcn", _espcn_defaults)
def espcn(in_channels: int = 1, scale: int = 3, channels: Sequence[int] = (16, 8)) -> nn.Sequential:
    """ESPCN (Shi et al. 2016), small: conv5x5 -> ReLU -> conv3x3 -> ReLU -> conv3x3 to
    in_channels * r^2 -> PixelShuffle(r). 'Same' padding: the model is fully convolutional."""
    c1, c2 = (int(c) for c in channels)
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, 5, padding=2), nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c2, in_channels * scale * scale, 3, padding=1),
        nn.PixelShuffle(scale))


# ============================================================================ real networks
def _image_defaults(widths):
    def fn(input_shape, info):
        if len(input_shape) != 3:
            raise ConfigError(f"model: needs image inputs [C, H, W], the task gives {list(input_shape)}")
        return {"in_channels": int(input_shape[0]), "num_classes": int(info.get("num_classes", 10)),
                "channels": list(widths)}
    return fn


def _conv_bn(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class ResidualBlock(nn.Module):
    """ResNet v1 basic block: conv-BN-ReLU, conv-BN, + shortcut (identity, or a strided 1x1
    conv projection where the shape changes), ReLU (functional)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.conv2 = _conv_bn(cout, cout, 3, 1)
        self.shortcut = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride)

    def forward(self, x):
        y = F.relu(self.conv1(x))
        y = self.conv2(y)
        s = x if self.shortcut is None else self.shortcut(x)
        return F.relu(y + s)


class ResNet8(nn.Module):
    """MLPerf Tiny's ResNet-8 (``resnet_v1_eembc``): 3x3 conv stem with BN and ReLU, three
    stacks of one basic block (``channels`` 16/32/64, strides 1/2/2, 1x1 strided projection
    shortcuts where the shape changes), global average pooling, dense. 78 k parameters at
    16/32/64 for 32x32x3 inputs."""

    def __init__(self, in_channels=3, num_classes=10, channels=(16, 32, 64)):
        super().__init__()
        c1, c2, c3 = (int(c) for c in channels)
        self.stem = _conv_bn(in_channels, c1, 3, 1)
        self.stack1 = ResidualBlock(c1, c1, 1)
        self.stack2 = ResidualBlock(c1, c2, 2)
        self.stack3 = ResidualBlock(c2, c3, 2)
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.stack3(self.stack2(self.stack1(x)))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


@model("resnet8", _image_defaults((16, 32, 64)))
def resnet8(in_channels: int = 3, num_classes: int = 10, channels: Sequence[int] = (16, 32, 64)) -> nn.Module:
    return ResNet8(in_channels, num_classes, channels)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand conv + BN + ReLU6, 3x3 depthwise conv + BN + ReLU6,
    1x1 project conv + BN (linear), residual add when stride is 1 and channels match."""

    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        mid = cin * expand
        self.expand = nn.Sequential(_conv_bn(cin, mid, 1), nn.ReLU6()) if expand != 1 else None
        self.dw = nn.Sequential(_conv_bn(mid, mid, 3, stride, groups=mid), nn.ReLU6())
        self.project = _conv_bn(mid, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.dw(y))
        return x + y if self.residual else y


class MobileNetV2Tiny(nn.Module):
    """A small MobileNetV2: stem conv 3x3 + BN + ReLU6, inverted residual blocks
    (expansion, channels, stride) = (1, c0, 1), (4, c1, 2), (4, c1, 1), (4, c2, 2), (4, c2, 1),
    1x1 conv head + BN + ReLU6, global average pooling, dense."""

    def __init__(self, in_channels=1, num_classes=10, channels=(8, 16, 24), stem=16, head=64):
        super().__init__()
        c0, c1, c2 = (int(c) for c in channels)
        self.stem = nn.Sequential(_conv_bn(in_channels, stem, 3, 1), nn.ReLU6())
        cfg = [(1, c0, 1), (4, c1, 2), (4, c1, 1), (4, c2, 2), (4, c2, 1)]
        blocks, cin = [], stem
        for t, c, s in cfg:
            blocks.append(InvertedResidual(cin, c, s, t))
            cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(_conv_bn(cin, head, 1), nn.ReLU6())
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(x.mean((2, 3)))


@model("mobilenet_v2_tiny", _image_defaults((8, 16, 24)))
def mobilenet_v2_tiny(in_channels: int = 1, num_classes: int = 10, channels: Sequence[int] = (8, 16, 24),
                      stem: int = 16, head: int = 64) -> nn.Module:
    return MobileNetV2Tiny(in_channels, num_classes, channels, stem, head)


class DSCNN(nn.Module):
    """Depthwise-separable CNN (MLPerf Tiny's keyword-spotting DS-CNN topology): a strided
    3x3 conv stem + BN + ReLU, then blocks of 3x3 depthwise conv + BN + ReLU and 1x1
    pointwise conv + BN + ReLU, global average pooling, dense."""

    def __init__(self, in_channels=1, num_classes=10, channels=(32, 32, 32, 32, 32)):
        super().__init__()
        cs = [int(c) for c in channels]
        self.stem = _conv_bn(in_channels, cs[0], 3, 2)
        layers = []
        for cin, cout in zip(cs[:-1], cs[1:]):
            layers += [_conv_bn(cin, cin, 3, 1, groups=cin), nn.ReLU(), _conv_bn(cin, cout, 1), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cs[-1], num_classes)

    def forward(self, x):
        x = self.body(torch.relu(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))


@model("ds_cnn", _image_defaults((32, 32, 32, 32, 32)))
def ds_cnn(in_channels: int = 1, num_classes: int = 10, channels: Sequence[int] = (32, 32, 32, 32, 32)) -> nn.Module:
    return DSCNN(in_channels, num_classes, channels)


# ============================================================================ 1-D
class KwsCnn1d(nn.Module):
    """Small 1-D CNN of keyword-spotting / sensor / jet-constituent style on ``[C, L]``
    sequences: blocks of Conv1d (k=3, padding 1) + BatchNorm1d + ReLU, a MaxPool1d(2) after
    every block but the last, the mean over the length, a dense classifier."""

    def __init__(self, in_channels=8, num_classes=10, channels=(16, 16)):
        super().__init__()
        cs = [int(c) for c in channels]
        layers: list[nn.Module] = []
        prev = int(in_channels)
        for i, c in enumerate(cs):
            layers += [nn.Conv1d(prev, c, 3, padding=1, bias=False), nn.BatchNorm1d(c), nn.ReLU()]
            if i < len(cs) - 1:
                layers.append(nn.MaxPool1d(2))
            prev = c
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(prev, num_classes)

    def forward(self, x):
        return self.fc(self.body(x).mean(-1))


def _seq_defaults(input_shape, info):
    if len(input_shape) != 2:
        raise ConfigError(f"model: needs sequence inputs [C, L], the task gives {list(input_shape)} "
                          "(task digits-rows gives [8, 8])")
    return {"in_channels": int(input_shape[0]), "num_classes": int(info.get("num_classes", 10)),
            "channels": [16, 16]}


@model("kws_cnn1d", _seq_defaults)
def kws_cnn1d(in_channels: int = 8, num_classes: int = 10, channels: Sequence[int] = (16, 16)) -> nn.Module:
    return KwsCnn1d(in_channels, num_classes, channels)


# ============================================================================ lookup
def factory_path(name: str) -> str:
    """``package.module:function`` of a model name (user paths pass through)."""
    if ":" in name:
        return name
    if name not in MODELS:
        raise ConfigError(f"model: {name!r} is not one of {', '.join(MODELS)} or package.module:factory")
    fn = MODELS[name].factory
    return f"{fn.__module__}:{fn.__name__}"


def _installed_dirs() -> list[Path]:
    """The standard library's and the installed packages' directories (sysconfig, site)."""
    import site
    import sysconfig

    dirs = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    dirs.update(site.getsitepackages() + [site.getusersitepackages()])
    return [Path(d).resolve() for d in dirs if d]


def check_factory_module(path: str) -> tuple[str, str]:
    """(module, attribute) of a ``package.module:factory`` path whose package may be
    imported for a model, checked WITHOUT importing anything: qsp's registered models, or
    a user module (a package found outside the standard library and site-packages: your
    source tree, PYTHONPATH, an editable install). Refused: the standard library and
    builtins (``os:system``, ``subprocess:getoutput``) and installed third-party packages,
    whose callables are not model factories; ConfigError says why."""
    import importlib.util
    import sys

    mod_name, _, fn_name = str(path).partition(":")
    parts = mod_name.split(".")
    if not mod_name or not fn_name or not all(p.isidentifier() for p in parts) or not fn_name.isidentifier():
        raise ConfigError(f"model: {path!r} must look like package.module:factory")
    top = parts[0]
    if top == "qsp":  # qsp's own: only its registered models (other qsp functions run tools, write files)
        if f"{mod_name}:{fn_name}" not in {factory_path(n) for n in MODELS}:
            raise ConfigError(f"model: {path!r} is not one of qsp's models ({', '.join(MODELS)}); a model factory "
                              f"of your own lives in your own module")
        return mod_name, fn_name
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        raise ConfigError(f"model: {path!r} is in Python's standard library; a model factory must be a function "
                          f"or nn.Module class defined in your own module (package.module:factory)")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError) as e:
        raise ConfigError(f"model: cannot find package {top!r} ({e})") from None
    if spec is None:
        raise ConfigError(f"model: cannot import module {mod_name!r} (no package {top!r} on the Python path)")
    origin = spec.origin if spec.origin not in (None, "namespace") else next(iter(spec.submodule_search_locations
                                                                                  or []), None)
    if origin is None or origin in ("built-in", "frozen"):
        raise ConfigError(f"model: {path!r}: package {top!r} is built into Python, not a user module")
    where = Path(origin).resolve()
    if any(where.is_relative_to(d) for d in _installed_dirs()):
        raise ConfigError(f"model: {path!r}: package {top!r} is installed in {where.parent} (standard library or "
                          f"site-packages); a model factory must be defined in your own module (put a function "
                          f"returning the nn.Module in a file on the Python path)")
    return mod_name, fn_name


def import_factory(path: str) -> Callable[..., nn.Module]:
    """The factory of ``package.module:factory`` (see :func:`check_factory_module`, checked
    first): a function or an ``nn.Module`` subclass defined in that module itself (not one
    it imported). It is called (by :func:`build_model`) only after these checks; on every
    run, ``--resume`` included."""
    import inspect

    mod_name, fn_name = check_factory_module(path)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"model: cannot import module {mod_name!r} ({e})") from None
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing
        raise ConfigError(f"model: importing {mod_name!r} failed ({type(e).__name__}: {e})") from None
    fn = getattr(mod, fn_name, None)
    if fn is None:
        raise ConfigError(f"model: module {mod_name!r} has no callable {fn_name!r}")
    is_module_class = inspect.isclass(fn) and issubclass(fn, nn.Module)
    if not (inspect.isfunction(fn) or is_module_class):
        raise ConfigError(f"model: {path!r} is a {type(fn).__name__}, not a function or an nn.Module class")
    if getattr(fn, "__module__", None) != mod.__name__:
        raise ConfigError(f"model: {path!r} is defined in {getattr(fn, '__module__', '?')!r}, not in "
                          f"{mod_name!r}: name the module that defines the factory")
    return fn


def resolve_model(name: str, model_kwargs: dict, input_shape, data_info) -> tuple[str, dict]:
    """(factory path, full kwargs) for a config's model."""
    if ":" in name:
        return name, dict(model_kwargs)
    entry = MODELS.get(name)
    if entry is None:
        raise ConfigError(f"model: {name!r} is not one of {', '.join(MODELS)} or package.module:factory")
    kw = entry.defaults(list(input_shape), data_info)
    kw.update(model_kwargs)
    return factory_path(name), kw


def build_model(path: str, kwargs: dict) -> nn.Module:
    fn = import_factory(path)
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
        raise ConfigError(f"model_kwargs: {kwargs!r} must be a mapping of argument names to values")
    try:
        m = fn(**kwargs)
    except TypeError as e:
        raise ConfigError(f"model_kwargs: {path} rejected {kwargs}: {e}") from None
    if not isinstance(m, nn.Module):
        raise ConfigError(f"model: {path} returned {type(m).__name__}, not a torch.nn.Module")
    return m
