"""Checks of what reaches a node: widget values against the node's own declared ranges and choices, and socket
objects of the right type, so a bad value fails at once with the node title and widget name (before any model runs).

ComfyUI checks widget ranges in its UI, but API prompts, converted widgets fed by links and direct Python calls
bypass that; these checks hold for every caller.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

from trellis2_core.errors import InputError

__all__ = ["node_title", "widget_label", "check_widgets", "require_asset"]

_INT_RANGE = (-(2**63), 2**64 - 1)


def node_title(node_cls: type) -> str:
    """The title the node menu shows for ``node_cls`` (its class name before the table is built)."""
    try:
        from . import NODE_DISPLAY_NAME_MAPPINGS
    except ImportError:
        return node_cls.__name__
    return NODE_DISPLAY_NAME_MAPPINGS.get(node_cls.__name__, node_cls.__name__)


def widget_label(node_cls: type, name: str, kind: str = "widget") -> str:
    """``"<Node title>: widget 'name'"``, how the messages name a widget or an input socket."""
    return f"{node_title(node_cls)}: {kind} '{name}'"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_int(value: Any, label: str, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{label} must be a whole number in {lo}..{hi}, got {_show(value)}")
    if not lo <= int(value) <= hi:
        raise InputError(f"{label} must be in {lo}..{hi}, got {int(value)}")


def _check_float(value: Any, label: str, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{label} must be a number in [{lo:g}, {hi:g}], got {_show(value)}")
    if not math.isfinite(float(value)):
        raise InputError(f"{label} must be a finite number in [{lo:g}, {hi:g}], got {value}")
    if not lo <= float(value) <= hi:
        raise InputError(f"{label} must be in [{lo:g}, {hi:g}], got {float(value):g}")


def check_widgets(node_cls: type, values: dict[str, Any], *, skip: Iterable[str] = ()) -> None:
    """Check each of ``values`` (widget name → value) against ``node_cls.INPUT_TYPES()``: INT/FLOAT within their
    declared min/max (and finite), BOOLEAN a bool, STRING a str, menu values among the choices. Optional widgets
    may be None; socket inputs (custom types) and names in ``skip`` are left to the node.

    Raises:
        InputError: naming the node title and the widget, the allowed values and the value found.
    """
    spec = node_cls.INPUT_TYPES()
    skipped = set(skip)
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            if name not in values or name in skipped:
                continue
            value = values[name]
            if value is None and section == "optional":
                continue
            kind = entry[0]
            opts = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            label = widget_label(node_cls, name)
            if isinstance(kind, (list, tuple)):
                if not isinstance(value, str) or value not in kind:
                    raise InputError(f"{label} must be one of {', '.join(map(str, kind))}, got {_show(value)}")
            elif kind == "INT":
                _check_int(value, label, int(opts.get("min", _INT_RANGE[0])), int(opts.get("max", _INT_RANGE[1])))
            elif kind == "FLOAT":
                _check_float(value, label, float(opts.get("min", -math.inf)), float(opts.get("max", math.inf)))
            elif kind == "BOOLEAN":
                if not isinstance(value, bool) and type(value).__name__ != "bool_":
                    raise InputError(f"{label} must be true or false, got {_show(value)}")
            elif kind == "STRING":
                if not isinstance(value, str):
                    raise InputError(f"{label} must be text, got {_show(value)}")


def require_asset(value: Any, expected: type | tuple[type, ...], node_cls: type, name: str, source: str) -> Any:
    """``value`` if it is an ``expected`` socket object; else an InputError saying which node to connect."""
    if not isinstance(value, expected):
        raise InputError(f"{widget_label(node_cls, name, 'input')} needs the output of {source}, got "
                         f"{type(value).__name__}; connect that node's output to it")
    return value
