"""Distillation methods, one class each, behind one interface (methods/base.py).

A new method or variant is one class with a `name`, registered here.
"""

from __future__ import annotations

from distill.errors import DistillError
from distill.methods.base import Context, Method
from distill.methods.dfnd import DFND
from distill.methods.kd import KD, RandomSubset
from distill.methods.kd3 import KD3, KD3Paper
from distill.methods.supervised import Supervised

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (KD3, KD3Paper, KD, DFND, RandomSubset, Supervised)
}
DISTILL_METHODS = tuple(name for name, m in METHODS.items() if m.needs_teacher)


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise DistillError(f"unknown method '{name}'; choose from {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["DISTILL_METHODS", "METHODS", "Context", "Method", "method_class"]
