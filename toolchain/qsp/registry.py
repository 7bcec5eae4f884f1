"""One small handler per layer/node type: the registry pattern every stage uses (the
bundle export, the compiler's deploy model and precision plan, the estimator's counts and
resource models). A new layer type is one decorated function, not an edit to an if-chain."""
from __future__ import annotations

from typing import Callable


class Registry(dict):
    """``key -> handler``; keys are node op names or module types."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def register(self, *keys) -> Callable:
        """Decorator: ``@reg.register("linear", "conv2d")`` registers one function for
        several keys."""
        def deco(fn):
            for k in keys:
                self[k] = fn
            return fn
        return deco

    def for_type(self, obj):
        """The handler registered for ``type(obj)`` or its nearest base class, or None."""
        for t in type(obj).__mro__:
            if t in self:
                return self[t]
        return None
