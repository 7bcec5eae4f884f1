"""op -> its :class:`~qsp.ops.base.OpRule` (one instance per op)."""
from __future__ import annotations

from .base import OpRule

#: every bundle op's rule, by op name
RULES: dict[str, OpRule] = {}


def register(cls):
    """Class decorator: register one instance of an :class:`OpRule` subclass under its
    ``op`` (an op defined in its own module is one decorated class)."""
    inst = cls()
    if not inst.op:
        raise ValueError(f"{cls.__name__}: an op rule needs its op name")
    if inst.op in RULES and type(RULES[inst.op]) is not cls:
        raise ValueError(f"op {inst.op!r}: registered twice ({type(RULES[inst.op]).__name__}, {cls.__name__})")
    RULES[inst.op] = inst
    return cls


def unregister(op: str) -> None:
    """Remove ``op``'s rule (tests that add a toy op)."""
    RULES.pop(op, None)


def rule(op: str) -> OpRule | None:
    """The rule of ``op``, or None when no module defines it."""
    return RULES.get(op)
