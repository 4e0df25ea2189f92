"""The core-node table the workflow tests check links against (``core_nodes.py``) matches ComfyUI 0.33.0's source:
input names in order, socket/widget kinds, output types. Read from the source tarball in ``../shared/comfyui/``
(parsed, never imported or copied); skipped where the tarball is absent."""
from __future__ import annotations

import ast
import tarfile
from pathlib import Path

import pytest

from tests.workflows.core_nodes import CORE_OUTPUTS, CORE_SCHEMAS

TARBALLS = sorted((Path(__file__).resolve().parents[3] / "shared" / "comfyui").glob("ComfyUI-0.33.0-*.tar.gz"))
SOURCES = ("nodes.py", "comfy_extras/nodes_save_3d.py", "comfy_extras/nodes_load_3d.py",
           "comfy_extras/nodes_mesh_postprocess.py")
V3_SOURCES = SOURCES[1:]
FRONTEND_WIDGETS = {("SaveGLB", "image"), ("Preview3D", "image")}  # the frontend's 3D viewer, not in the backend
V3_TYPES = {"Mesh": "MESH", "String": "STRING", "Int": "INT", "Float": "FLOAT", "Boolean": "BOOLEAN",
            "Image": "IMAGE", "Combo": "COMBO", "Load3DCamera": "LOAD3D_CAMERA"}


@pytest.fixture(scope="module")
def core_source() -> dict[str, ast.Module]:
    if not TARBALLS:
        pytest.skip("ComfyUI 0.33.0 source tarball not found in ../shared/comfyui/")
    out = {}
    with tarfile.open(TARBALLS[-1]) as tar:
        for member in tar:
            rel = member.name.split("/", 1)[-1]
            if rel in SOURCES:
                out[rel] = ast.parse(tar.extractfile(member).read())
            if len(out) == len(SOURCES):
                break
    return out


def _classes(module: ast.Module) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in module.body if isinstance(n, ast.ClassDef)}


def _kind(node: ast.expr) -> str:
    """A legacy input/output type: "IMAGE" or IO.IMAGE → IMAGE; anything computed (a file list) → COMBO."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "IO":
        return node.attr
    return "COMBO"


def _lookup(classes: dict[str, ast.ClassDef], name: str, attr: str):
    """A class attribute or method, following same-module base classes."""
    cls = classes[name]
    for stmt in cls.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == attr for t in stmt.targets):
            return stmt.value
        if isinstance(stmt, ast.FunctionDef) and stmt.name == attr:
            return stmt
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in classes:
            return _lookup(classes, base.id, attr)
    return None


def _legacy(classes: dict[str, ast.ClassDef], name: str) -> tuple[list[tuple[str, str]], tuple[str, ...]]:
    returns = _lookup(classes, name, "RETURN_TYPES")
    outputs = tuple(_kind(e) for e in returns.elts) if returns is not None else ()
    func = _lookup(classes, name, "INPUT_TYPES")
    ret = next(n for n in ast.walk(func) if isinstance(n, ast.Return))
    inputs = []
    for section, body in zip(ret.value.keys, ret.value.values):
        if section.value in ("required", "optional"):
            inputs += [(k.value, _kind(v.elts[0])) for k, v in zip(body.keys, body.values)]
    return inputs, outputs


def _v3_input(call: ast.Call) -> tuple[str, str]:
    """IO.<Type>.Input("name", ...) → (name, TYPE); IO.MultiType.Input(<first>, types=[...]) → the first's
    (our table may list the other accepted types after it, comma-separated)."""
    kind = call.func.value.attr
    if kind == "MultiType":
        return _v3_input(call.args[0])
    return call.args[0].value, V3_TYPES.get(kind, kind.upper())


def _v3(classes: dict[str, ast.ClassDef], name: str) -> tuple[list[tuple[str, str]], tuple[str, ...]]:
    schema = next(n for n in ast.walk(_lookup(classes, name, "define_schema")) if isinstance(n, ast.Call)
                  and isinstance(n.func, ast.Attribute) and n.func.attr == "Schema")
    kw = {k.arg: k.value for k in schema.keywords}
    assert kw["node_id"].value == name
    inputs = [_v3_input(c) for c in kw["inputs"].elts]
    outputs = tuple(V3_TYPES.get(c.func.value.attr, c.func.value.attr.upper()) for c in kw["outputs"].elts) \
        if "outputs" in kw else ()
    return inputs, outputs


def _ours(name: str) -> list[tuple[str, str]]:
    schema = CORE_SCHEMAS[name]
    return [(k, "COMBO" if isinstance(spec[0], (list, tuple)) else spec[0].split(",")[0])
            for section in ("required", "optional") for k, spec in (schema.get(section) or {}).items()
            if (name, k) not in FRONTEND_WIDGETS]


@pytest.mark.parametrize("name", sorted(CORE_SCHEMAS))
def test_core_table_matches_comfyui_source(core_source, name):
    legacy = _classes(core_source["nodes.py"])
    if name in legacy:
        inputs, outputs = _legacy(legacy, name)
    else:
        module = next(core_source[m] for m in V3_SOURCES if name in _classes(core_source[m]))
        inputs, outputs = _v3(_classes(module), name)
    assert _ours(name) == inputs, f"{name}: inputs in ComfyUI 0.33.0 are {inputs}"
    assert CORE_OUTPUTS[name] == outputs, f"{name}: outputs in ComfyUI 0.33.0 are {outputs}"
