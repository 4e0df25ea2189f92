"""Imports point one way: nodes → trellis2_core → trellis2_kernels; the library never imports ComfyUI."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMFY_MODULES = {"comfy", "comfy_extras", "comfy_api", "folder_paths", "server", "execution", "nodes"}


def _imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.level if hasattr(node, "level") else 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.module or "", node.level))
    return out


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _resolved(path: Path, package_root: Path, package_name: str) -> list[str]:
    """Every module ``path`` imports, relative imports resolved against its package (``from . import x`` counts
    as ``<package>.x``). ``package_root`` is the folder of the top package, named ``package_name``."""
    parts = [package_name, *path.relative_to(package_root).with_suffix("").parts]
    package = parts[:-1]  # a module's package; for __init__.py the package itself
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                up = package[: len(package) - (node.level - 1)]
                assert up, f"{path.relative_to(ROOT)}: relative import beyond the top package"
                base = ".".join(up + ([node.module] if node.module else []))
            out.append(base)
            out += [f"{base}.{alias.name}" for alias in node.names if node.module is None]
    return out


NODE_FORBIDDEN = ("trellis2_core.models", "trellis2_core.sparse", "trellis2_core._kernels", "trellis2_kernels",
                  "kernels")


@pytest.mark.parametrize("path", _files("nodes"), ids=lambda p: str(p.relative_to(ROOT)))
def test_nodes_never_import_models_sparse_or_kernels(path):
    """Nodes call the library's stage functions; model, sparse-tensor and kernel code stays behind them."""
    for name in _resolved(path, ROOT / "nodes", "nodes"):
        assert not any(name == bad or name.startswith(bad + ".") for bad in NODE_FORBIDDEN), (
            f"{path.relative_to(ROOT)} imports {name!r}: nodes may use trellis2_core's pipeline, loading, mesh, "
            "postprocess and preprocess APIs, never models/sparse/kernels")


@pytest.mark.parametrize("path", _files("trellis2_core"), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_relative_imports_stay_in_the_library(path):
    for name in _resolved(path, ROOT / "trellis2_core", "trellis2_core"):
        top = name.split(".")[0]
        assert top not in COMFY_MODULES | {"kernels"}, f"{path.relative_to(ROOT)} imports {name!r}"


@pytest.mark.parametrize("path", _files("kernels/trellis2_kernels"), ids=lambda p: str(p.relative_to(ROOT)))
def test_kernel_relative_imports_stay_in_the_kernels(path):
    for name in _resolved(path, ROOT / "kernels" / "trellis2_kernels", "trellis2_kernels"):
        assert not name.startswith(("trellis2_core", "nodes")), f"{path.relative_to(ROOT)} imports {name!r}"


@pytest.mark.parametrize("path", _files("kernels"), ids=lambda p: str(p.relative_to(ROOT)))
def test_kernels_import_only_torch_triton_and_themselves(path):
    for name, level in _imports(path):
        if level:
            continue
        top = name.split(".")[0]
        assert top in {"torch", "triton", "__future__", "dataclasses", "typing", "functools", "os", "math",
                       "collections", "itertools", "warnings", "weakref", "threading", "contextlib"}, (
            f"{path.relative_to(ROOT)} imports {name!r}: kernels/ may import only torch, triton and the stdlib "
            "(and itself, relatively)")


@pytest.mark.parametrize("path", _files("trellis2_core"), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_never_imports_comfyui_or_nodes(path):
    for name, level in _imports(path):
        if level:
            continue
        top = name.split(".")[0]
        assert top not in COMFY_MODULES, f"{path.relative_to(ROOT)} imports {name!r}; trellis2_core must not " \
                                         "depend on ComfyUI (put ComfyUI glue in nodes/comfy_bridge.py)"
        assert top != "kernels", f"{path.relative_to(ROOT)} imports 'kernels'; use trellis2_core._kernels"


def test_every_package_folder_is_listed_in_pyproject():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "trellis2_core").rglob("__init__.py")}
    found |= {".".join(p.parent.relative_to(ROOT / "kernels").parts) for p in (ROOT / "kernels").rglob("__init__.py")}
    assert found <= listed, f"add these packages to [tool.setuptools] packages: {sorted(found - listed)}"


def test_library_and_node_table_import_without_comfyui():
    import importlib.util
    import sys

    import trellis2_core  # noqa: F401

    # load the pack the way ComfyUI does: as a package from its folder (whatever the folder is called)
    spec = importlib.util.spec_from_file_location("trellis2_comfy_pack", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pack
    try:
        spec.loader.exec_module(pack)
    finally:
        sys.modules.pop(spec.name, None)
    assert isinstance(pack.NODE_CLASS_MAPPINGS, dict)
    assert pack.WEB_DIRECTORY == "web"


def test_relative_imports_are_resolved(tmp_path):
    """The checks above see through relative imports (``from ..models import x`` is trellis2_core.models)."""
    pkg = tmp_path / "trellis2_core" / "pipeline"
    pkg.mkdir(parents=True)
    f = pkg / "x.py"
    f.write_text("from ..models import dit\nfrom . import stages\nimport torch\n")
    assert sorted(_resolved(f, tmp_path / "trellis2_core", "trellis2_core")) == [
        "torch", "trellis2_core.models", "trellis2_core.pipeline", "trellis2_core.pipeline.stages"]
