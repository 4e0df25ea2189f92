"""The shipped workflows (UI format): node types exist, links type-check, widget values fit their inputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodes import NODE_CLASS_MAPPINGS
from tests.workflows.core_nodes import CORE_OUTPUTS, CORE_SCHEMAS
from tests.workflows.graph import CONTROL_VALUES, FRONTEND_ONLY, ui_to_api, widget_slots
from tests.workflows.make_workflows import WORKFLOWS

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW_DIR = ROOT / "workflows"
FILES = sorted(WORKFLOW_DIR.glob("*.json"))
# folder names ComfyUI's template browser reads inside a pack (app/custom_node_manager.py, ComfyUI 0.3.64)
TEMPLATE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")
USER_FILE_COMBOS = {("LoadImage", "image"), ("CheckpointLoaderSimple", "ckpt_name"), ("Trellis2LoadModel", "source"),
                    ("Trellis2LoadMesh", "mesh_file")}


def schemas() -> dict[str, dict]:
    out = dict(CORE_SCHEMAS)
    out.update({k: c.INPUT_TYPES() for k, c in NODE_CLASS_MAPPINGS.items()})
    return out


def outputs_of(node_type: str) -> tuple[str, ...]:
    cls = NODE_CLASS_MAPPINGS.get(node_type)
    return tuple(cls.RETURN_TYPES) if cls is not None else CORE_OUTPUTS[node_type]


def input_type(spec: tuple) -> str:
    return "COMBO" if isinstance(spec[0], (list, tuple)) else spec[0]


def accepts(declared: str, kind: str) -> bool:
    """Whether an input declared as ``declared`` (a type, '*' or a comma-separated union) takes a ``kind`` link."""
    return declared == "*" or kind in declared.split(",")


def test_expected_workflows_are_shipped():
    assert {p.stem for p in FILES} == set(WORKFLOWS)
    assert WORKFLOW_DIR.name in TEMPLATE_FOLDERS, "ComfyUI's template browser must find the workflows"
    assert not any((ROOT / name).is_dir() for name in TEMPLATE_FOLDERS if name != WORKFLOW_DIR.name), \
        "a second example folder would list every template twice"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_nodes_and_links(path):
    ui = json.loads(path.read_text())
    assert ui.get("version") == 0.4 and isinstance(ui["nodes"], list) and isinstance(ui["links"], list)
    known = schemas()
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]), "duplicate node ids"
    assert ui["last_node_id"] >= max(nodes) and ui["last_link_id"] >= max((lk[0] for lk in ui["links"]), default=0)
    for node in ui["nodes"]:
        assert node["type"] in known or node["type"] in FRONTEND_ONLY, f"unknown node type {node['type']}"
    assert any(getattr(NODE_CLASS_MAPPINGS.get(n["type"]), "OUTPUT_NODE", False) for n in ui["nodes"])
    seen = set()
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        assert link_id not in seen
        seen.add(link_id)
        s, d = nodes[src], nodes[dst]
        out_types = outputs_of(s["type"])
        assert src_slot < len(out_types), f"link {link_id}: {s['type']} has no output {src_slot}"
        assert out_types[src_slot] == kind, f"link {link_id}: {s['type']} output {src_slot} is {out_types[src_slot]}"
        assert link_id in s["outputs"][src_slot]["links"]
        entry = d["inputs"][dst_slot]
        assert entry["link"] == link_id and accepts(entry["type"], kind)
        spec = dict((n, sp) for sec in ("required", "optional") for n, sp in known[d["type"]].get(sec, {}).items())
        assert entry["name"] in spec, f"{d['type']} has no input {entry['name']}"
        assert accepts(input_type(spec[entry["name"]]), kind), f"link {link_id} into {d['type']}.{entry['name']}"
    by_id = {lk[0]: lk for lk in ui["links"]}
    for node in ui["nodes"]:  # every link a node lists exists and ends at that node's slot
        for slot, out in enumerate(node.get("outputs") or []):
            for link_id in out.get("links") or []:
                assert by_id.get(link_id, [None] * 3)[1:3] == [node["id"], slot], f"#{node['id']}: link {link_id}"
        for slot, entry in enumerate(node.get("inputs") or []):
            if entry.get("link") is not None:
                assert by_id.get(entry["link"], [None] * 5)[3:5] == [node["id"], slot], \
                    f"#{node['id']}: link {entry['link']}"
    for node in ui["nodes"]:  # required sockets must be connected (ComfyUI: required_input_missing)
        if node["type"] in FRONTEND_ONLY:
            continue
        linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
        for name, spec in known[node["type"]].get("required", {}).items():
            if input_type(spec) not in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                assert name in linked, f"{node['type']} #{node['id']}: required input {name} is not connected"


def _fits(node_type: str, slot, value) -> str | None:
    if slot.name.endswith(":control"):
        return None if value in CONTROL_VALUES else f"control value {value!r}"
    if slot.name.endswith(":upload"):
        return None if value == "image" else f"upload value {value!r}"
    kind = slot.spec[0]
    opts = slot.spec[1] if len(slot.spec) > 1 else {}
    if isinstance(kind, (list, tuple)):
        if (node_type, slot.name) in USER_FILE_COMBOS:
            return None if isinstance(value, str) and value else f"file name {value!r}"
        return None if value in kind else f"{value!r} not in {list(kind)}"
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{value!r} is not a boolean"
    if kind == "STRING":
        return None if isinstance(value, str) else f"{value!r} is not a string"
    if kind == "INT" and (not isinstance(value, int) or isinstance(value, bool)):
        return f"{value!r} is not an int"
    if kind == "FLOAT" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        return f"{value!r} is not a number"
    if not opts.get("min", value) <= value <= opts.get("max", value):
        return f"{value} outside [{opts.get('min')}, {opts.get('max')}]"
    return None


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_widget_values_fit_their_inputs(path):
    ui = json.loads(path.read_text())
    known = schemas()
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        slots = widget_slots(known[node["type"]])
        values = node.get("widgets_values") or []
        assert len(values) == len(slots), (f"{node['type']} #{node['id']}: {len(values)} widget values for "
                                           f"{[s.name for s in slots]}")
        for slot, value in zip(slots, values):
            problem = _fits(node["type"], slot, value)
            assert problem is None, f"{path.stem}: {node['type']} #{node['id']}.{slot.name}: {problem}"
        if node["type"].startswith("Trellis2"):
            for slot, value in zip(slots, values):
                if slot.name.endswith(":control"):
                    assert value == "fixed", "shipped examples keep their seed (reproducible)"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_files_match_their_definitions(path):
    """The UI files are generated from make_workflows.py: regenerate them when a node's inputs change."""
    ui = json.loads(path.read_text())
    api = ui_to_api(ui, schemas())
    expected = WORKFLOWS[path.stem]()
    strip = lambda g: {k: {"class_type": v["class_type"], "inputs": {
        n: x for n, x in v["inputs"].items() if not (v["class_type"] in ("SaveGLB", "Preview3D") and n == "image")}}
        for k, v in g.items()}
    assert strip(api) == strip(expected)
