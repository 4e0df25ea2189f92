"""Loads the pack's kernel package ``kernels/trellis2_kernels`` under its name ``trellis2_kernels``.

The folder ``kernels/`` itself is not a package (no ``__init__.py``), so a checkout on ``sys.path`` (the working
directory of ``python -m trellis2_core``, pytest's root, a ComfyUI ``custom_nodes`` clone) never shadows PyPI's
``kernels`` package, which transformers imports. When the pack is installed with pip (pyproject maps
``kernels/trellis2_kernels``) the normal import works; from a plain checkout the folder is loaded by path. This is
the only module of the library that knows where that folder is.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_NAME = "trellis2_kernels"


def load() -> ModuleType:
    """Return the ``trellis2_kernels`` package, loading it from the checkout if it is not installed."""
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    try:
        return importlib.import_module(_NAME)
    except ModuleNotFoundError as err:
        if err.name != _NAME:
            raise
    folder = Path(__file__).resolve().parent.parent / "kernels" / _NAME
    init = folder / "__init__.py"
    if not init.is_file():
        raise ImportError(
            f"trellis2_kernels is not installed and {folder} does not exist; reinstall the pack "
            "(pip install -r requirements.txt from the pack's folder)."
        )
    spec = importlib.util.spec_from_file_location(_NAME, init, submodule_search_locations=[str(folder)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_NAME]
        raise
    return module


kernels = load()
