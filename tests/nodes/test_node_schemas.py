"""Node schemas: ids, categories, socket types, defaults within bounds, a tooltip on every input and output."""
from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path

import pytest

import nodes
from nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

NODES_DIR = Path(nodes.__file__).resolve().parent
CORE_TYPES = {"IMAGE", "MASK", "STRING", "INT", "FLOAT", "BOOLEAN", "MESH"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
COMFY_MODULES = {"comfy", "comfy_extras", "comfy_api", "folder_paths", "server", "execution", "nodes",
                 "comfy_execution"}
ITEMS = sorted(NODE_CLASS_MAPPINGS.items())


def _inputs(cls):
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}, f"unexpected INPUT_TYPES sections {set(spec)}"
    for section in ("required", "optional"):
        for name, entry in (spec.get(section) or {}).items():
            yield section, name, entry


@pytest.mark.parametrize("node_id,cls", ITEMS, ids=[k for k, _ in ITEMS])
def test_identity_and_outputs(node_id, cls):
    assert re.fullmatch(r"Trellis2[A-Z][A-Za-z0-9]+", node_id), "node ids are Trellis2<Verb><Noun>"
    assert NODE_DISPLAY_NAME_MAPPINGS.get(node_id), "every node has a display name"
    assert cls.CATEGORY.split("/")[0] == "TRELLIS.2"
    assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 20
    assert callable(getattr(cls, cls.FUNCTION, None)), f"{cls.FUNCTION} is not a method"
    returns = cls.RETURN_TYPES
    assert isinstance(returns, tuple)
    assert len(cls.OUTPUT_TOOLTIPS) == len(returns), "one tooltip per output"
    assert all(isinstance(t, str) and len(t) > 10 for t in cls.OUTPUT_TOOLTIPS)
    if returns:
        assert len(cls.RETURN_NAMES) == len(returns)
    for kind in returns:
        assert kind in CORE_TYPES or kind.startswith("TRELLIS2_"), f"socket type {kind!r}"
    if not returns:
        assert getattr(cls, "OUTPUT_NODE", False), "a node without outputs must be an output node"


@pytest.mark.parametrize("node_id,cls", ITEMS, ids=[k for k, _ in ITEMS])
def test_inputs_have_tooltips_and_sane_defaults(node_id, cls):
    for section, name, entry in _inputs(cls):
        kind = entry[0]
        opts = entry[1] if len(entry) > 1 else {}
        where = f"{node_id}.{name}"
        assert isinstance(opts.get("tooltip"), str) and len(opts["tooltip"]) > 10, f"{where}: tooltip missing"
        if isinstance(kind, list):  # combo
            assert kind, f"{where}: empty combo"
            assert all(isinstance(v, str) for v in kind)
            assert opts.get("default", kind[0]) in kind, f"{where}: default not among the choices"
            continue
        assert isinstance(kind, str)
        if kind in ("INT", "FLOAT"):
            lo, hi, default = opts["min"], opts["max"], opts["default"]
            assert lo <= default <= hi, f"{where}: default {default} outside [{lo}, {hi}]"
            assert opts.get("step", 1) > 0
            if kind == "INT":
                assert all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi, default))
        elif kind == "BOOLEAN":
            assert isinstance(opts["default"], bool), where
        elif kind == "STRING":
            assert isinstance(opts["default"], str), where
        else:
            assert kind in CORE_TYPES or kind.startswith("TRELLIS2_"), f"{where}: socket type {kind!r}"
        if name in ("seed", "noise_seed") or opts.get("control_after_generate"):
            assert kind == "INT" and opts["max"] >= 2 ** 32 - 1, f"{where}: seeds span the full range"


@pytest.mark.parametrize("node_id,cls", ITEMS, ids=[k for k, _ in ITEMS])
def test_function_signature_matches_inputs(node_id, cls):
    params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    names = {name: section for section, name, _ in _inputs(cls)}
    for name, section in names.items():
        if name not in params:
            assert has_var_kw, f"{node_id}: input {name!r} is not a parameter of {cls.FUNCTION}"
        elif section == "optional":
            assert params[name].default is not inspect.Parameter.empty, f"{node_id}: optional {name!r} needs a default"
    for pname, p in params.items():
        if pname == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        assert pname in names, f"{node_id}: parameter {pname!r} is not an input"


def test_seed_widgets_only_where_meant():
    """ComfyUI adds control_after_generate to any INT named 'seed': only the first stage may have one."""
    for node_id, cls in ITEMS:
        for _, name, entry in _inputs(cls):
            if name == "seed":
                assert entry[1].get("control_after_generate"), f"{node_id}.seed"
    shape = NODE_CLASS_MAPPINGS["Trellis2SampleShape"].INPUT_TYPES()["required"]
    assert "stage_seed" in shape and "seed" not in shape


def test_output_nodes_are_the_preview_nodes():
    outs = {k for k, c in ITEMS if getattr(c, "OUTPUT_NODE", False)}
    assert outs == {"Trellis2ExportGLB", "Trellis2ImageTo3D", "Trellis2PreviewGLB", "Trellis2BakeOntoMesh"}
    js = (NODES_DIR.parent / "web" / "trellis2_preview.js").read_text()
    for node_id in outs:
        assert f'"{node_id}"' in js, f"the preview widget is not attached to {node_id}"


def test_importing_nodes_does_not_import_comfyui():
    assert not {m for m in sys.modules if m.split(".")[0] in COMFY_MODULES - {"nodes"}}


@pytest.mark.parametrize("path", sorted(NODES_DIR.glob("*.py")), ids=lambda p: p.name)
def test_only_the_bridge_touches_comfyui(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        for name in names:
            assert name.split(".")[0] not in COMFY_MODULES, f"{path.name} imports {name}"
    if path.name != "comfy_bridge.py":
        text = path.read_text()
        assert "importlib" not in text and "comfy_module(" not in text, f"{path.name}: ComfyUI access outside the bridge"
    assert len(path.read_text().splitlines()) <= 300, f"{path.name}: node files stay under 300 lines"


def test_export_node_remesh_option():
    """Export GLB offers the official remesh as an optional toggle (off by default, so saved workflows keep their
    behaviour); turning it on makes the material single-sided (§9.6)."""
    from nodes.export import export_config

    spec = NODE_CLASS_MAPPINGS["Trellis2ExportGLB"].INPUT_TYPES()
    kind, opts = spec["optional"]["remesh"]
    assert kind == "BOOLEAN" and opts["default"] is False and "remesh" not in spec["required"]
    on = export_config(1024, 1000, "OPAQUE", True, "png", remesh=True)
    off = export_config(1024, 1000, "OPAQUE", True, "png")
    assert (on.remesh, on.material_double_sided) == (True, False)
    assert (off.remesh, off.material_double_sided) == (False, True)
