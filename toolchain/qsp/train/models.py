"""Reference models: factories that return plain ``nn.Sequential`` (the bundle exporter
walks them layer by layer), registered by name with :func:`model`.

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
from typing import Callable, Sequence

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


# ============================================================================ lookup
def factory_path(name: str) -> str:
    """``package.module:function`` of a model name (user paths pass through)."""
    if ":" in name:
        return name
    if name not in MODELS:
        raise ConfigError(f"model: {name!r} is not one of {', '.join(MODELS)} or package.module:factory")
    fn = MODELS[name].factory
    return f"{fn.__module__}:{fn.__name__}"


def import_factory(path: str) -> Callable[..., nn.Module]:
    mod_name, _, fn_name = path.partition(":")
    if not mod_name or not fn_name:
        raise ConfigError(f"model: {path!r} must look like package.module:factory")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"model: cannot import module {mod_name!r} ({e})") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"model: module {mod_name!r} has no callable {fn_name!r}")
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
    try:
        m = fn(**kwargs)
    except TypeError as e:
        raise ConfigError(f"model_kwargs: {path} rejected {kwargs}: {e}") from None
    if not isinstance(m, nn.Module):
        raise ConfigError(f"model: {path} returned {type(m).__name__}, not a torch.nn.Module")
    return m
