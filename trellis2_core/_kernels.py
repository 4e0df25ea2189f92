"""Loads the pack's ``kernels/`` folder as the package ``trellis2_kernels``.

When the pack is installed with pip (pyproject maps ``kernels/`` to ``trellis2_kernels``) the normal import works.
When it is used from a plain checkout (a ComfyUI ``custom_nodes`` clone, or the test suite) the folder next to
``trellis2_core`` is loaded under that name. This is the only module that knows where that folder is.
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
    folder = Path(__file__).resolve().parent.parent / "kernels"
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
