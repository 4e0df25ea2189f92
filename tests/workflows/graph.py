"""Workflow helpers for the tests: UI-format → API-format conversion and a small in-process executor.

The converter follows the ComfyUI frontend's rules (``app.graphToPrompt``): ``widgets_values`` holds one value per
widget input, in ``INPUT_TYPES`` order (required, then optional), plus one extra value after every INT with
``control_after_generate`` (or named ``seed``/``noise_seed``) and after an ``image_upload`` combo; a widget input
that is linked takes the link instead. Frontend-only nodes (Note, MarkdownNote) are dropped.

The executor runs an API graph like ComfyUI does: only output nodes and their ancestors, each node once, outputs
cached by a signature of class + constant inputs + upstream signatures (so re-running a graph with one changed
widget re-executes only that node and its descendants).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

__all__ = ["FRONTEND_ONLY", "widget_slots", "ui_to_api", "Executor", "CONTROL_VALUES"]

FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
_WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


@dataclass(frozen=True)
class WidgetSlot:
    name: str  # the input name, or '<name>:control' / '<name>:upload' for frontend extras
    spec: tuple  # the INPUT_TYPES entry of the input
    extra: bool = False


def _inputs(schema: Mapping[str, Any]) -> list[tuple[str, tuple]]:
    out = []
    for section in ("required", "optional"):
        for name, spec in (schema.get(section) or {}).items():
            out.append((name, tuple(spec) if isinstance(spec, (list, tuple)) else (spec,)))
    return out


def _is_widget(spec: tuple) -> bool:
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if opts.get("forceInput"):
        return False
    if opts.get("widgetType") in _WIDGET_TYPES:  # V3 multi-type inputs (core Preview3D's model_file)
        return True
    return isinstance(kind, (list, tuple)) or kind in _WIDGET_TYPES


def widget_slots(schema: Mapping[str, Any]) -> list[WidgetSlot]:
    """The positional ``widgets_values`` slots of a node with ``INPUT_TYPES()`` == ``schema``."""
    slots = []
    for name, spec in _inputs(schema):
        if not _is_widget(spec):
            continue
        slots.append(WidgetSlot(name, spec))
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        if spec[0] == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
            slots.append(WidgetSlot(name + ":control", spec, extra=True))
        if opts.get("image_upload"):
            slots.append(WidgetSlot(name + ":upload", spec, extra=True))
    return slots


def ui_to_api(ui: Mapping[str, Any], schemas: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """API-format prompt of a UI-format workflow; ``schemas`` maps node type → ``INPUT_TYPES()``."""
    links = {lk[0]: lk for lk in ui["links"]}
    prompt: dict[str, dict[str, Any]] = {}
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (2, 4):
            continue
        schema = schemas[node["type"]]
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs: dict[str, Any] = {}
        for slot, value in zip(widget_slots(schema), values):
            if not slot.extra:
                inputs[slot.name] = value
        for name, link in linked.items():
            inputs[name] = [str(link[1]), int(link[2])]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   "_meta": {"title": node.get("title", node["type"])}}
    return prompt


@dataclass
class Executor:
    """Run API prompts in-process against ``classes`` (node type → class), with ComfyUI-style output caching."""

    classes: Mapping[str, type]
    cache: dict[str, tuple] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)  # node ids run (not cached) by the last run()

    def _signature(self, prompt: Mapping[str, Any], nid: str, memo: dict[str, str]) -> str:
        if nid not in memo:
            node = prompt[nid]
            parts = {}
            for name, value in sorted(node["inputs"].items()):
                if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                    parts[name] = ["link", self._signature(prompt, value[0], memo), value[1]]
                else:
                    parts[name] = value
            memo[nid] = json.dumps([node["class_type"], parts], sort_keys=True, default=repr)
        return memo[nid]

    def run(self, prompt: Mapping[str, Any], hidden: Callable[[str], Mapping[str, Any]] | None = None
            ) -> dict[str, Any]:
        """Execute; returns ``{node_id: ui}`` of the output nodes that produced a ui."""
        self.executed = []
        outputs: dict[str, tuple] = {}
        uis: dict[str, Any] = {}
        memo: dict[str, str] = {}
        wanted = [nid for nid, n in prompt.items() if getattr(self.classes[n["class_type"]], "OUTPUT_NODE", False)]
        if not wanted:
            raise ValueError("prompt has no output node (ComfyUI: prompt_no_outputs)")

        def visit(nid: str, stack: tuple[str, ...] = ()) -> tuple:
            if nid in outputs:
                return outputs[nid]
            if nid in stack:
                raise ValueError(f"cycle through node {nid}")
            node = prompt[nid]
            kwargs = {}
            for name, value in node["inputs"].items():
                if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                    kwargs[name] = visit(value[0], stack + (nid,))[value[1]]
                else:
                    kwargs[name] = value
            sig = self._signature(prompt, nid, memo)
            if sig in self.cache:
                result, ui = self.cache[sig]
            else:
                cls = self.classes[node["class_type"]]
                if hidden is not None:
                    kwargs.update(hidden(nid))
                raw = getattr(cls(), cls.FUNCTION)(**kwargs)
                if isinstance(raw, dict):
                    result, ui = tuple(raw.get("result", ())), raw.get("ui")
                else:
                    result, ui = tuple(raw), None
                self.cache[sig] = (result, ui)
                self.executed.append(nid)
            outputs[nid] = result
            if ui is not None:
                uis[nid] = ui
            return result

        for nid in wanted:
            visit(nid)
        return uis
